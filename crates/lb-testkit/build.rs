//! Generates the echo service with the protoc that `protoc-bin-vendored` ships, so the
//! build needs no system package (a `PROTOC` in the environment still wins).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::Config::new();
    if std::env::var_os("PROTOC").is_none() {
        config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    }
    tonic_prost_build::configure().compile_with_config(
        config,
        &["proto/echo.proto"],
        &["proto"],
    )?;
    println!("cargo:rerun-if-changed=proto/echo.proto");
    Ok(())
}
