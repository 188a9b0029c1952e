//! The module graph has no cycles (ARCHITECTURE.md, "Layers"): neither among the crate's
//! top-level modules nor among the submodules of one directory module. The graph is read
//! from the sources: a module depends on every module that a `crate::a::b` path or a
//! `super::x` path in its non-test code names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (e.g. `sweep::plan`) -> file.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(src, &mut files);
    let mut m = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(src).unwrap().with_extension("");
        let mut parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if parts.last().is_some_and(|p| p == "mod") {
            parts.pop();
        }
        if parts == ["lib"] || parts == ["main"] || parts.last().is_some_and(|p| p == "tests") {
            continue;
        }
        m.insert(parts.join("::"), f);
    }
    m
}

/// The source without comments and without its `#[cfg(test)] mod tests` block.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => &text[..],
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The identifier path starting at byte `i` of `s`: `a::b::c` (lowercase segments only,
/// the module part of a path).
fn path_at(s: &str, i: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = &s[i..];
    loop {
        let n = rest
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(rest.len());
        if n == 0 {
            break;
        }
        out.push(rest[..n].to_string());
        rest = &rest[n..];
        match rest.strip_prefix("::") {
            Some(r) => rest = r,
            None => break,
        }
    }
    out
}

/// The longest module prefix of `path`.
fn resolve(mods: &BTreeMap<String, PathBuf>, path: &[String]) -> Option<String> {
    (1..=path.len())
        .rev()
        .map(|k| path[..k].join("::"))
        .find(|c| mods.contains_key(c))
}

/// Every module name inside `{ ... }` groups after `prefix` (`use crate::{a, b::c}`).
fn grouped(s: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = s[from..].find(prefix) {
        let start = from + i + prefix.len();
        let Some(len) = s[start..].find("};") else {
            break;
        };
        let group = &s[start..start + len];
        for item in group.split([',', '{', '}']) {
            let item = item.trim();
            if !item.is_empty() {
                out.push(path_at(item, 0));
            }
        }
        from = start + len;
    }
    out
}

fn edges(mods: &BTreeMap<String, PathBuf>) -> BTreeMap<String, BTreeSet<String>> {
    let mut e: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, file) in mods {
        let src = code(file);
        let here: Vec<String> = m.split("::").map(String::from).collect();
        let parent = &here[..here.len() - 1];
        let mut targets = Vec::new();
        for (i, _) in src.match_indices("crate::") {
            targets.push(path_at(&src, i + "crate::".len()));
        }
        targets.extend(grouped(&src, "use crate::{"));
        for (i, _) in src.match_indices("super::") {
            let mut p = parent.to_vec();
            p.extend(path_at(&src, i + "super::".len()));
            targets.push(p);
        }
        for g in grouped(&src, "use super::{") {
            let mut p = parent.to_vec();
            p.extend(g);
            targets.push(p);
        }
        let set = e.entry(m.clone()).or_default();
        for t in targets {
            if let Some(t) = resolve(mods, &t)
                && t != *m
                && !m.starts_with(&format!("{t}::"))
            {
                set.insert(t);
            }
        }
    }
    e
}

/// The strongly connected components with more than one node (Tarjan).
fn cycles(nodes: &[String], e: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        e: &'a BTreeMap<String, BTreeSet<String>>,
        nodes: BTreeSet<&'a String>,
        idx: BTreeMap<String, usize>,
        low: BTreeMap<String, usize>,
        stack: Vec<String>,
        on: BTreeSet<String>,
        out: Vec<Vec<String>>,
    }
    fn visit(t: &mut T, v: &str) {
        let n = t.idx.len();
        t.idx.insert(v.into(), n);
        t.low.insert(v.into(), n);
        t.stack.push(v.into());
        t.on.insert(v.into());
        let next: Vec<String> =
            t.e.get(v)
                .map(|s| s.iter().filter(|w| t.nodes.contains(w)).cloned().collect())
                .unwrap_or_default();
        for w in next {
            if !t.idx.contains_key(&w) {
                visit(t, &w);
                let lw = t.low[&w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(&w) {
                let iw = t.idx[&w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.idx[v] {
            let mut comp = Vec::new();
            loop {
                let w = t.stack.pop().unwrap();
                t.on.remove(&w);
                let done = w == v;
                comp.push(w);
                if done {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        e,
        nodes: nodes.iter().collect(),
        idx: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in nodes {
        if !t.idx.contains_key(v) {
            visit(&mut t, v);
        }
    }
    t.out
}

fn all_cycles(src: &Path) -> Vec<String> {
    let mods = modules(src);
    let e = edges(&mods);
    let top = |m: &str| m.split("::").next().unwrap().to_string();
    let mut te: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (a, bs) in &e {
        for b in bs {
            if top(a) != top(b) {
                te.entry(top(a)).or_default().insert(top(b));
            }
        }
    }
    let tops: Vec<String> = mods
        .keys()
        .map(|m| top(m))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut found: Vec<String> = cycles(&tops, &te)
        .into_iter()
        .map(|c| c.join(" <-> "))
        .collect();
    let dirs: BTreeSet<String> = mods
        .keys()
        .filter_map(|m| m.rsplit_once("::").map(|(d, _)| d.to_string()))
        .collect();
    for d in dirs {
        let depth = d.matches("::").count() + 1;
        let sub: Vec<String> = mods
            .keys()
            .filter(|m| m.starts_with(&format!("{d}::")) && m.matches("::").count() == depth)
            .cloned()
            .collect();
        found.extend(
            cycles(&sub, &e)
                .into_iter()
                .map(|c| format!("in {d}: {}", c.join(" <-> "))),
        );
    }
    found
}

#[test]
fn the_module_graph_has_no_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = all_cycles(&src);
    assert!(found.is_empty(), "module cycles: {found:#?}");
}

/// The reader finds a cycle when there is one (so the test above can fail).
#[test]
fn a_planted_cycle_is_found() {
    let dir = std::env::temp_dir().join(format!("reslim-arch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("d")).unwrap();
    let w = |p: &str, s: &str| std::fs::write(dir.join(p), s).unwrap();
    w("lib.rs", "pub mod a;\npub mod b;\npub mod d;\n");
    w("a.rs", "use crate::b::Thing;\n");
    w(
        "b.rs",
        "// crate::a is named in a comment only\npub fn f() { crate::a::g() }\n",
    );
    w("d/mod.rs", "pub mod x;\npub mod y;\n");
    w("d/x.rs", "use super::y::Y;\n");
    w(
        "d/y.rs",
        "use super::{x::X, z};\n#[cfg(test)]\nmod tests { use crate::a; }\n",
    );
    let found = all_cycles(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        found,
        vec!["a <-> b".to_string(), "in d: d::x <-> d::y".to_string()]
    );
}
