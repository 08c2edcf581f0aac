//! The server's module layout has no import cycle (issue 23): every file of the library
//! (`src/`, not the `main.rs` binary) is a node, and a path from one file to an item or a
//! module of another (`crate::…`, `super::…`, a child module named from its parent) an
//! edge; a re-exported item counts as the file that defines it. A cycle fails the test
//! with the files on it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`runtime::uring`) → file text, for every file of the library.
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            let join = |n: &str| {
                if prefix.is_empty() {
                    n.to_string()
                } else {
                    format!("{prefix}::{n}")
                }
            };
            if p.is_dir() {
                walk(&p, &join(&name), out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let module = match name.as_str() {
                    "mod" => prefix.to_string(),
                    "lib" if prefix.is_empty() => String::new(),
                    "main" if prefix.is_empty() => continue,
                    _ => join(&name),
                };
                out.insert(module, std::fs::read_to_string(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        "",
        &mut out,
    );
    out
}

/// Names of the items a file defines at any depth (enough to find an item's file).
fn definitions(text: &str) -> BTreeSet<String> {
    let kinds = ["fn", "struct", "enum", "trait", "type", "const", "static"];
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let words: Vec<&str> = line
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .filter(|w| !w.is_empty())
            .collect();
        for w in words.windows(2) {
            if kinds.contains(&w[0]) {
                out.insert(w[1].to_string());
            }
        }
    }
    out
}

fn parent(module: &str) -> String {
    module
        .rsplit_once("::")
        .map_or(String::new(), |(p, _)| p.to_string())
}

fn child(module: &str, name: &str) -> String {
    if module.is_empty() {
        name.to_string()
    } else {
        format!("{module}::{name}")
    }
}

/// Resolves `segments` from module `base` to the module whose file holds what they name.
fn resolve(
    mods: &BTreeMap<String, String>,
    defs: &BTreeMap<String, BTreeSet<String>>,
    mut base: String,
    segments: &[&str],
) -> Option<String> {
    for seg in segments {
        let sub = child(&base, seg);
        if mods.contains_key(&sub) {
            base = sub;
            continue;
        }
        // An item: the file of `base` or of one of its children that defines it (a
        // re-export counts as where it is defined).
        let holder = mods
            .keys()
            .filter(|m| **m != base && parent(m) == base)
            .find(|m| defs[*m].contains(*seg));
        return Some(holder.cloned().unwrap_or(base));
    }
    Some(base)
}

/// Every path in `text` that starts with `crate::` or `super::`, as its segments (brace
/// groups `super::{a, b::c}` expanded one level).
fn paths(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for root in ["crate::", "super::"] {
        let mut rest = text;
        while let Some(at) = rest.find(root) {
            let before = rest[..at].chars().last();
            rest = &rest[at + root.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
                continue;
            }
            let head = root.trim_end_matches("::").to_string();
            if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    let segs = segments(item.trim());
                    if !segs.is_empty() {
                        out.push((head.clone(), segs));
                    }
                }
            } else {
                out.push((head, segments(rest)));
            }
        }
    }
    out
}

fn segments(s: &str) -> Vec<String> {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(s.len());
    s[..end]
        .split("::")
        .filter(|p| !p.is_empty() && *p != "self")
        .map(str::to_string)
        .collect()
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules();
    let defs: BTreeMap<String, BTreeSet<String>> = mods
        .iter()
        .map(|(m, t)| (m.clone(), definitions(t)))
        .collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, text) in &mods {
        // Only code: comments and docs name paths too.
        let code: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let mut to = BTreeSet::new();
        for (root, segs) in paths(&code) {
            let base = if root == "crate" {
                String::new()
            } else {
                parent(m)
            };
            let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
            if let Some(t) = resolve(&mods, &defs, base, &segs) {
                to.insert(t);
            }
        }
        // A parent naming its child modules (`uring::thread_main`).
        for c in mods.keys().filter(|c| parent(c) == *m && !c.is_empty()) {
            let name = c.rsplit("::").next().unwrap();
            if code.contains(&format!("{name}::")) {
                to.insert(c.clone());
            }
        }
        to.remove(m);
        to.remove("");
        edges.insert(m.clone(), to);
    }
    edges.remove("");
    edges
}

fn cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in edges.get(n).into_iter().flatten() {
            match state.get(m).copied().unwrap_or(0) {
                1 => {
                    let from = stack.iter().position(|s| s == m).unwrap();
                    let mut c = stack[from..].to_vec();
                    c.push(m.clone());
                    return Some(c);
                }
                0 => {
                    if let Some(c) = visit(m, edges, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in edges.keys() {
        if state.get(n).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, edges, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn the_checker_finds_a_cycle() {
    let mut edges = BTreeMap::new();
    edges.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    edges.insert("b".to_string(), BTreeSet::from(["a".to_string()]));
    assert_eq!(
        cycle(&edges),
        Some(vec!["a".into(), "b".into(), "a".into()])
    );
    edges.insert("b".to_string(), BTreeSet::new());
    assert_eq!(cycle(&edges), None);
}

#[test]
fn the_graph_sees_known_edges() {
    let g = graph();
    assert!(
        g["runtime"].contains("runtime::uring"),
        "{:?}",
        g["runtime"]
    );
    assert!(
        g["runtime::uring"].contains("runtime::shared"),
        "{:?}",
        g["runtime::uring"]
    );
    assert!(g["admin"].contains("control"), "{:?}", g["admin"]);
}

#[test]
fn no_import_cycle_among_the_server_modules() {
    let g = graph();
    if let Some(c) = cycle(&g) {
        panic!("import cycle: {}", c.join(" -> "));
    }
}
