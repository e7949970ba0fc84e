//! What a user of the published crates gets, checked before it is published:
//!
//! * every feature of the facade builds alone (and all together) without a warning;
//! * the README's `[dependencies]` block, client and server build as written, in a
//!   new crate that depends on `grpc-lb` alone (by path, here);
//! * every published crate packages (`cargo package`), in dependency order.

use std::path::Path;
use std::process::Command;

use crate::{Result, cargo, cargo_bin, root};

/// The crates that are published, in dependency order.
pub(crate) const PUBLISHED: &[&str] = &[
    "lb-core",
    "lb-orca",
    "lb-policies",
    "lb-resolvers",
    "lb-xds",
    "lb-server",
    "lb-tonic",
    "grpc-lb",
    "grpc-lb-cli",
];

/// The facade's features, from its manifest's `[features]` table (but `default`).
fn facade_features() -> Result<Vec<String>> {
    let path = root().join("crates").join("grpc-lb").join("Cargo.toml");
    let manifest =
        std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let table = manifest
        .split("\n[features]\n")
        .nth(1)
        .and_then(|rest| rest.split("\n[").next())
        .ok_or_else(|| format!("{} has no [features] table", path.display()))?;
    Ok(table
        .lines()
        .filter_map(|line| line.split_once(" = ").map(|(name, _)| name.trim()))
        .filter(|name| !name.starts_with('#') && *name != "default")
        .map(str::to_owned)
        .collect())
}

/// `cargo package` for every published crate (manifests, file lists, versions of
/// path dependencies). Not verified by a rebuild: the README crate below builds the
/// facade as a user does.
pub(crate) fn package() -> Result {
    let mut args = vec!["package", "--no-verify", "--allow-dirty", "--quiet"];
    for krate in PUBLISHED {
        args.extend(["-p", krate]);
    }
    cargo(&args)
}

/// `cargo check -p grpc-lb` with no default features, then each feature alone, then
/// all of them: no warning from any crate of the workspace.
pub(crate) fn features() -> Result {
    let features = facade_features()?;
    let mut sets: Vec<Vec<&str>> = vec![vec!["--no-default-features"]];
    for feature in &features {
        sets.push(vec!["--no-default-features", "--features", feature]);
    }
    sets.push(vec!["--all-features"]);
    for set in sets {
        let mut args = vec!["check", "-p", "grpc-lb", "--message-format=short"];
        args.extend(&set);
        let warnings = warnings_of(Command::new(cargo_bin()).args(&args))?;
        if !warnings.is_empty() {
            return Err(format!(
                "`cargo {}` warns:\n{}",
                args.join(" "),
                warnings.join("\n")
            ));
        }
    }
    Ok(())
}

/// Runs `cmd` (a cargo build step); its workspace warnings, or its failure.
fn warnings_of(cmd: &mut Command) -> Result<Vec<String>> {
    eprintln!("+ {cmd:?}");
    let output = cmd
        .current_dir(root())
        .output()
        .map_err(|e| format!("could not start {cmd:?}: {e}"))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(format!("{cmd:?} failed:\n{stderr}"));
    }
    // With --message-format=short a diagnostic is `path:line:col: warning: ...`;
    // cargo's own summary lines start with `warning:` too.
    Ok(stderr
        .lines()
        .filter(|l| l.contains("warning"))
        .map(str::to_owned)
        .collect())
}

/// Builds the README's first `[dependencies]` block and its first two Rust blocks
/// (the client and the server) as a new crate, with the facade by path and the
/// workspace's lock file (so that it needs no other versions than the workspace's):
/// no error and no warning.
pub(crate) fn readme_crate() -> Result {
    let root = root();
    let readme = std::fs::read_to_string(root.join("README.md"))
        .map_err(|e| format!("reading README.md: {e}"))?;
    let blocks = fenced_blocks(&readme);
    let dependencies = blocks
        .iter()
        .find(|(lang, body)| *lang == "toml" && body.contains("[dependencies]"))
        .map(|(_, body)| body.as_str())
        .ok_or("README.md has no ```toml block with [dependencies]")?;
    let rust: Vec<&str> = blocks
        .iter()
        .filter(|(lang, _)| lang.split(',').next() == Some("rust"))
        .map(|(_, body)| body.as_str())
        .collect();
    let [client, server, ..] = rust.as_slice() else {
        return Err("README.md needs a client and a server Rust block".to_owned());
    };
    let facade = root.join("crates").join("grpc-lb");
    let dependencies = by_path(dependencies, &facade)?;
    let dir = root.join("target").join("readme-crate");
    let files: [(&str, String); 4] = [
        (
            "Cargo.toml",
            format!(
                "[package]\nname = \"readme-crate\"\nversion = \"0.0.0\"\nedition = \"2024\"\n\
                 publish = false\n\n[workspace]\n\n{dependencies}"
            ),
        ),
        ("src/bin/client.rs", (*client).to_owned()),
        ("src/bin/server.rs", (*server).to_owned()),
        (
            "Cargo.lock",
            std::fs::read_to_string(root.join("Cargo.lock"))
                .map_err(|e| format!("reading Cargo.lock: {e}"))?,
        ),
    ];
    for (path, text) in files {
        write(&dir.join(path), &text)?;
    }
    let manifest = dir.join("Cargo.toml");
    let manifest = manifest.to_string_lossy();
    let warnings = warnings_of(
        Command::new(cargo_bin())
            .args([
                "check",
                "--message-format=short",
                "--manifest-path",
                &manifest,
            ])
            // The workspace's target directory: its dependencies are built already.
            .env("CARGO_TARGET_DIR", root.join("target")),
    )?;
    if warnings.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the README's crate builds with warnings:\n{}",
            warnings.join("\n")
        ))
    }
}

/// The ```-fenced blocks of a Markdown text: (info string, body).
fn fenced_blocks(markdown: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(String, String)> = None;
    for line in markdown.lines() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(info)) => open = Some((info.trim().to_owned(), String::new())),
            (Some(_), Some(_)) => blocks.extend(open.take()),
            (Some((_, body)), None) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    blocks
}

/// The dependencies block with `grpc-lb` taken from `facade` (its version kept, so
/// that the block is checked as written).
fn by_path(dependencies: &str, facade: &Path) -> Result<String> {
    let mut found = false;
    let lines: Vec<String> = dependencies
        .lines()
        .map(|line| match line.strip_prefix("grpc-lb = { ") {
            Some(rest) => {
                found = true;
                format!(
                    "grpc-lb = {{ path = {:?}, {rest}",
                    facade.display().to_string()
                )
            }
            None => line.to_owned(),
        })
        .collect();
    if found {
        Ok(lines.join("\n") + "\n")
    } else {
        Err("the README's [dependencies] has no `grpc-lb = { ... }` line".to_owned())
    }
}

fn write(path: &Path, text: &str) -> Result {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_found_with_their_info_strings() {
        let md = "text\n```toml\n[dependencies]\na = 1\n```\n```rust,no_run\nfn main() {}\n```\n";
        assert_eq!(
            fenced_blocks(md),
            [
                ("toml".to_owned(), "[dependencies]\na = 1\n".to_owned()),
                ("rust,no_run".to_owned(), "fn main() {}\n".to_owned()),
            ]
        );
    }

    #[test]
    fn the_facade_is_taken_by_path_with_its_version_and_features() {
        let deps = "[dependencies]\ngrpc-lb = { version = \"0.1\", features = [\"etcd\"] }\n";
        let out = by_path(deps, Path::new("/w/crates/grpc-lb")).unwrap();
        assert!(out.contains(
            "grpc-lb = { path = \"/w/crates/grpc-lb\", version = \"0.1\", features = [\"etcd\"] }"
        ));
        assert!(by_path("[dependencies]\ntonic = \"0.14\"\n", Path::new("/x")).is_err());
    }
}
