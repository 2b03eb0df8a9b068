//! Bad input through the real CLI against the real services (registered in
//! the etcd this test binary shares): every case gets one readable line on
//! stderr, the right exit status, nothing on stdout, and nothing is stored.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use shippy_proto::consignment::v1::GetRequest;
use shippy_test_support::fixtures::sample_file;
use shippy_test_support::{Service, ServiceProcess, TestRegistry, cli};

/// What a case feeds the CLI.
enum Input {
    /// A file holding these bytes.
    Bytes(Vec<u8>),
    /// A path that does not exist.
    Missing,
    /// A directory instead of a file.
    Directory,
    /// The sample file, with these extra command-line arguments.
    SampleWithArgs(&'static [&'static str]),
}

struct Case {
    name: &'static str,
    input: Input,
    exit: i32,
    /// Text the one stderr line must contain.
    says: &'static str,
}

fn json(text: &str) -> Input {
    Input::Bytes(text.as_bytes().to_vec())
}

const CONTAINER: &str =
    r#"{"customer_id": "cust001", "origin": "Manchester", "user_id": "user001"}"#;

/// A consignment with the given weight and containers, as JSON.
fn consignment(weight: &str, containers: &str) -> Input {
    json(&format!(
        r#"{{"description": "d", "weight": {weight}, "containers": {containers}}}"#
    ))
}

fn with_container(container: &str) -> Input {
    consignment("55000", &format!("[{container}]"))
}

fn cases() -> Vec<Case> {
    let one = format!("[{CONTAINER}]");
    let case = |name, input, exit, says| Case {
        name,
        input,
        exit,
        says,
    };
    vec![
        // The file itself.
        case("missing file", Input::Missing, 2, "cannot open"),
        case("directory", Input::Directory, 2, "is a directory"),
        case("empty file", json(""), 2, "the file is empty"),
        case("only whitespace", json(" \n\t\n"), 2, "the file is empty"),
        case(
            "not UTF-8",
            Input::Bytes(b"{\"weight\": \xff\xfe}".to_vec()),
            2,
            "not UTF-8",
        ),
        case(
            "over the size limit",
            Input::Bytes(vec![b' '; 1024 * 1024 + 1]),
            2,
            "limited to 1048576 bytes",
        ),
        // JSON syntax, with its position.
        case(
            "truncated JSON",
            json("{\"weight\": 1,"),
            2,
            "invalid JSON: EOF while parsing",
        ),
        case(
            "syntax error on line 3",
            json("{\n\"weight\": 1,\n\"containers\": [}\n"),
            2,
            "line 3 column",
        ),
        case(
            "trailing garbage",
            consignment_text_with("55000", &one, " x"),
            2,
            "trailing characters",
        ),
        case(
            "byte order mark",
            Input::Bytes(b"\xef\xbb\xbf{}".to_vec()),
            2,
            "byte order mark",
        ),
        // JSON shape and types.
        case(
            "an array, not an object",
            json("[1, 2]"),
            2,
            "expected a JSON object",
        ),
        case("null", json("null"), 2, "expected a JSON object"),
        case(
            "weight as text",
            consignment("\"heavy\"", &one),
            2,
            "invalid type: string \"heavy\"",
        ),
        case(
            "weight with a fraction",
            consignment("1.5", &one),
            2,
            "invalid type: floating point",
        ),
        case(
            "description a boolean",
            json(&format!(
                r#"{{"description": true, "weight": 1, "containers": {one}}}"#
            )),
            2,
            "invalid type: boolean",
        ),
        case(
            "containers an object",
            consignment("1", CONTAINER),
            2,
            "invalid type: map, expected a sequence",
        ),
        case(
            "origin a number",
            with_container(r#"{"customer_id": "c", "origin": 5, "user_id": "u"}"#),
            2,
            "invalid type: integer `5`",
        ),
        // Unknown, missing and repeated fields.
        case(
            "misspelt weight",
            json(&format!(
                r#"{{"wieght": 5, "weight": 5, "containers": {one}}}"#
            )),
            2,
            "unknown field `wieght`",
        ),
        case(
            "misspelt container field",
            with_container(
                r#"{"custmer_id": "c", "customer_id": "c", "origin": "o", "user_id": "u"}"#,
            ),
            2,
            "unknown field `custmer_id`",
        ),
        case(
            "vessel_id given",
            json(&format!(
                r#"{{"weight": 5, "vessel_id": "mine", "containers": {one}}}"#
            )),
            2,
            "unknown field `vessel_id`",
        ),
        case(
            "no weight",
            json(&format!(r#"{{"containers": {one}}}"#)),
            2,
            "missing field `weight`",
        ),
        case(
            "no containers field",
            json(r#"{"weight": 5}"#),
            2,
            "missing field `containers`",
        ),
        case(
            "container without customer",
            with_container(r#"{"origin": "o", "user_id": "u"}"#),
            2,
            "missing field `customer_id`",
        ),
        case(
            "weight twice",
            json(&format!(
                r#"{{"weight": 5, "weight": 6, "containers": {one}}}"#
            )),
            2,
            "duplicate field `weight`",
        ),
        // Values the CLI checks.
        case("zero weight", consignment("0", &one), 2, "got 0"),
        case("negative weight", consignment("-5", &one), 2, "got -5"),
        case(
            "weight over int32",
            consignment("3000000000", &one),
            2,
            "got 3000000000",
        ),
        case(
            "weight over int64",
            consignment("100000000000000000000", &one),
            2,
            "not a valid consignment",
        ),
        case(
            "no containers",
            consignment("5", "[]"),
            2,
            "at least one container",
        ),
        // Values the service checks: INVALID_ARGUMENT naming the field.
        case(
            "empty customer",
            with_container(r#"{"customer_id": "", "origin": "o", "user_id": "u"}"#),
            2,
            "INVALID_ARGUMENT: invalid containers[0].customer_id: must not be empty",
        ),
        case(
            "blank user",
            with_container(r#"{"customer_id": "c", "origin": "o", "user_id": "  "}"#),
            2,
            "INVALID_ARGUMENT: invalid containers[0].user_id",
        ),
        case(
            "over-long origin",
            with_container(&format!(
                r#"{{"customer_id": "c", "origin": "{}", "user_id": "u"}}"#,
                "o".repeat(1025)
            )),
            2,
            "INVALID_ARGUMENT: invalid containers[0].origin: at most 1024 characters",
        ),
        case(
            "over-long description",
            json(&format!(
                r#"{{"description": "{}", "weight": 5, "containers": {one}}}"#,
                "d".repeat(1025)
            )),
            2,
            "INVALID_ARGUMENT: invalid description",
        ),
        case(
            "over-long id",
            json(&format!(
                r#"{{"id": "{}", "weight": 5, "containers": {one}}}"#,
                "i".repeat(129)
            )),
            2,
            "INVALID_ARGUMENT: invalid id",
        ),
        // Ids outside the safe set: refused, and never echoed raw.
        case(
            "id forging a log line",
            json(&format!(
                r#"{{"id": "c1\n2026-01-01T00:00:00Z  INFO forged", "weight": 5, "containers": {one}}}"#
            )),
            2,
            r"INVALID_ARGUMENT: invalid id: '\n' (character 3) is not allowed: ids are ASCII letters, digits and -_.:@/",
        ),
        case(
            "container id with an escape sequence",
            with_container(
                r#"{"id": "box\u001b]0;retitled\u0007", "customer_id": "c", "origin": "o", "user_id": "u"}"#,
            ),
            2,
            r"INVALID_ARGUMENT: invalid containers[0].id: '\u{1b}' (character 4) is not allowed",
        ),
        case(
            "user id not ASCII",
            with_container(r#"{"customer_id": "c", "origin": "o", "user_id": "usér"}"#),
            2,
            "INVALID_ARGUMENT: invalid containers[0].user_id: 'é' (character 3) is not allowed",
        ),
        case(
            "duplicate container ids",
            consignment(
                "5",
                &format!(
                    r#"[{c1}, {c1}]"#,
                    c1 = r#"{"id": "box", "customer_id": "c", "origin": "o", "user_id": "u"}"#
                ),
            ),
            2,
            "INVALID_ARGUMENT: invalid containers[1].id",
        ),
        // Refused for want of a vessel: a service answer, not bad input.
        case(
            "heavier than any vessel",
            consignment("2000000000", &one),
            1,
            "NOT_FOUND: no vessel can carry 1 containers weighing 2000000000 kg",
        ),
        // The command line.
        case(
            "unknown flag",
            Input::SampleWithArgs(&["--bogus"]),
            2,
            "unexpected argument '--bogus'",
        ),
        case(
            "zero timeout",
            Input::SampleWithArgs(&["--timeout", "0"]),
            2,
            "--timeout",
        ),
        case(
            "unspecified address",
            Input::SampleWithArgs(&["--address", "0.0.0.0:50051"]),
            2,
            "unspecified address",
        ),
    ]
}

/// Like [`consignment`], with `suffix` after the closing brace.
fn consignment_text_with(weight: &str, containers: &str, suffix: &str) -> Input {
    json(&format!(
        r#"{{"description": "d", "weight": {weight}, "containers": {containers}}}{suffix}"#
    ))
}

#[tokio::test]
async fn every_bad_input_gets_one_clear_line_and_stores_nothing() {
    let registry = TestRegistry::shared().await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    // Different services, so each one's instance is told apart at once.
    let (vessel, consignment) = tokio::join!(
        ServiceProcess::start(&registry, Service::Vessel, logs.path(), "vessel", &[]),
        ServiceProcess::start(
            &registry,
            Service::Consignment,
            logs.path(),
            "consignment",
            &[]
        ),
    );
    let (_vessel, consignment) = (vessel.unwrap(), consignment.unwrap());
    let files = tempfile::tempdir().unwrap();
    let cases = cases();
    assert!(cases.len() >= 30, "the corpus has {} cases", cases.len());

    let mut wrong = Vec::new();
    for (index, case) in cases.iter().enumerate() {
        let mut command = cli(&registry).unwrap();
        match &case.input {
            Input::Bytes(bytes) => {
                let path = files.path().join(format!("case{index}.json"));
                std::fs::write(&path, bytes).unwrap();
                command.arg(path);
            }
            Input::Missing => {
                command.arg(files.path().join("missing.json"));
            }
            Input::Directory => {
                command.arg(files.path());
            }
            Input::SampleWithArgs(args) => {
                command.arg(sample_file()).args(*args);
            }
        }
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let ok = output.status.code() == Some(case.exit)
            && stderr.contains(case.says)
            && stdout.is_empty()
            && !stderr.contains("panicked")
            // clap's usage errors add a usage hint; everything else is one line.
            && (matches!(case.input, Input::SampleWithArgs(_)) || stderr.trim_end().lines().count() == 1);
        if !ok {
            wrong.push(format!(
                "{}: exit {:?}, stderr {stderr:?}, stdout {stdout:?}",
                case.name,
                output.status.code()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} case(s) went wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );

    // Nothing was stored by any of them.
    let stored = consignment
        .shipping_client()
        .await
        .unwrap()
        .get_consignments(GetRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(stored.consignments.is_empty(), "{:?}", stored.consignments);
}
