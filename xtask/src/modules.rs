//! The module check of `cargo xtask lint`: no circle among a crate's top-level
//! modules. A lower part tells a higher one things through a type it owns, not by
//! importing it.
//!
//! Each file is read as text: comments and string literals are dropped, and every
//! `crate::` path (in `use` trees, grouped or not, and inline, macros included) and
//! every `super::` path that climbs out of its top-level module gives an edge from
//! the file's top-level module to the module the path names. A name the crate root
//! re-exports (`pub use call::Attempt`) counts as the module it comes from.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// An edge and one place that makes it.
type Edges = BTreeMap<String, BTreeMap<String, String>>;

/// The circles among the top-level modules of the crate whose sources are under
/// `src`, each as `a -> b -> a (a: file:line; b: file:line)`.
pub fn circles(src: &Path) -> Result<Vec<String>, String> {
    let root = ["lib.rs", "main.rs"]
        .iter()
        .map(|f| src.join(f))
        .find(|p| p.exists())
        .ok_or_else(|| format!("{}: no lib.rs or main.rs", src.display()))?;
    let mut files = Vec::new();
    collect_files(src, &mut files)?;
    let root_text = strip(&read(&root)?);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| top_module(src, f)).collect();
    let exports = root_exports(&root_text, &modules);
    let mut edges = Edges::new();
    for file in &files {
        let Some(from) = top_module(src, file) else {
            continue; // the crate root may use anything
        };
        let depth = module_depth(src, file);
        let text = strip(&read(file)?);
        for (line, first, via_super) in crate_paths(&text, depth) {
            let to = if modules.contains(&first) {
                first
            } else if via_super {
                continue;
            } else if let Some(m) = exports.get(&first) {
                m.clone()
            } else {
                continue; // an item of the crate root itself
            };
            if to != from {
                let place = format!(
                    "{}:{line}",
                    file.strip_prefix(src).unwrap_or(file).display()
                );
                edges
                    .entry(from.clone())
                    .or_default()
                    .entry(to)
                    .or_insert(place);
            }
        }
    }
    Ok(find_circles(&edges))
}

fn read(path: &Path) -> Result<String, String> {
    fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let entries = fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            collect_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// The top-level module a file belongs to; `None` for the crate root.
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    if rel.components().count() == 1 {
        let name = first.strip_suffix(".rs")?;
        return (name != "lib" && name != "main").then(|| name.to_owned());
    }
    Some(first.to_owned())
}

/// How deep the module of `file` is: 1 for `src/a.rs` and `src/a/mod.rs`, 2 for
/// `src/a/b.rs`, ...
fn module_depth(src: &Path, file: &Path) -> usize {
    let rel = file.strip_prefix(src).unwrap_or(file);
    let parts = rel.components().count();
    if rel.file_name().is_some_and(|n| n == "mod.rs") {
        parts - 1
    } else {
        parts
    }
}

/// The text without comments, string and char literals (their insides become
/// spaces; lines are kept, for line numbers).
fn strip(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |c: u8| if c == b'\n' { '\n' } else { ' ' };
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        out.push(blank(b[i]));
                        i += 1;
                    }
                }
            }
            b'r' if matches!(b.get(i + 1), Some(b'"' | b'#'))
                && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')) =>
            {
                // A raw string: r"..." or r#"..."#.
                let mut j = i + 1;
                let mut hashes = 0;
                while b.get(j) == Some(&b'#') {
                    hashes += 1;
                    j += 1;
                }
                if b.get(j) != Some(&b'"') {
                    out.push('r');
                    i += 1;
                    continue;
                }
                j += 1;
                let close: Vec<u8> = std::iter::once(b'"')
                    .chain(std::iter::repeat_n(b'#', hashes))
                    .collect();
                while j < b.len() && !b[j..].starts_with(&close) {
                    out.push(blank(b[j]));
                    j += 1;
                }
                i = j + close.len();
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    if i < b.len() {
                        out.push(blank(b[i]));
                    }
                    i += 1;
                }
                i += 1;
            }
            b'\'' if b.get(i + 2) == Some(&b'\'') || (b.get(i + 1) == Some(&b'\\')) => {
                // A char literal ('a', '\n', '\''); lifetimes are left alone.
                i += 1;
                while i < b.len() && b[i] != b'\'' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
            }
            c => {
                out.push(char::from(c));
                i += 1;
            }
        }
    }
    out
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// The first segment of every path that leaves the file's top-level module, with
/// its line: `crate::x::...`, `crate::{x, y::z}`, and `super::` paths that climb
/// above the top-level module (`depth` is the file's module depth). A `super::`
/// head is marked: it counts only when it names a module (inside an inline
/// `mod tests`, `super::` is the file's own module, which this reading cannot see).
fn crate_paths(text: &str, depth: usize) -> Vec<(usize, String, bool)> {
    let b = text.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    let line_of = |at: usize| text[..at].bytes().filter(|c| *c == b'\n').count() + 1;
    while i < b.len() {
        let boundary = i == 0 || !is_ident(b[i - 1]);
        let rest = &b[i..];
        let at = i;
        let after = if boundary && rest.starts_with(b"crate::") {
            Some((i + "crate::".len(), false))
        } else if boundary && rest.starts_with(b"super::") {
            let mut j = i;
            let mut ups = 0;
            while b[j..].starts_with(b"super::") {
                ups += 1;
                j += "super::".len();
            }
            i = j;
            (ups >= depth).then_some((j, true))
        } else {
            None
        };
        let Some((start, via_super)) = after else {
            i += 1;
            continue;
        };
        let line = line_of(at);
        for first in path_heads(b, start) {
            found.push((line, first, via_super));
        }
        i = start;
    }
    found
}

/// The first segments of the path (or path group) that starts at `at`.
fn path_heads(b: &[u8], at: usize) -> Vec<String> {
    let mut j = at;
    while b.get(j).is_some_and(|c| c.is_ascii_whitespace()) {
        j += 1;
    }
    if b.get(j) == Some(&b'{') {
        // A group: the head of each comma-separated item at depth 1.
        let mut heads = Vec::new();
        let mut depth = 0;
        let mut expect_head = true;
        while j < b.len() {
            match b[j] {
                b'{' => {
                    depth += 1;
                    if depth == 1 {
                        expect_head = true;
                    }
                }
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                b',' if depth == 1 => expect_head = true,
                c if depth == 1 && expect_head && is_ident(c) => {
                    let start = j;
                    while b.get(j).is_some_and(|c| is_ident(*c)) {
                        j += 1;
                    }
                    heads.push(String::from_utf8_lossy(&b[start..j]).into_owned());
                    expect_head = false;
                    continue;
                }
                _ => {}
            }
            j += 1;
        }
        return heads;
    }
    let start = j;
    while b.get(j).is_some_and(|c| is_ident(*c)) {
        j += 1;
    }
    if j > start {
        vec![String::from_utf8_lossy(&b[start..j]).into_owned()]
    } else {
        Vec::new()
    }
}

/// The names the crate root re-exports from its modules (`pub use m::{A, B as C}`),
/// each mapped to its module.
fn root_exports(root: &str, modules: &BTreeSet<String>) -> BTreeMap<String, String> {
    let mut exports = BTreeMap::new();
    for statement in root.split(';') {
        let s = statement.trim();
        let Some(pos) = s.find("use ") else { continue };
        if !s[..pos].trim().is_empty() && !s[..pos].trim_start().starts_with("pub") {
            continue;
        }
        let tree = s[pos + 4..].trim();
        let tree = tree.strip_prefix("crate::").unwrap_or(tree);
        let Some((module, rest)) = tree.split_once("::") else {
            continue;
        };
        if !modules.contains(module) {
            continue;
        }
        for name in rest
            .split([',', '{', '}'])
            .map(str::trim)
            .filter(|n| !n.is_empty())
        {
            // `a::B as C` exports `C`; `a::B` exports `B`.
            let last = name.rsplit(" as ").next().unwrap_or(name);
            let last = last.rsplit("::").next().unwrap_or(last).trim();
            if !last.is_empty() && last != "self" && last != "*" {
                exports.insert(last.to_owned(), module.to_owned());
            }
        }
    }
    exports
}

/// Every elementary circle through the graph's strongly connected parts, each
/// written once, from its smallest module.
fn find_circles(edges: &Edges) -> Vec<String> {
    let mut circles = BTreeSet::new();
    for start in edges.keys() {
        let mut path = vec![start.clone()];
        walk(edges, start, &mut path, &mut circles);
    }
    circles.into_iter().collect()
}

fn walk(edges: &Edges, start: &str, path: &mut Vec<String>, circles: &mut BTreeSet<String>) {
    let Some(last) = path.last().cloned() else {
        return;
    };
    let Some(next) = edges.get(&last) else {
        return;
    };
    for to in next.keys() {
        if to == start {
            // Written from its smallest member, so each circle appears once.
            let smallest = path.iter().min().map(String::as_str) == Some(start);
            if smallest {
                let mut text = path.join(" -> ");
                text.push_str(&format!(" -> {start} ("));
                let places: Vec<String> = path
                    .iter()
                    .zip(
                        path.iter()
                            .skip(1)
                            .chain(std::iter::once(&start.to_owned())),
                    )
                    .filter_map(|(a, b)| {
                        edges
                            .get(a)
                            .and_then(|m| m.get(b))
                            .map(|p| format!("{a} -> {b} at {p}"))
                    })
                    .collect();
                text.push_str(&places.join("; "));
                text.push(')');
                circles.insert(text);
            }
        } else if !path.contains(to) && path.len() < 12 {
            path.push(to.clone());
            walk(edges, start, path, circles);
            path.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_found_in_use_trees_inline_and_through_super_but_not_in_comments() {
        let text = strip(
            r#"
            use crate::{a::X, b, c::{d, e}};
            use crate::f::G;
            // use crate::comment::Z;
            let s = "crate::string::Y";
            fn x() { crate::h::call(); tracing::info!("{}", crate::i::J); }
            use super::k::L;
            "#,
        );
        let heads: Vec<String> = crate_paths(&text, 1)
            .into_iter()
            .map(|(_, h, _)| h)
            .collect();
        assert_eq!(heads, ["a", "b", "c", "f", "h", "i", "k"]);
        // In a nested file, one `super::` stays inside the top-level module.
        let nested: Vec<String> = crate_paths(&text, 2)
            .into_iter()
            .map(|(_, h, _)| h)
            .collect();
        assert_eq!(nested, ["a", "b", "c", "f", "h", "i"]);
    }

    #[test]
    fn root_exports_map_to_their_modules() {
        let modules: BTreeSet<String> = ["call", "channel"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let e = root_exports(
            "pub use call::{Attempt, ServedBy as Served};\npub use channel::Builder;\nuse std::fmt;",
            &modules,
        );
        assert_eq!(e.get("Attempt").map(String::as_str), Some("call"));
        assert_eq!(e.get("Served").map(String::as_str), Some("call"));
        assert_eq!(e.get("Builder").map(String::as_str), Some("channel"));
        assert!(!e.contains_key("fmt"));
    }

    #[test]
    fn circles_are_reported_once_with_their_places() {
        let mut edges = Edges::new();
        let mut add = |a: &str, b: &str| {
            edges
                .entry(a.to_owned())
                .or_default()
                .insert(b.to_owned(), format!("{a}.rs:1"));
        };
        add("a", "b");
        add("b", "c");
        add("c", "a");
        add("c", "d");
        let found = find_circles(&edges);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("a -> b -> c -> a"), "{found:?}");
        assert!(found[0].contains("c -> a at c.rs:1"), "{found:?}");
    }
}
