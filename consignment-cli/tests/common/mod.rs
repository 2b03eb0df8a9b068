//! What the CLI's end-to-end tests share beyond shippy-test-support:
//! running the CLI binary and collecting its output.

use std::process::Output;

use shippy_test_support::{TestRegistry, cli};

/// Runs the CLI with `args` against `registry`, with an otherwise clean
/// environment, and waits for it to exit.
pub fn run_cli(registry: &TestRegistry, args: &[&str]) -> Output {
    cli(registry).unwrap().args(args).output().unwrap()
}
