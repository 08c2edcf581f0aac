//! `ixnctl top`: a live view of one server, like `nats-top`, scraped from `/metrics` each
//! second. Keys: `s` sorts by rate or by name, `f` narrows to one section in turn
//! (registrations, refused, errors, closed, tls) and back to all, `q` (or Esc, Ctrl-C)
//! quits. The terminal is restored on the way out, a panic included (`ratatui::init`).

use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row as TableRow, Table};
use ratatui::Frame;

use crate::api::{exit, metrics_get, Failure};
use crate::view::{per_second, quantile, rows, seconds, Row, Snapshot, SECTIONS};

/// How the table is ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sort {
    Rate,
    Name,
}

struct State {
    base: String,
    sort: Sort,
    /// Index into [`SECTIONS`], or `None` for all.
    only: Option<usize>,
    before: Option<Snapshot>,
    now: Option<Snapshot>,
    problem: Option<String>,
}

fn scrape(base: &str) -> Result<Snapshot, String> {
    let (status, body) = metrics_get(base, "/metrics").map_err(|f| f.message)?;
    if status != 200 {
        return Err(format!(
            "/metrics answered {status}: is `--metrics` off on the server?"
        ));
    }
    Snapshot::parse(&body, Instant::now()).map_err(|e| e.to_string())
}

/// Runs the view until `q`; `every` is the refresh period.
pub fn run(base: &str, every: Duration) -> Result<(), Failure> {
    // The first scrape outside the screen: a server that cannot be reached is said plainly.
    let first = scrape(base).map_err(|m| Failure::new(exit::UNREACHABLE, m))?;
    let mut state = State {
        base: base.to_string(),
        sort: Sort::Rate,
        only: None,
        before: None,
        now: Some(first),
        problem: None,
    };
    let mut terminal = ratatui::init();
    let result = (|| -> std::io::Result<()> {
        let mut next = Instant::now() + every;
        loop {
            terminal.draw(|f| draw(f, &state))?;
            let wait = next.saturating_duration_since(Instant::now());
            if event::poll(wait)? {
                if let Event::Key(k) = event::read()? {
                    if k.kind != KeyEventKind::Press {
                        continue;
                    }
                    match k.code {
                        KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                        KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => {
                            return Ok(())
                        }
                        KeyCode::Char('s') => {
                            state.sort = match state.sort {
                                Sort::Rate => Sort::Name,
                                Sort::Name => Sort::Rate,
                            }
                        }
                        KeyCode::Char('f') => {
                            state.only = match state.only {
                                None => Some(0),
                                Some(i) if i + 1 < SECTIONS.len() => Some(i + 1),
                                Some(_) => None,
                            }
                        }
                        _ => {}
                    }
                }
                continue;
            }
            next = Instant::now() + every;
            match scrape(&state.base) {
                Ok(s) => {
                    state.before = state.now.take();
                    state.now = Some(s);
                    state.problem = None;
                }
                Err(m) => state.problem = Some(m),
            }
        }
    })();
    ratatui::restore();
    result.map_err(|e| Failure::new(exit::UNREACHABLE, format!("terminal: {e}")))
}

/// The header's lines and the table's rows for the state, apart from the drawing.
fn summary(state: &State) -> (Vec<String>, Vec<Row>) {
    let Some(now) = &state.now else {
        return (vec!["waiting for the first scrape".into()], Vec::new());
    };
    let version = now.label("ixn_build_info", "version").unwrap_or_default();
    let engine = now.label("ixn_engine_info", "engine").unwrap_or_default();
    let mut head = vec![format!(
        "ixn-server {version}  engine {engine}  workers {}  {}",
        now.sum("ixn_workers"),
        state.base
    )];
    head.push(format!(
        "connections {} active, {} registered ({} logical)  bans {}  names held {}",
        now.sum("ixn_connections_active"),
        now.sum("ixn_clients_registered"),
        now.sum("ixn_logical_clients_registered"),
        now.sum("ixn_bans_active"),
        now.sum("ixn_names_held"),
    ));
    let mut table = Vec::new();
    if let Some(before) = &state.before {
        table = rows(before, now);
        let rate = |section: &str, key: &str| {
            table
                .iter()
                .find(|r| r.section == section && r.key == key)
                .map_or(0.0, |r| r.rate)
        };
        let failed: f64 = table
            .iter()
            .filter(|r| r.section == "registrations" && r.key != "ok")
            .map(|r| r.rate)
            .sum();
        let refused: f64 = table
            .iter()
            .filter(|r| r.section == "refused")
            .map(|r| r.rate)
            .sum();
        let (b, a) = (
            before.buckets("ixn_registration_duration_seconds"),
            now.buckets("ixn_registration_duration_seconds"),
        );
        let q = |x| quantile(x, &b, &a).map_or("-".to_string(), seconds);
        head.push(format!(
            "registrations {} ok, {} failed  refused {}  register p50 {} p99 {}",
            per_second(rate("registrations", "ok")),
            per_second(failed),
            per_second(refused),
            q(0.5),
            q(0.99),
        ));
        let tls: f64 = table
            .iter()
            .filter(|r| r.section == "tls")
            .map(|r| r.rate)
            .sum();
        let drain = now.sum("ixn_drain_remaining");
        head.push(format!(
            "TLS handshakes {}  drain {}",
            per_second(tls),
            if drain > 0.0 {
                format!("{drain} registered clients left to tell")
            } else {
                "not draining".to_string()
            }
        ));
    }
    if let Some(i) = state.only {
        table.retain(|r| r.section == SECTIONS[i]);
    }
    match state.sort {
        Sort::Rate => table.sort_by(|a, b| b.rate.total_cmp(&a.rate).then(a.key.cmp(&b.key))),
        Sort::Name => table.sort_by(|a, b| (a.section, &a.key).cmp(&(b.section, &b.key))),
    }
    if let Some(p) = &state.problem {
        head.push(format!("last scrape failed: {p}"));
    }
    head.push(format!(
        "sort: {} (s)  showing: {} (f)  quit: q",
        match state.sort {
            Sort::Rate => "rate",
            Sort::Name => "name",
        },
        state.only.map_or("all", |i| SECTIONS[i])
    ));
    (head, table)
}

fn draw(f: &mut Frame, state: &State) {
    let (head, table) = summary(state);
    let [top, rest] = Layout::vertical([
        Constraint::Length(head.len() as u16 + 2),
        Constraint::Min(3),
    ])
    .areas(f.area());
    let lines: Vec<Line> = head.into_iter().map(Line::from).collect();
    f.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" ixnctl top ")),
        top,
    );
    let body: Vec<TableRow> = table
        .iter()
        .map(|r| {
            TableRow::new(vec![
                r.section.to_string(),
                r.key.clone(),
                per_second(r.rate),
                format!("{}", r.total),
            ])
        })
        .collect();
    let t = Table::new(
        body,
        [
            Constraint::Length(14),
            Constraint::Min(24),
            Constraint::Length(10),
            Constraint::Length(12),
        ],
    )
    .header(
        TableRow::new(vec!["SECTION", "SERIES", "RATE", "TOTAL"])
            .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .block(Block::bordered());
    f.render_widget(t, rest);
}
