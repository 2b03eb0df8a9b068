//! The tutorial's sample consignment, as a wire message and as the file the
//! CLI reads, so that every test sends the same one.

use std::path::{Path, PathBuf};

use shippy_proto::consignment::v1 as pb;

/// The repository's `consignment.json`, which [`sample_consignment`] mirrors.
pub fn sample_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../consignment.json")
}

/// A container of customer `customer` from Manchester for user001, as in
/// the sample.
pub fn container(customer: &str) -> pb::Container {
    pb::Container {
        id: String::new(),
        customer_id: customer.into(),
        origin: "Manchester, United Kingdom".into(),
        user_id: "user001".into(),
    }
}

/// The consignment in `consignment.json`: three containers, 55 000 kg, no
/// id (the service assigns one) and no vessel yet.
pub fn sample_consignment() -> pb::Consignment {
    let from = |customer: &str, origin: &str| pb::Container {
        origin: origin.into(),
        ..container(customer)
    };
    pb::Consignment {
        id: String::new(),
        description: "This is a test consignment".into(),
        weight: 55_000,
        containers: vec![
            container("cust001"),
            from("cust002", "Derby, United Kingdom"),
            from("cust005", "Sheffield, United Kingdom"),
        ],
        vessel_id: String::new(),
    }
}

/// The sample consignment under the caller's `id`.
pub fn consignment(id: &str) -> pb::Consignment {
    pb::Consignment {
        id: id.into(),
        ..sample_consignment()
    }
}
