//! Compiles the shippy .proto files into Rust with tonic-prost-build, and
//! writes their descriptors for server reflection.
//!
//! protoc comes from the `PROTOC` environment variable; the Makefile points it
//! at a protox binary installed under `.tools/` so no system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "shippy/consignment/v1/consignment.proto",
        "shippy/vessel/v1/vessel.proto",
    ];
    println!("cargo:rerun-if-changed=shippy");
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // For server reflection, so grpcurl and friends need no .proto files.
        .file_descriptor_set_path(out_dir.join("shippy_descriptor.bin"))
        .compile_protos(&protos, &["."])?;
    Ok(())
}
