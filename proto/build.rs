//! Compiles the shippy .proto files into Rust with tonic-prost-build, and
//! writes their descriptors for server reflection.
//!
//! protoc is the one `PROTOC` names, else `protoc` on the PATH; `make`
//! installs Debian's when it is missing.

/// The consignment messages that also have a JSON form: the consignment file
/// consignment-cli reads and the `--json` it prints are these messages, so
/// the shape is written once, in the .proto.
const CONSIGNMENT: &str = ".shippy.consignment.v1.Consignment";
const CONTAINER: &str = ".shippy.consignment.v1.Container";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "shippy/consignment/v1/consignment.proto",
        "shippy/vessel/v1/vessel.proto",
    ];
    println!("cargo:rerun-if-changed=shippy");
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let json = "#[derive(serde::Serialize, serde::Deserialize)]\n#[serde(deny_unknown_fields)]";
    tonic_prost_build::configure()
        // For server reflection, so grpcurl and friends need no .proto files.
        .file_descriptor_set_path(out_dir.join("shippy_descriptor.bin"))
        .type_attribute(CONSIGNMENT, json)
        .type_attribute(CONTAINER, json)
        // What the service assigns may be left out of a file; weight,
        // containers and each container's customer, origin and user may
        // not. A misspelt field is refused rather than silently dropped.
        .field_attribute(format!("{CONSIGNMENT}.id"), "#[serde(default)]")
        .field_attribute(format!("{CONSIGNMENT}.description"), "#[serde(default)]")
        .field_attribute(format!("{CONTAINER}.id"), "#[serde(default)]")
        // vessel-service chooses the vessel: a file naming one is refused
        // as an unknown field instead of being ignored, yet the field is
        // still printed.
        .field_attribute(
            format!("{CONSIGNMENT}.vessel_id"),
            "#[serde(skip_deserializing)]",
        )
        .compile_protos(&protos, &["."])?;
    Ok(())
}
