//! Compiles the public contract in `proto/customer_profile/v1` with a vendored protoc, and
//! writes the descriptor set that the reflection service serves.
use std::{env, path::PathBuf};

const PROTOS: &[&str] = &[
    "proto/customer_profile/v1/common.proto",
    "proto/customer_profile/v1/identity.proto",
    "proto/customer_profile/v1/profile.proto",
    "proto/customer_profile/v1/interaction.proto",
    "proto/customer_profile/v1/consent.proto",
    "proto/customer_profile/v1/contact.proto",
    "proto/customer_profile/v1/privacy.proto",
    "proto/customer_profile/v1/admin.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    println!("cargo:rerun-if-changed=build.rs");
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        // GetProfile's reply can carry bytes encoded before (src/service/reply.rs).
        .extern_path(
            ".customer_profile.v1.GetProfileResponse",
            "crate::service::reply::GetProfileResponse",
        )
        // So can each profile of BatchGetProfiles' reply.
        .extern_path(
            ".customer_profile.v1.ProfileResult",
            "crate::service::reply::ProfileResult",
        )
        .file_descriptor_set_path(out_dir.join("customer_profile_descriptor.bin"))
        .compile_with_config(config, PROTOS, &["proto"])?;
    Ok(())
}
