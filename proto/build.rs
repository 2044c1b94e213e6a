//! Compiles `meridian/v1/meridian.proto` and flagd's protocols with protox (pure Rust: no protoc on
//! the machine) and generates the tonic client and server, plus the encoded
//! descriptor set that server reflection serves.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Meridian's API, and flagd's sync and evaluation protocols (vendored
    // unchanged in flagd/; every region serves them too).
    let protos = [
        "meridian/v1/meridian.proto",
        "flagd/sync/v1/sync.proto",
        "flagd/evaluation/v1/evaluation.proto",
        "flagd/evaluation/v2/evaluation.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("meridian_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
