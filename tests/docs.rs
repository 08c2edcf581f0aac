//! The operator's documentation names every label value the server can emit: close
//! reasons and timers are declared once (`CloseReason::ALL`, `Timer::ALL`) and the README
//! must list each of them.

use ixn::session::{CloseReason, Timer};

#[test]
fn readme_lists_every_close_reason_and_timer() {
    let readme = include_str!("../README.md");
    for name in CloseReason::ALL
        .iter()
        .map(|r| r.name())
        .chain(Timer::ALL.iter().map(|t| t.name()))
    {
        assert!(
            readme.contains(&format!("`{name}`")),
            "README.md does not list `{name}`"
        );
    }
}
