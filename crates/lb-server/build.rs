//! With the `admin` feature: compiles channelz's proto with the protoc that
//! `protoc-bin-vendored` ships (a `PROTOC` in the environment still wins). Without
//! it, nothing.

#[cfg(feature = "admin")]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::Config::new();
    if std::env::var_os("PROTOC").is_none() {
        config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    }
    let include = protoc_bin_vendored::include_path()?;
    let proto = std::path::PathBuf::from("proto/grpc/channelz/v1/channelz.proto");
    tonic_prost_build::configure().compile_with_config(
        config,
        std::slice::from_ref(&proto),
        &[std::path::PathBuf::from("proto"), include],
    )?;
    println!("cargo:rerun-if-changed={}", proto.display());
    Ok(())
}

#[cfg(not(feature = "admin"))]
fn main() {}
