//! Compiles the shippy .proto files into Rust with tonic-prost-build.
//!
//! protoc comes from the `PROTOC` environment variable; the Makefile points it
//! at a protox binary installed under `.tools/` so no system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "shippy/consignment/v1/consignment.proto",
        "shippy/vessel/v1/vessel.proto",
    ];
    println!("cargo:rerun-if-changed=shippy");
    tonic_prost_build::configure().compile_protos(&protos, &["."])?;
    Ok(())
}
