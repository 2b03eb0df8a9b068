//! Reading a consignment file into the wire message, with one clear error
//! per problem instead of sending an empty or half-read consignment.
//!
//! The file is the serde form of the wire `Consignment` itself (declared in
//! shippy-proto's build.rs: unknown fields and `vessel_id` are refused; `id`,
//! `description` and a container's `id` may be left out), so there is no
//! second copy of its shape here, only the checks a file needs on top.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, bail};
use serde::Deserialize;
use shippy_proto::consignment::v1 as pb;

/// The largest consignment file read; larger ones are refused unread.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Only the weight as written, when it is a whole number. serde refuses a
/// weight beyond the wire's int32 as "expected i32"; reading it apart lets
/// that be reported like a weight of 0 or -5, with the number that was given.
#[derive(Debug, Deserialize)]
struct WrittenWeight {
    weight: i64,
}

/// Reads and checks the consignment file at `path`.
pub fn read_consignment(path: &Path) -> anyhow::Result<pb::Consignment> {
    let shown = path.display();
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {shown}"))?;
    let metadata = file
        .metadata()
        .with_context(|| format!("cannot read {shown}"))?;
    if metadata.is_dir() {
        bail!("{shown} is a directory, not a consignment file");
    }
    if metadata.len() > MAX_FILE_BYTES {
        bail!(
            "{shown} is {} bytes; consignment files are limited to {MAX_FILE_BYTES} bytes",
            metadata.len()
        );
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {shown}"))?;
    // Saturating only strengthens the comparison: a length beyond u64 is
    // over the limit either way.
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > MAX_FILE_BYTES {
        bail!("{shown} is larger than {MAX_FILE_BYTES} bytes");
    }
    parse_consignment(&bytes).with_context(|| format!("{shown}"))
}

/// Parses consignment JSON into the wire message.
pub fn parse_consignment(bytes: &[u8]) -> anyhow::Result<pb::Consignment> {
    let text = std::str::from_utf8(bytes).map_err(|err| {
        anyhow::anyhow!(
            "not UTF-8 text (invalid byte at offset {})",
            err.valid_up_to()
        )
    })?;
    if text.trim().is_empty() {
        bail!("the file is empty; expected a JSON consignment");
    }
    if text.starts_with('\u{feff}') {
        bail!("the file starts with a byte order mark; save it as UTF-8 without one");
    }
    // serde would also read a struct from a JSON array, by position, and
    // then complain about the wrong thing.
    if !text.trim_start().starts_with('{') {
        bail!("expected a JSON object {{ … }} holding a consignment");
    }
    let consignment: pb::Consignment =
        serde_json::from_str(text).map_err(|err| describe_json_error(text, err))?;
    if consignment.weight <= 0 {
        return Err(weight_out_of_range(i64::from(consignment.weight)));
    }
    if consignment.containers.is_empty() {
        bail!("containers is empty; a consignment needs at least one container");
    }
    Ok(consignment)
}

/// The one error for a weight the wire cannot carry or the service refuses.
fn weight_out_of_range(weight: i64) -> anyhow::Error {
    anyhow::anyhow!(
        "weight must be a whole number of kilograms from 1 to {}, got {weight}",
        i32::MAX
    )
}

/// Turns serde's message into one line that says what and where; a whole
/// weight beyond int32 gets the same message as any other weight out of
/// range.
fn describe_json_error(text: &str, err: serde_json::Error) -> anyhow::Error {
    use serde_json::error::Category;
    let kind = match err.classify() {
        Category::Syntax | Category::Eof => "invalid JSON",
        Category::Data => {
            if let Ok(WrittenWeight { weight }) = serde_json::from_str(text)
                && i32::try_from(weight).is_err()
            {
                return weight_out_of_range(weight);
            }
            "not a valid consignment"
        }
        Category::Io => "cannot read",
    };
    anyhow::anyhow!("{kind}: {err}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = include_str!("../../consignment.json");

    fn error_of(json: &str) -> String {
        format!("{:#}", parse_consignment(json.as_bytes()).unwrap_err())
    }

    #[test]
    fn the_shipped_sample_parses_to_the_tutorials_consignment() {
        let consignment = parse_consignment(SAMPLE.as_bytes()).unwrap();
        assert_eq!(consignment.description, "This is a test consignment");
        assert_eq!(consignment.weight, 55_000);
        let customers: Vec<_> = consignment
            .containers
            .iter()
            .map(|c| (c.customer_id.as_str(), c.user_id.as_str()))
            .collect();
        assert_eq!(
            customers,
            [
                ("cust001", "user001"),
                ("cust002", "user001"),
                ("cust005", "user001")
            ]
        );
        assert!(consignment.containers[1].origin.starts_with("Derby"));
        // The sample every other test sends is this file's content.
        assert_eq!(
            consignment,
            shippy_test_support::fixtures::sample_consignment()
        );
    }

    #[test]
    fn bad_files_get_one_line_naming_the_problem() {
        let containers = r#"[{"customer_id":"c","origin":"o","user_id":"u"}]"#;
        let cases = [
            ("", "empty".to_owned()),
            ("[1, 2]", "expected a JSON object".to_owned()),
            ("\u{feff}{}", "byte order mark".to_owned()),
            (
                "{\"weight\": 1,\n \"containers\": [}",
                "line 2 column".to_owned(),
            ),
            (
                &format!(r#"{{"wieght": 5, "weight": 5, "containers": {containers}}}"#),
                "unknown field `wieght`".to_owned(),
            ),
            (
                &format!(r#"{{"weight": "heavy", "containers": {containers}}}"#),
                "invalid type".to_owned(),
            ),
            (
                &format!(r#"{{"weight": -5, "containers": {containers}}}"#),
                "got -5".to_owned(),
            ),
            (
                &format!(r#"{{"weight": 3000000000, "containers": {containers}}}"#),
                "got 3000000000".to_owned(),
            ),
            (
                r#"{"weight": 5, "containers": []}"#,
                "at least one container".to_owned(),
            ),
            (r#"{"weight": 5}"#, "missing field `containers`".to_owned()),
        ];
        for (json, expected) in cases {
            let message = error_of(json);
            assert!(message.contains(&expected), "{json:?}: {message}");
            assert!(!message.contains('\n'), "{json:?}: {message}");
        }
    }

    #[test]
    fn non_utf8_bytes_are_refused() {
        let message = format!(
            "{:#}",
            parse_consignment(b"{\"weight\": \xff}").unwrap_err()
        );
        assert!(message.contains("not UTF-8"), "{message}");
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        proptest! {
            /// Any bytes get a consignment or a one-line error, never a panic.
            #[test]
            fn any_bytes_parse_or_fail_in_one_line(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
                if let Err(err) = parse_consignment(&bytes) {
                    let message = format!("{err:#}");
                    prop_assert!(!message.contains('\n'), "{}", message);
                }
            }

            /// Valid consignments of any content come through unchanged.
            #[test]
            fn valid_files_keep_every_field(
                description in ".{0,20}",
                weight in 1i32..,
                customers in proptest::collection::vec("[a-z0-9]{1,8}", 1..5),
            ) {
                let containers: Vec<_> = customers
                    .iter()
                    .map(|c| serde_json::json!({"customer_id": c, "origin": "o", "user_id": "u"}))
                    .collect();
                let text = serde_json::json!({"description": description, "weight": weight, "containers": containers});
                let parsed = parse_consignment(text.to_string().as_bytes()).unwrap();
                prop_assert_eq!(parsed.description, description);
                prop_assert_eq!(parsed.weight, weight);
                let parsed_customers: Vec<_> = parsed.containers.into_iter().map(|c| c.customer_id).collect();
                prop_assert_eq!(parsed_customers, customers);
            }
        }
    }
}
