//! `ixn-loadgen`: load generator for IXN/1 registration traffic (scenarios arrive with its issue).

fn main() {
    eprintln!("ixn-loadgen: no scenarios yet; see docs/LOADGEN.md once the load generator lands");
    std::process::exit(2);
}
