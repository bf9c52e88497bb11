//! The layering rule of ARCHITECTURE.md ("Layers"), checked: no
//! `crate::…` path in `src/` reaches from a module up to a module of a
//! higher layer, and every module is in a layer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Module (or crate-root macro) → its layer, 0 the top, as the numbered
/// list of the Layers section names them in backticks.
fn layers(architecture: &str) -> HashMap<String, usize> {
    let section = architecture
        .split("\n## ")
        .find(|s| s.starts_with("Layers"))
        .expect("ARCHITECTURE.md has a Layers section");
    // Each item with the indented lines that continue it.
    let mut items: Vec<String> = Vec::new();
    for line in section.lines() {
        let numbered = line
            .split_once(". ")
            .is_some_and(|(n, _)| n.parse::<usize>().is_ok());
        match items.last_mut() {
            _ if numbered => items.push(line.to_owned()),
            Some(item) if line.starts_with("   ") => item.push_str(line),
            _ => {}
        }
    }
    let mut layers = HashMap::new();
    for (layer, item) in items.iter().enumerate() {
        for name in item.split('`').skip(1).step_by(2) {
            layers.insert(name.trim_end_matches('!').to_owned(), layer);
        }
    }
    layers
}

/// Every `.rs` file under `dir`, but `src/bin/` (binaries of their own,
/// which reach the library by its name).
fn sources(dir: &Path, files: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            if !path.ends_with("src/bin") {
                sources(&path, files);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to.
fn module_of(src: &Path, file: &Path) -> String {
    let first = file.strip_prefix(src).unwrap().components().next().unwrap();
    let name = first.as_os_str().to_str().unwrap();
    name.trim_end_matches(".rs").to_owned()
}

/// A `crate::…` path in the code: its line, its text and the top-level
/// module it names.
struct CratePath {
    line: usize,
    text: String,
    module: String,
}

/// The `crate::` paths of `code`, outside comments; `crate::{a, b::c}`
/// gives one path per item.
fn crate_paths(code: &str) -> Vec<CratePath> {
    let mut paths = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let line_start = code[..at].rfind('\n').map_or(0, |i| i + 1);
        let before = &code[line_start..at];
        if before.contains("//") || before.ends_with('$') {
            continue;
        }
        let line = code[..at].matches('\n').count() + 1;
        let rest = &code[at + "crate::".len()..];
        let items: Vec<&str> = match rest.strip_prefix('{') {
            Some(group) => {
                let end = group.find('}').unwrap_or(group.len());
                group[..end].split(',').map(str::trim).collect()
            }
            None => vec![rest],
        };
        for item in items {
            let path: String = item
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let module = path.split("::").next().unwrap_or("").to_owned();
            if !module.is_empty() {
                paths.push(CratePath {
                    line,
                    text: format!("crate::{}", path.trim_end_matches(':')),
                    module,
                });
            }
        }
    }
    paths
}

#[test]
fn no_module_reaches_up_a_layer() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let architecture = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let layers = layers(&architecture);
    let src = root.join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut broken = Vec::new();
    for file in &files {
        let module = module_of(&src, file);
        if module == "lib" {
            continue;
        }
        let shown = file.strip_prefix(root).unwrap().display();
        let Some(&layer) = layers.get(&module) else {
            broken.push(format!("{shown}: module `{module}` is in no layer"));
            continue;
        };
        let code = std::fs::read_to_string(file).unwrap();
        for path in crate_paths(&code) {
            match layers.get(&path.module) {
                None => broken.push(format!(
                    "{shown}:{}: `{}`: `{}` is in no layer",
                    path.line, path.text, path.module
                )),
                Some(&target) if target < layer => broken.push(format!(
                    "{shown}:{}: `{}` reaches up from `{module}` (layer {}) to `{}` (layer {})",
                    path.line,
                    path.text,
                    layer + 1,
                    path.module,
                    target + 1
                )),
                Some(_) => {}
            }
        }
    }
    assert!(
        broken.is_empty(),
        "the layering rule of ARCHITECTURE.md is broken:\n{}",
        broken.join("\n")
    );
}

#[test]
fn crate_paths_are_found_in_uses_groups_and_expressions_but_not_comments() {
    let code = "use crate::cli::exit;\n\
                use crate::{logging, service::build};\n\
                // crate::daemon in a comment\n\
                let x = crate::daemon::run(s); // and crate::cli here\n\
                $crate::outln!();\n";
    let found: Vec<(usize, String, String)> = crate_paths(code)
        .into_iter()
        .map(|p| (p.line, p.text, p.module))
        .collect();
    let expected = [
        (1, "crate::cli::exit", "cli"),
        (2, "crate::logging", "logging"),
        (2, "crate::service::build", "service"),
        (4, "crate::daemon::run", "daemon"),
    ];
    let expected: Vec<(usize, String, String)> = expected
        .iter()
        .map(|(l, t, m)| (*l, (*t).to_owned(), (*m).to_owned()))
        .collect();
    assert_eq!(found, expected);
}

#[test]
fn the_layers_are_read_from_the_numbered_list() {
    let text = "# A\n\n## Layers\n\nTop to bottom:\n\n\
                1. **Entry** — `main`, `cli`.\n\
                2. **Commands** — `commands` and\n   the `outln!` macro.\n\n\
                ## Next\n\n1. `other`\n";
    let layers = layers(text);
    assert_eq!(layers.len(), 4);
    assert_eq!(layers["cli"], 0);
    assert_eq!(layers["outln"], 1);
    assert!(!layers.contains_key("other"));
}
