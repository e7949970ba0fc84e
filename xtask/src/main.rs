//! Repository automation, run as `cargo xtask <command>`:
//!
//! * `test`  installs what the test suite needs (system packages, cargo-nextest), then
//!   runs every test of the workspace, doc tests included. The README's test command.
//! * `lint`  `cargo fmt --check`, no circle among any crate's top-level modules
//!   (`modules` alone), clippy with warnings denied on all targets and features,
//!   `cargo doc` with warnings denied, then what users of the published crates get
//!   (`publish` alone): the facade built with each feature alone and all together
//!   with no warning, the README's `[dependencies]`, client and server built as a new
//!   crate, and `cargo package` of every published crate.
//! * `ci`    `lint`, then `test`.
//! * `bench` every benchmark: criterion pick benches and the end-to-end runs (`e2e`,
//!   `load`, `discovery`, and `scale`: 10,000 instances in real etcd and ZooKeeper),
//!   each rewriting its section of `docs/benchmarks.md`, and `e2e` drawing its SVG
//!   charts into `docs/charts/` (`cargo xtask bench --bench load` for one target).
//! * `demo`  the main demo (no etcd, no ZooKeeper, no system packages).

mod modules;
mod publish;

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// Debian packages the build and the test suite need, with what shows each is present
/// (a binary on PATH, or an absolute path).
const SYSTEM_PACKAGES: &[(&str, &str)] = &[
    // etcd-client compiles etcd's protos: protoc and the well-known types.
    ("protobuf-compiler", "protoc"),
    (
        "libprotobuf-dev",
        "/usr/include/google/protobuf/descriptor.proto",
    ),
    // A real etcd for the resolver and registrar tests.
    ("etcd-server", "etcd"),
    ("etcd-client", "etcdctl"),
    // A real ZooKeeper (it brings its JVM) for the ZooKeeper tests.
    ("zookeeper", "/usr/share/zookeeper/bin/zkServer.sh"),
];

/// The example that `cargo xtask demo` runs.
const DEMO: &str = "quickstart";

type Result<T = ()> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let (command, rest) = match args.split_first() {
        Some((c, rest)) => (c.as_str(), rest),
        None => ("help", &[][..]),
    };
    let result = match command {
        "test" => test(),
        "lint" => lint(),
        "ci" => lint().and_then(|()| test()),
        "modules" => module_circles(),
        "publish" => publish::features()
            .and_then(|()| publish::readme_crate())
            .and_then(|()| publish::package()),
        "bench" => bench(rest),
        "demo" => cargo(&["run", "--quiet", "-p", "examples", "--example", DEMO]),
        "help" | "-h" | "--help" => {
            println!("usage: cargo xtask <test|lint|modules|publish|ci|bench|demo>");
            Ok(())
        }
        other => Err(format!("unknown command `{other}`; try `cargo xtask help`")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask {command}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn run(cmd: &mut Command) -> Result {
    eprintln!("+ {cmd:?}");
    let status = cmd
        .current_dir(root())
        .status()
        .map_err(|e| format!("could not start {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed with {status}"))
    }
}

fn cargo_bin() -> String {
    env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

fn cargo(args: &[&str]) -> Result {
    run(Command::new(cargo_bin()).args(args))
}

fn have(probe: &str) -> bool {
    if probe.starts_with('/') {
        return Path::new(probe).exists();
    }
    let binary = probe;
    Command::new("sh")
        .args(["-c", &format!("command -v {binary}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn install_prerequisites() -> Result {
    let missing: Vec<&str> = SYSTEM_PACKAGES
        .iter()
        .filter(|(_, bin)| !have(bin))
        .map(|(pkg, _)| *pkg)
        .collect();
    if !missing.is_empty() {
        eprintln!("installing {missing:?}");
        run(Command::new("apt-get").arg("update").arg("-q"))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    if !nextest_available() {
        cargo(&["install", "--locked", "cargo-nextest"])?;
    }
    Ok(())
}

fn nextest_available() -> bool {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    Command::new(cargo)
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// gRPC C-core's Python binding and its channelz, for the channelz interop tests:
/// an independent implementation of both sides. Pinned, in a virtualenv under
/// `target/`.
const INTEROP_PYTHON_PACKAGES: &[&str] = &["grpcio==1.76.0", "grpcio-channelz==1.76.0"];

/// The virtualenv's python, with [`INTEROP_PYTHON_PACKAGES`] installed.
fn interop_python() -> Result<PathBuf> {
    let venv = root().join("target").join("interop-venv");
    let python = venv.join("bin").join("python");
    let ready = |python: &Path| {
        Command::new(python)
            .args(["-c", "import grpc, grpc_channelz"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if ready(&python) {
        return Ok(python);
    }
    let venv_works = Command::new("python3")
        .args(["-m", "venv", "--help"])
        .output()
        .is_ok_and(|o| o.status.success())
        && Command::new("python3")
            .args(["-c", "import ensurepip"])
            .output()
            .is_ok_and(|o| o.status.success());
    if !venv_works {
        eprintln!("installing python3-venv");
        run(Command::new("apt-get").arg("update").arg("-q"))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(["python3", "python3-venv"])
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    run(Command::new("python3")
        .args(["-m", "venv", "--clear"])
        .arg(&venv))?;
    run(Command::new(&python)
        .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
        .args(INTEROP_PYTHON_PACKAGES))?;
    if ready(&python) {
        Ok(python)
    } else {
        Err(format!(
            "{} cannot import grpc_channelz after installing it",
            python.display()
        ))
    }
}

fn test() -> Result {
    install_prerequisites()?;
    // Without it only the interop tests fail, each saying what is missing.
    let python = interop_python().unwrap_or_else(|e| {
        eprintln!("warning: no python with grpcio for the interop tests: {e}");
        PathBuf::from("python3")
    });
    // nextest does not run doc tests; run them first so that nextest's summary is
    // the run's closing line.
    cargo(&["test", "--workspace", "--all-features", "--doc"])?;
    run(Command::new(cargo_bin())
        .args([
            "nextest",
            "run",
            "--workspace",
            "--all-features",
            "--all-targets",
            "--no-fail-fast",
        ])
        .env("GRPC_LB_PYTHON", python))
}

fn lint() -> Result {
    // Clippy builds every feature, etcd's protos included.
    install_prerequisites()?;
    cargo(&["fmt", "--all", "--", "--check"])?;
    module_circles()?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--all-features",
        "--",
        "-D",
        "warnings",
    ])?;
    run(Command::new(cargo_bin())
        .args(["doc", "--workspace", "--all-features", "--no-deps"])
        .env("RUSTDOCFLAGS", "-D warnings"))?;
    // What users of the published crates get.
    publish::features()?;
    publish::readme_crate()?;
    publish::package()
}

/// Fails when a crate's top-level modules import each other in a circle.
fn module_circles() -> Result {
    let crates = root().join("crates");
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&crates)
        .map_err(|e| format!("reading {}: {e}", crates.display()))?
        .filter_map(|e| e.ok().map(|e| e.path().join("src")))
        .filter(|src| src.is_dir())
        .collect();
    entries.push(root().join("xtask").join("src"));
    entries.sort();
    let mut found = Vec::new();
    for src in &entries {
        for circle in modules::circles(src)? {
            let name = src
                .parent()
                .and_then(Path::file_name)
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            found.push(format!("  {name}: {circle}"));
        }
    }
    eprintln!("+ module circles in {} crates", entries.len());
    if found.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "top-level modules that import each other in a circle:\n{}",
            found.join("\n")
        ))
    }
}

fn bench(rest: &[String]) -> Result {
    let mut args = vec!["bench", "--workspace", "--all-features"];
    if rest.is_empty() {
        args.push("--benches"); // bench targets only, not unit tests in bench mode
    }
    args.extend(rest.iter().map(String::as_str));
    let cargo_bin = env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    // The end-to-end benches write their tables into docs/benchmarks.md, and e2e its
    // charts into docs/charts/ beside it.
    let doc = root().join("docs").join("benchmarks.md");
    run(Command::new(cargo_bin)
        .args(&args)
        .env("GRPC_LB_BENCH_DOC", doc))
}
