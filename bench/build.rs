//! Compiles the echo service used as the benchmark floor, and records the
//! compiler version so reports say what built the binaries they measured.
//!
//! protoc comes from the `PROTOC` environment variable, as for `shippy-proto`.

use std::process::Command;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure().compile_protos(&["shippy/bench/v1/echo.proto"], &["proto"])?;

    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let version = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=SHIPPY_BENCH_RUSTC_VERSION={version}");
    Ok(())
}
