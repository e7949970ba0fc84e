//! Compiles the two vendored xds ORCA protos with the protoc that `protoc-bin-vendored`
//! ships (a `PROTOC` in the environment still wins). The service stub is generated
//! only with the `server` feature, so clients do not compile tonic's server side.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::Config::new();
    if std::env::var_os("PROTOC").is_none() {
        config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    }
    let include = protoc_bin_vendored::include_path()?;
    let server = std::env::var_os("CARGO_FEATURE_SERVER").is_some();
    let protos = [
        "proto/xds/data/orca/v3/orca_load_report.proto",
        "proto/xds/service/orca/v3/orca.proto",
    ]
    .map(std::path::PathBuf::from);
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(server)
        .compile_with_config(
            config,
            &protos,
            &[std::path::PathBuf::from("proto"), include],
        )?;
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", proto.display());
    }
    Ok(())
}
