//! How results look: aligned text for people, JSON (`--json`) for scripts.
//!
//! A consignment in JSON is the serde form of the wire message (declared in
//! shippy-proto's build.rs): the input file's field names plus `id` and
//! `vessel_id`, with no copy of the shape kept here.
//!
//! Everything shown comes from outside (a service's answers, etcd's keys
//! and records, file names), so text goes through [`escape`] before it
//! reaches the terminal: a newline cannot forge a row, and an escape
//! sequence cannot retitle, clear or recolour the terminal. JSON escapes
//! control characters itself; [`to_json`] adds the few it leaves raw.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;
use shippy_client::{RequestId, status};
use shippy_proto::consignment::v1 as pb;
use shippy_registry::catalog::LeaseState;

use crate::services::InstanceView;

/// A consignment the service created, and the id of the call that did.
#[derive(Debug)]
pub struct Created {
    /// As stored, with its vessel.
    pub consignment: pb::Consignment,
    /// The request id both services logged the call under.
    pub request_id: RequestId,
}

/// `text` with every control character (C0, DEL, C1) and the Unicode line
/// and paragraph separators written as a Rust-style escape (`\n`, `\r`,
/// `\u{1b}`), so that it shows as one inert run of text on a terminal.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if needs_escape(c) {
            let _ = write!(escaped, "{}", c.escape_debug());
        } else {
            escaped.push(c);
        }
    }
    Cow::Owned(escaped)
}

fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

/// The created consignment, field by field.
pub fn created(created: &Created) -> String {
    let consignment = &created.consignment;
    let mut out = String::new();
    let _ = writeln!(out, "Created consignment {}", escape(&consignment.id));
    let _ = writeln!(out, "  vessel_id:   {}", escape(&consignment.vessel_id));
    let _ = writeln!(out, "  description: {}", escape(&consignment.description));
    let _ = writeln!(out, "  weight:      {} kg", consignment.weight);
    let _ = writeln!(out, "  containers:  {}", consignment.containers.len());
    for container in &consignment.containers {
        let id = if container.id.is_empty() {
            String::new()
        } else {
            format!("{} ", escape(&container.id))
        };
        let _ = writeln!(
            out,
            "    - {id}customer {} from {} (user {})",
            escape(&container.customer_id),
            escape(&container.origin),
            escape(&container.user_id)
        );
    }
    let _ = writeln!(
        out,
        "  request_id:  {}",
        escape(created.request_id.as_str())
    );
    out
}

/// Every stored consignment, one row each.
pub fn listing(consignments: &[pb::Consignment]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "All consignments ({}):", consignments.len());
    let rows: Vec<_> = consignments
        .iter()
        .map(|c| (escape(&c.id), escape(&c.vessel_id), c))
        .collect();
    let id_width = rows
        .iter()
        .map(|(id, _, _)| id.chars().count())
        .max()
        .unwrap_or(0)
        .max("ID".len());
    let vessel_width = rows
        .iter()
        .map(|(_, vessel, _)| vessel.chars().count())
        .max()
        .unwrap_or(0)
        .max("VESSEL".len());
    let _ = writeln!(
        out,
        "  {:id_width$}  {:vessel_width$}  {:>11}  {:>10}  DESCRIPTION",
        "ID", "VESSEL", "WEIGHT (kg)", "CONTAINERS"
    );
    for (id, vessel, c) in rows {
        let _ = writeln!(
            out,
            "  {id:id_width$}  {vessel:vessel_width$}  {:>11}  {:>10}  {}",
            c.weight,
            c.containers.len(),
            escape(&c.description)
        );
    }
    out
}

/// Every registered service and its instances, as a table per service.
pub fn services(services: &BTreeMap<String, Vec<InstanceView>>) -> String {
    let mut out = String::new();
    if services.is_empty() {
        let _ = writeln!(out, "No services are registered.");
        return out;
    }
    for (name, instances) in services {
        let noun = if instances.len() == 1 {
            "instance"
        } else {
            "instances"
        };
        let _ = writeln!(out, "{} ({} {noun})", escape(name), instances.len());
        let rows: Vec<[String; 5]> = instances
            .iter()
            .map(|instance| {
                [
                    escape(&instance.id).into_owned(),
                    instance
                        .address
                        .as_deref()
                        .map_or_else(|| "-".into(), |address| escape(address).into_owned()),
                    instance.health.label().to_owned(),
                    lease_text(instance.lease),
                    metadata_text(&instance.metadata),
                ]
            })
            .collect();
        let header = ["INSTANCE", "ADDRESS", "HEALTH", "LEASE TTL", "METADATA"].map(String::from);
        let mut widths = header.clone().map(|title| title.chars().count());
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        for row in std::iter::once(&header).chain(&rows) {
            let [id, address, health, lease, metadata] = row;
            let line = format!(
                "  {id:w0$}  {address:w1$}  {health:w2$}  {lease:w3$}  {metadata}",
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2],
                w3 = widths[3],
            );
            let _ = writeln!(out, "{}", line.trim_end());
        }
        for instance in instances {
            if let Some(problem) = instance.health.problem() {
                let _ = writeln!(out, "  ! {}: {}", escape(&instance.id), escape(problem));
            }
        }
    }
    out
}

/// "7s of 10s", "expired", or "none" for a key without a lease.
fn lease_text(lease: Option<LeaseState>) -> String {
    match lease {
        None => "none".into(),
        Some(LeaseState { ttl_left: None, .. }) => "expired".into(),
        Some(LeaseState {
            ttl_left: Some(left),
            granted,
            ..
        }) => format!("{left}s of {granted}s"),
    }
}

fn metadata_text(metadata: &BTreeMap<String, String>) -> String {
    metadata
        .iter()
        .map(|(key, value)| format!("{}={}", escape(key), escape(value)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `create --json`: `{"request_id": …, "consignment": {…}}`.
pub fn created_json(created: &Created) -> String {
    to_json(&CreatedJson {
        request_id: created.request_id.as_str(),
        consignment: &created.consignment,
        consignments: None,
    })
}

/// `list --json`: `{"consignments": […]}`.
pub fn listing_json(consignments: &[pb::Consignment]) -> String {
    to_json(&ListingJson { consignments })
}

#[derive(Debug, Serialize)]
struct ListingJson<'a> {
    consignments: &'a [pb::Consignment],
}

/// The bare form with `--json`: the created consignment and the listing.
pub fn submitted_json(created: &Created, consignments: &[pb::Consignment]) -> String {
    to_json(&CreatedJson {
        request_id: created.request_id.as_str(),
        consignment: &created.consignment,
        consignments: Some(consignments),
    })
}

#[derive(Debug, Serialize)]
struct CreatedJson<'a> {
    request_id: &'a str,
    consignment: &'a pb::Consignment,
    #[serde(skip_serializing_if = "Option::is_none")]
    consignments: Option<&'a [pb::Consignment]>,
}

/// `services --json`: `{"services": [{"name", "instances": […]}]}`.
pub fn services_json(services: &BTreeMap<String, Vec<InstanceView>>) -> String {
    let services: Vec<_> = services
        .iter()
        .map(|(name, instances)| ServiceJson {
            name,
            instances: instances.iter().map(InstanceJson::from).collect(),
        })
        .collect();
    to_json(&ServicesJson { services })
}

#[derive(Debug, Serialize)]
struct ServicesJson<'a> {
    services: Vec<ServiceJson<'a>>,
}

#[derive(Debug, Serialize)]
struct ServiceJson<'a> {
    name: &'a str,
    instances: Vec<InstanceJson<'a>>,
}

#[derive(Debug, Serialize)]
struct InstanceJson<'a> {
    id: &'a str,
    key: &'a str,
    address: Option<&'a str>,
    health: &'static str,
    health_error: Option<&'a str>,
    /// Hexadecimal, as etcdctl prints lease ids.
    lease_id: Option<String>,
    lease_ttl_secs: Option<u64>,
    lease_granted_secs: Option<u64>,
    metadata: &'a BTreeMap<String, String>,
}

impl<'a> From<&'a InstanceView> for InstanceJson<'a> {
    fn from(instance: &'a InstanceView) -> Self {
        Self {
            id: &instance.id,
            key: &instance.key,
            address: instance.address.as_deref(),
            health: instance.health.label(),
            health_error: instance.health.problem(),
            lease_id: instance.lease.map(|lease| format!("{:x}", lease.id)),
            lease_ttl_secs: instance.lease.and_then(|lease| lease.ttl_left),
            lease_granted_secs: instance.lease.map(|lease| lease.granted),
            metadata: &instance.metadata,
        }
    }
}

/// `value` as pretty JSON. serde_json escapes the C0 controls; DEL, the C1
/// controls and the line and paragraph separators it writes raw, and these
/// are escaped here too (`\u009b`). They only ever occur inside strings,
/// where the escape means the same character, so the document is unchanged.
fn to_json(value: &impl Serialize) -> String {
    // Strings, numbers and string-keyed maps always serialise.
    let json = serde_json::to_string_pretty(value).unwrap_or_default();
    // Below DEL, the only raw controls are the layout's own newlines.
    let raw = |c: char| needs_escape(c) && c >= '\u{7f}';
    if !json.chars().any(raw) {
        return json;
    }
    let mut escaped = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if raw(c) {
            let _ = write!(escaped, "\\u{:04x}", u32::from(c));
        } else {
            escaped.push(c);
        }
    }
    escaped
}

/// A gRPC status for a person: its canonical code name and message.
pub fn status(call: &str, failure: &tonic::Status) -> String {
    format!(
        "{call} failed: {}: {}",
        status::name(failure.code()),
        escape(failure.message())
    )
}

#[cfg(test)]
mod tests {
    use shippy_test_support::fixtures;

    use super::*;

    /// The sample as stored: with an id and its vessel.
    fn consignment() -> pb::Consignment {
        pb::Consignment {
            vessel_id: "vessel001".into(),
            ..fixtures::consignment("c1")
        }
    }

    fn created_sample() -> Created {
        Created {
            consignment: consignment(),
            request_id: RequestId::parse("req-1").unwrap(),
        }
    }

    #[test]
    fn the_created_consignment_shows_its_vessel_containers_and_request_id() {
        let text = created(&created_sample());
        assert!(text.starts_with("Created consignment c1\n"), "{text}");
        assert!(text.contains("  vessel_id:   vessel001\n"), "{text}");
        assert!(text.ends_with("  request_id:  req-1\n"), "{text}");
        assert!(
            text.contains(
                "    - customer cust001 from Manchester, United Kingdom (user user001)\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn the_listing_has_a_header_and_a_row_per_consignment() {
        let text = listing(&[consignment(), consignment()]);
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines[0], "All consignments (2):");
        assert!(lines[1].contains("VESSEL"), "{text}");
        assert_eq!(lines.len(), 4);
        assert!(
            lines[2].contains("vessel001") && lines[2].contains("55000"),
            "{text}"
        );
    }

    #[test]
    fn json_output_uses_the_input_file_field_names() {
        let value: serde_json::Value =
            serde_json::from_str(&created_json(&created_sample())).unwrap();
        assert_eq!(value["request_id"], "req-1");
        assert_eq!(value["consignment"]["vessel_id"], "vessel001");
        assert_eq!(
            value["consignment"]["containers"][0]["customer_id"],
            "cust001"
        );
        let listed: serde_json::Value =
            serde_json::from_str(&listing_json(&[consignment()])).unwrap();
        assert_eq!(listed["consignments"][0]["weight"], 55_000);
    }

    /// Scripts read these keys: the consignment's and each container's
    /// are exactly the ones printed before they came from the wire type.
    #[test]
    fn json_output_has_exactly_the_documented_keys() {
        let keys = |value: &serde_json::Value| {
            let mut keys: Vec<_> = value.as_object().unwrap().keys().cloned().collect();
            keys.sort();
            keys
        };
        let value: serde_json::Value =
            serde_json::from_str(&submitted_json(&created_sample(), &[consignment()])).unwrap();
        assert_eq!(keys(&value), ["consignment", "consignments", "request_id"]);
        for consignment in [&value["consignment"], &value["consignments"][0]] {
            assert_eq!(
                keys(consignment),
                ["containers", "description", "id", "vessel_id", "weight"]
            );
            assert_eq!(
                keys(&consignment["containers"][0]),
                ["customer_id", "id", "origin", "user_id"]
            );
            assert_eq!(consignment["containers"][0]["id"], "");
        }
    }

    #[test]
    fn leases_read_as_time_left_of_granted() {
        let lease = |ttl_left| {
            Some(LeaseState {
                id: 1,
                ttl_left,
                granted: 10,
            })
        };
        assert_eq!(lease_text(lease(Some(7))), "7s of 10s");
        assert_eq!(lease_text(lease(None)), "expired");
        assert_eq!(lease_text(None), "none");
    }

    /// Text a hostile service or etcd record could send: a forged row, a
    /// window title (OSC … BEL), a clear screen (CSI, 7-bit and C1), a
    /// carriage return, DEL and a Unicode line separator.
    const HOSTILE: &str =
        "x\n  forged  row\u{1b}]0;retitled\u{7}\u{1b}[2J\u{9b}2J\rover\u{7f}\u{2028}";

    fn assert_inert(text: &str) {
        let body = text.strip_suffix('\n').unwrap_or(text);
        for c in body.chars() {
            assert!(!needs_escape(c) || c == '\n', "raw {c:?} in {text:?}");
        }
        for line in text.lines() {
            assert!(!line.trim_start().starts_with("forged"), "{text}");
        }
    }

    #[test]
    fn control_characters_are_escaped_and_plain_text_is_untouched() {
        assert!(matches!(
            escape("cust-001 Manchester, UK"),
            Cow::Borrowed(_)
        ));
        assert_eq!(
            escape(HOSTILE),
            r"x\n  forged  row\u{1b}]0;retitled\u{7}\u{1b}[2J\u{9b}2J\rover\u{7f}\u{2028}"
        );
    }

    #[test]
    fn hostile_text_from_a_service_stays_inert_in_every_text_layout() {
        let mut hostile = consignment();
        hostile.id = format!("id{HOSTILE}");
        hostile.description = HOSTILE.into();
        hostile.vessel_id = HOSTILE.into();
        hostile.containers[0].origin = HOSTILE.into();
        hostile.containers[0].customer_id = HOSTILE.into();
        let text = listing(&[hostile.clone(), consignment()]);
        assert_inert(&text);
        assert_eq!(text.lines().count(), 4, "{text}");
        assert_inert(&created(&Created {
            consignment: hostile,
            request_id: RequestId::parse("req-1").unwrap(),
        }));
        assert_inert(&status(
            "GetConsignments",
            &tonic::Status::unavailable(HOSTILE),
        ));
    }

    #[test]
    fn hostile_registry_records_stay_inert_in_the_services_table() {
        let instance = InstanceView {
            key: format!("/shippy/services/svc/{HOSTILE}"),
            id: HOSTILE.into(),
            address: Some(HOSTILE.into()),
            metadata: BTreeMap::from([(HOSTILE.to_owned(), HOSTILE.to_owned())]),
            lease: None,
            health: crate::services::Health::Unreachable(HOSTILE.into()),
        };
        let listed = BTreeMap::from([(HOSTILE.to_owned(), vec![instance])]);
        let text = services(&listed);
        assert_inert(&text);
        assert_eq!(text.lines().count(), 4, "{text}");
    }

    #[test]
    fn json_keeps_the_text_exactly_with_no_raw_control_characters() {
        let mut hostile = consignment();
        hostile.description = HOSTILE.into();
        let json = listing_json(std::slice::from_ref(&hostile));
        assert!(
            !json.chars().any(|c| needs_escape(c) && c != '\n'),
            "{json:?}"
        );
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed["consignments"][0]["description"], HOSTILE);
    }

    #[test]
    fn statuses_read_as_code_and_message() {
        let text = status(
            "CreateConsignment",
            &tonic::Status::not_found("no vessel fits"),
        );
        assert_eq!(text, "CreateConsignment failed: NOT_FOUND: no vessel fits");
    }
}
