//! The benchmark as `make test` runs it: `shippy-bench suite --smoke`, the
//! whole suite on a few hundred requests per measurement against a real
//! etcd and the real service binaries. Not a timed test: it checks that
//! every measurement runs and that no call fails, never how fast.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use serde_json::Value;
use shippy_test_support::workspace_bin;

#[test]
fn a_smoke_run_measures_everything_and_no_call_fails() {
    let vessel = workspace_bin("vessel-service", "vessel-service").unwrap();
    workspace_bin("consignment-service", "consignment-service").unwrap();
    let bin_dir = vessel.parent().unwrap();
    let out = tempfile::tempdir().unwrap();

    let run = Command::new(env!("CARGO_BIN_EXE_shippy-bench"))
        .args(["suite", "--smoke", "--bin-dir"])
        .arg(bin_dir)
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();

    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let json = std::fs::read_to_string(out.path().join("BENCHMARKS.json")).unwrap();
    let report: Value = serde_json::from_str(&json).unwrap();
    let windows = report["windows"].as_array().unwrap();
    // echo, relay, end to end against three consignment-service instances
    // and FindAvailable, at two concurrencies.
    assert_eq!(windows.len(), 12, "{json}");
    for window in windows {
        let summary = &window["summary"];
        assert_eq!(summary["errors"], 0, "{summary}");
        assert_eq!(summary["requests"], 200, "{summary}");
        assert!(
            summary["latency"]["p50_us"].as_f64().unwrap() > 0.0,
            "{summary}"
        );
    }
    assert_eq!(report["etcd_during_load"]["range_reads"], 0, "{json}");
    for service in report["registration"].as_array().unwrap() {
        assert!(
            !service["registration_ms"].as_array().unwrap().is_empty(),
            "{service}"
        );
        assert!(
            !service["deregistration_ms"].as_array().unwrap().is_empty(),
            "{service}"
        );
    }
    for memory in report["memory"].as_array().unwrap() {
        assert!(memory["idle_kb"].as_u64().unwrap() > 0, "{memory}");
    }
    let markdown = std::fs::read_to_string(out.path().join("BENCHMARKS.md")).unwrap();
    assert!(markdown.contains("**This is a smoke run**"), "{markdown}");
    assert!(
        markdown.contains("| Measurement | Target | Measured | Held |"),
        "{markdown}"
    );
}
