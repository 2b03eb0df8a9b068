//! How results look on the terminal.

use std::fmt::Write;

use shippy_proto::consignment::v1 as pb;

/// The created consignment, field by field.
pub fn created(consignment: &pb::Consignment) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Created consignment {}", consignment.id);
    let _ = writeln!(out, "  vessel_id:   {}", consignment.vessel_id);
    let _ = writeln!(out, "  description: {}", consignment.description);
    let _ = writeln!(out, "  weight:      {} kg", consignment.weight);
    let _ = writeln!(out, "  containers:  {}", consignment.containers.len());
    for container in &consignment.containers {
        let id = if container.id.is_empty() {
            String::new()
        } else {
            format!("{} ", container.id)
        };
        let _ = writeln!(
            out,
            "    - {id}customer {} from {} (user {})",
            container.customer_id, container.origin, container.user_id
        );
    }
    out
}

/// Every stored consignment, one row each.
pub fn listing(consignments: &[pb::Consignment]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "All consignments ({}):", consignments.len());
    let id_width = consignments
        .iter()
        .map(|c| c.id.chars().count())
        .max()
        .unwrap_or(0)
        .max("ID".len());
    let vessel_width = consignments
        .iter()
        .map(|c| c.vessel_id.chars().count())
        .max()
        .unwrap_or(0)
        .max("VESSEL".len());
    let _ = writeln!(
        out,
        "  {:id_width$}  {:vessel_width$}  {:>11}  {:>10}  DESCRIPTION",
        "ID", "VESSEL", "WEIGHT (kg)", "CONTAINERS"
    );
    for c in consignments {
        let _ = writeln!(
            out,
            "  {:id_width$}  {:vessel_width$}  {:>11}  {:>10}  {}",
            c.id,
            c.vessel_id,
            c.weight,
            c.containers.len(),
            c.description
        );
    }
    out
}

/// A gRPC status for a person: its canonical code name and message.
pub fn status(call: &str, status: &tonic::Status) -> String {
    format!(
        "{call} failed: {}: {}",
        code_name(status.code()),
        status.message()
    )
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consignment() -> pb::Consignment {
        pb::Consignment {
            id: "c1".into(),
            description: "This is a test consignment".into(),
            weight: 55_000,
            containers: vec![pb::Container {
                id: String::new(),
                customer_id: "cust001".into(),
                origin: "Manchester, United Kingdom".into(),
                user_id: "user001".into(),
            }],
            vessel_id: "vessel001".into(),
        }
    }

    #[test]
    fn the_created_consignment_shows_its_vessel_and_containers() {
        let text = created(&consignment());
        assert!(text.starts_with("Created consignment c1\n"), "{text}");
        assert!(text.contains("  vessel_id:   vessel001\n"), "{text}");
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
    fn statuses_read_as_code_and_message() {
        let text = status(
            "CreateConsignment",
            &tonic::Status::not_found("no vessel fits"),
        );
        assert_eq!(text, "CreateConsignment failed: NOT_FOUND: no vessel fits");
    }
}
