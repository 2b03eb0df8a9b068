//! The sample consignment, `consignment.json` at the workspace root, and
//! the requests built from it, so every measurement moves the same data the
//! tutorial's CLI sends.

use prost::Message;
use serde::Deserialize;
use shippy_proto::consignment::v1 as consignment;
use shippy_proto::vessel::v1 as vessel;

/// The file `make run` and the CLI submit.
const SAMPLE_JSON: &str = include_str!("../../consignment.json");

/// The file's shape (the CLI's parser is stricter; this one only reads the
/// known sample).
#[derive(Debug, Deserialize)]
struct SampleFile {
    description: String,
    weight: i32,
    containers: Vec<SampleContainer>,
}

#[derive(Debug, Deserialize)]
struct SampleContainer {
    customer_id: String,
    origin: String,
    user_id: String,
}

/// The sample as a CreateConsignment request.
pub fn consignment() -> anyhow::Result<consignment::Consignment> {
    let file: SampleFile = serde_json::from_str(SAMPLE_JSON)?;
    Ok(consignment::Consignment {
        id: String::new(),
        description: file.description,
        weight: file.weight,
        containers: file
            .containers
            .into_iter()
            .map(|container| consignment::Container {
                id: String::new(),
                customer_id: container.customer_id,
                origin: container.origin,
                user_id: container.user_id,
            })
            .collect(),
        vessel_id: String::new(),
    })
}

/// The FindAvailable request consignment-service sends for the sample.
pub fn find_request(sample: &consignment::Consignment) -> vessel::Specification {
    vessel::Specification {
        capacity: i32::try_from(sample.containers.len()).unwrap_or(i32::MAX),
        max_weight: sample.weight,
    }
}

/// The size of the encoded sample, which the echo floor's payload matches.
pub fn encoded_len(sample: &consignment::Consignment) -> usize {
    sample.encoded_len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_is_the_tutorials_consignment() {
        let sample = consignment().unwrap();
        assert_eq!(sample.weight, 55_000);
        assert_eq!(sample.containers.len(), 3);
        assert_eq!(
            find_request(&sample),
            vessel::Specification {
                capacity: 3,
                max_weight: 55_000
            }
        );
        assert!(encoded_len(&sample) > 100, "{}", encoded_len(&sample));
    }
}
