//! Compiles the echo baseline's proto (`proto/echo.proto`) with a vendored protoc, the same
//! way the main crate compiles its contract.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/echo.proto");
    println!("cargo:rerun-if-changed=build.rs");
    let protoc: PathBuf = protoc_bin_vendored::protoc_bin_path()?;
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    // `bytes::Bytes` so the baseline's reply is a reference-counted clone, not a copy.
    config.bytes(["."]);
    tonic_prost_build::configure().compile_with_config(
        config,
        &["proto/echo.proto"],
        &["proto"],
    )?;
    Ok(())
}
