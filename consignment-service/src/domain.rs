//! Consignments as the service understands them, parsed from the wire at the
//! edge so that everything past the handler works with valid data only.
//!
//! Numbers are checked once, where they come in, into types whose range
//! fits the wire's int32: [`Weight`] and the container count. Going back out
//! (a response, the FindAvailable request, a stored row) is then a `From`
//! conversion that cannot fail or saturate.
//!
//! Ids a client chooses (the consignment's, and each container's id,
//! customer and user) are limited to ASCII letters, digits and
//! [`ID_PUNCTUATION`]: they end up in logs, terminals and other systems'
//! keys, where a newline or an escape sequence would forge a line or take
//! over a terminal. Free text (description, origin) may hold anything; the
//! log and consignment-cli escape it on output.
//!
//! A consignment must also fit, encoded, in one GetConsignments page
//! ([`MAX_CONSIGNMENT_BYTES`]), so that listing can always get past it.

use std::collections::BTreeSet;

use prost::Message;
use serde::{Deserialize, Serialize};
use shippy_proto::consignment::v1 as pb;
use shippy_proto::vessel::v1 as vessel_pb;

use crate::error::ConsignmentError;
use crate::listing::MAX_PAGE_BYTES;

/// The longest id (consignment, container, customer, user) accepted.
pub const MAX_ID_LEN: usize = 128;
/// The characters besides ASCII letters and digits an id may hold.
pub const ID_PUNCTUATION: &str = "-_.:@/";
/// The longest description or origin accepted.
pub const MAX_TEXT_LEN: usize = 1024;
/// The most containers one consignment may hold. A `u16`, so a count within
/// it is the wire's int32 capacity without a fallible conversion.
pub const MAX_CONTAINERS: u16 = 10_000;
/// The largest CreateConsignment request accepted, encoded. Below a page's
/// budget by enough for an assigned id and the vessel's id, so that every
/// stored consignment fits in a GetConsignments page on its own (and its
/// CreateConsignment response in a message the caller can decode).
pub const MAX_CONSIGNMENT_BYTES: usize = MAX_PAGE_BYTES - 4 * 1024;

/// One container of a consignment. Its serde form is the store's
/// `containers` JSON column, so field names and order are a stored format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    /// Optional; unique within the consignment when given.
    pub id: String,
    /// Who ships it.
    pub customer_id: String,
    /// Where it comes from.
    pub origin: String,
    /// Who entered it.
    pub user_id: String,
}

/// A stored consignment, with the vessel that carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consignment {
    /// Unique among stored consignments.
    pub id: String,
    /// Free text; may be empty.
    pub description: String,
    /// Total weight.
    pub weight: Weight,
    /// At least one.
    pub containers: Vec<Container>,
    /// The vessel vessel-service assigned.
    pub vessel_id: String,
}

/// A consignment's total weight in kilograms: from 1 to `i32::MAX`, the
/// range the wire's int32 can carry. Made only by [`Weight::new`], so it
/// converts back to the wire and into the store's BIGINT without loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Weight(i32);

impl Weight {
    /// `kg` as a weight, or `None` when it is not from 1 to `i32::MAX`.
    /// Takes an `i64` so that a request's int32 and a stored BIGINT are
    /// checked by the same rule.
    pub fn new(kg: i64) -> Option<Self> {
        i32::try_from(kg).ok().filter(|kg| *kg > 0).map(Self)
    }
}

impl From<Weight> for i32 {
    fn from(weight: Weight) -> Self {
        weight.0
    }
}

impl From<Weight> for i64 {
    fn from(weight: Weight) -> Self {
        i64::from(weight.0)
    }
}

/// A validated CreateConsignment request, before a vessel is assigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewConsignment {
    /// The caller's id, or `None` to have one assigned.
    id: Option<String>,
    description: String,
    weight: Weight,
    containers: Vec<Container>,
    /// `containers.len()`, counted once at parse time; at most
    /// [`MAX_CONTAINERS`]. The fields are private and never changed after
    /// parsing, so the two cannot disagree.
    container_count: u16,
}

impl NewConsignment {
    /// Validates a wire consignment. The caller's `vessel_id` is ignored:
    /// the vessel is always chosen by vessel-service.
    pub fn parse(wire: pb::Consignment) -> Result<Self, ConsignmentError> {
        let size = wire.encoded_len();
        if size > MAX_CONSIGNMENT_BYTES {
            return Err(ConsignmentError::TooLarge(format!(
                "the consignment is {size} bytes encoded; at most {MAX_CONSIGNMENT_BYTES} are \
                 accepted, so that it fits in one GetConsignments page"
            )));
        }
        let id = match wire.id.trim() {
            "" => None,
            id => Some(safe_id("id", id)?.to_owned()),
        };
        let description = bounded("description", &wire.description, MAX_TEXT_LEN)?.to_owned();
        let weight = Weight::new(i64::from(wire.weight)).ok_or_else(|| {
            ConsignmentError::invalid("weight", format!("must be above 0 kg, got {}", wire.weight))
        })?;
        if wire.containers.is_empty() {
            return Err(ConsignmentError::invalid(
                "containers",
                "a consignment needs at least one container",
            ));
        }
        let container_count = u16::try_from(wire.containers.len())
            .ok()
            .filter(|count| *count <= MAX_CONTAINERS)
            .ok_or_else(|| {
                ConsignmentError::invalid(
                    "containers",
                    format!(
                        "at most {MAX_CONTAINERS} containers, got {}",
                        wire.containers.len()
                    ),
                )
            })?;
        let mut seen_ids = BTreeSet::new();
        let mut containers = Vec::with_capacity(wire.containers.len());
        for (index, container) in wire.containers.into_iter().enumerate() {
            let container = parse_container(index, container)?;
            if !container.id.is_empty() && !seen_ids.insert(container.id.clone()) {
                return Err(ConsignmentError::invalid(
                    format!("containers[{index}].id"),
                    format!("{:?} is used by another container", container.id),
                ));
            }
            containers.push(container);
        }
        Ok(Self {
            id,
            description,
            weight,
            containers,
            container_count,
        })
    }

    /// What a vessel must carry: every container and the total weight,
    /// exactly as parsed, for vessel-service's FindAvailable.
    pub fn vessel_specification(&self) -> vessel_pb::Specification {
        vessel_pb::Specification {
            capacity: i32::from(self.container_count),
            max_weight: i32::from(self.weight),
        }
    }

    /// The consignment to store once `vessel_id` carries it, with a fresh id
    /// when the caller gave none.
    pub fn assign(self, vessel_id: String) -> Consignment {
        Consignment {
            id: self
                .id
                .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()),
            description: self.description,
            weight: self.weight,
            containers: self.containers,
            vessel_id,
        }
    }
}

fn parse_container(index: usize, wire: pb::Container) -> Result<Container, ConsignmentError> {
    let field = |name: &str| format!("containers[{index}].{name}");
    // Trimmed, and not empty.
    let required = |name: &str, value: &str| -> Result<String, ConsignmentError> {
        match value.trim() {
            "" => Err(ConsignmentError::invalid(field(name), "must not be empty")),
            value => Ok(value.to_owned()),
        }
    };
    let id = |name: &str, value: String| -> Result<String, ConsignmentError> {
        safe_id(&field(name), &value)?;
        Ok(value)
    };
    let container_id = id("id", wire.id.trim().to_owned())?;
    let customer_id = id("customer_id", required("customer_id", &wire.customer_id)?)?;
    let origin = required("origin", &wire.origin)?;
    bounded(&field("origin"), &origin, MAX_TEXT_LEN)?;
    Ok(Container {
        id: container_id,
        customer_id,
        origin,
        user_id: id("user_id", required("user_id", &wire.user_id)?)?,
    })
}

/// Returns `value` if it is a usable id: at most [`MAX_ID_LEN`] characters,
/// each an ASCII letter or digit or one of [`ID_PUNCTUATION`]. The refusal
/// shows the first character that is not, escaped, never the raw value.
fn safe_id<'a>(field: &str, value: &'a str) -> Result<&'a str, ConsignmentError> {
    let value = bounded(field, value, MAX_ID_LEN)?;
    let not_allowed = value
        .chars()
        .enumerate()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || ID_PUNCTUATION.contains(*c)));
    if let Some((index, c)) = not_allowed {
        return Err(ConsignmentError::invalid(
            field,
            format!(
                "{c:?} (character {}) is not allowed: ids are ASCII letters, digits and {ID_PUNCTUATION}",
                index + 1
            ),
        ));
    }
    Ok(value)
}

/// Returns `value` if it is at most `max` characters long.
fn bounded<'a>(field: &str, value: &'a str, max: usize) -> Result<&'a str, ConsignmentError> {
    let len = value.chars().count();
    if len > max {
        return Err(ConsignmentError::invalid(
            field,
            format!("at most {max} characters, got {len}"),
        ));
    }
    Ok(value)
}

impl From<Container> for pb::Container {
    fn from(container: Container) -> Self {
        Self {
            id: container.id,
            customer_id: container.customer_id,
            origin: container.origin,
            user_id: container.user_id,
        }
    }
}

impl From<Consignment> for pb::Consignment {
    fn from(consignment: Consignment) -> Self {
        Self {
            id: consignment.id,
            description: consignment.description,
            weight: i32::from(consignment.weight),
            containers: consignment.containers.into_iter().map(Into::into).collect(),
            vessel_id: consignment.vessel_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use shippy_test_support::fixtures::{container, sample_consignment as sample};

    use super::*;

    fn rejected_field(wire: pb::Consignment) -> String {
        match NewConsignment::parse(wire) {
            Err(ConsignmentError::InvalidArgument { field, .. }) => field,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn the_tutorial_sample_is_valid_and_gets_an_id_and_the_vessel() {
        let parsed = NewConsignment::parse(sample()).unwrap();
        assert_eq!(
            parsed.vessel_specification(),
            vessel_pb::Specification {
                capacity: 3,
                max_weight: 55_000
            }
        );

        let stored = parsed.assign("vessel001".into());
        assert_eq!(stored.vessel_id, "vessel001");
        assert_eq!(stored.id.len(), 32);

        let wire: pb::Consignment = stored.clone().into();
        assert_eq!(wire.weight, 55_000);
        assert_eq!(wire.containers[2].customer_id, "cust005");
        assert_eq!(wire.id, stored.id);
    }

    #[test]
    fn a_given_id_is_kept_and_a_callers_vessel_id_is_ignored() {
        let mut wire = sample();
        wire.id = "c-1".into();
        wire.vessel_id = "my-own-boat".into();
        let stored = NewConsignment::parse(wire)
            .unwrap()
            .assign("vessel001".into());
        assert_eq!(stored.id, "c-1");
        assert_eq!(stored.vessel_id, "vessel001");
    }

    #[test]
    fn bad_requests_name_the_offending_field() {
        let mut cases: Vec<(pb::Consignment, &str)> = Vec::new();
        let mut no_weight = sample();
        no_weight.weight = 0;
        cases.push((no_weight, "weight"));
        let mut negative = sample();
        negative.weight = -1;
        cases.push((negative, "weight"));
        let mut empty = sample();
        empty.containers.clear();
        cases.push((empty, "containers"));
        let mut blank_customer = sample();
        blank_customer.containers[1].customer_id = "  ".into();
        cases.push((blank_customer, "containers[1].customer_id"));
        let mut long_description = sample();
        long_description.description = "x".repeat(MAX_TEXT_LEN + 1);
        cases.push((long_description, "description"));
        let mut duplicate = sample();
        duplicate.containers[0].id = "box".into();
        duplicate.containers[2].id = "box".into();
        cases.push((duplicate, "containers[2].id"));
        let mut long_id = sample();
        long_id.id = "i".repeat(MAX_ID_LEN + 1);
        cases.push((long_id, "id"));

        let mut too_many = sample();
        too_many.containers = vec![container("cust001"); usize::from(MAX_CONTAINERS) + 1];
        cases.push((too_many, "containers"));

        for (wire, field) in cases {
            assert_eq!(rejected_field(wire), field);
        }
    }

    #[test]
    fn ids_outside_the_safe_set_are_refused_by_field_without_echoing_them() {
        let forged = "c1\n2026-01-01T00:00:00.000000Z  INFO forged line";
        let mut cases: Vec<(pb::Consignment, &str)> = Vec::new();
        let mut id = sample();
        id.id = forged.into();
        cases.push((id, "id"));
        let mut container_id = sample();
        container_id.containers[0].id = "box\u{1b}]0;retitled\u{7}".into();
        cases.push((container_id, "containers[0].id"));
        let mut customer = sample();
        customer.containers[1].customer_id = "cust\r001".into();
        cases.push((customer, "containers[1].customer_id"));
        let mut user = sample();
        user.containers[2].user_id = "usér".into();
        cases.push((user, "containers[2].user_id"));
        for (wire, field) in cases {
            let err = NewConsignment::parse(wire).unwrap_err();
            let status = tonic::Status::from(err);
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            let message = status.message();
            assert!(
                message.starts_with(&format!("invalid {field}: ")),
                "{message}"
            );
            assert!(!message.chars().any(char::is_control), "{message:?}");
            assert!(!message.contains("forged line") && !message.contains("retitled"));
        }

        let mut fine = sample();
        fine.id = "Order-2026/04:17_a.b@c".into();
        fine.containers[0].id = "box-1".into();
        fine.containers[0].customer_id = "customer@example.com".into();
        let stored = NewConsignment::parse(fine).unwrap().assign("v".into());
        assert_eq!(stored.id, "Order-2026/04:17_a.b@c");
        assert_eq!(stored.containers[0].customer_id, "customer@example.com");
    }

    /// A container of about `bytes` encoded bytes.
    fn container_of(bytes: usize) -> pb::Container {
        pb::Container {
            origin: "o".repeat(bytes.min(MAX_TEXT_LEN)),
            ..container("cust001")
        }
    }

    #[test]
    fn a_consignment_too_large_for_a_page_is_refused_as_resource_exhausted() {
        let mut wire = sample();
        wire.containers = vec![container_of(MAX_TEXT_LEN); usize::from(MAX_CONTAINERS)];
        assert!(wire.encoded_len() > MAX_CONSIGNMENT_BYTES);
        let status = tonic::Status::from(NewConsignment::parse(wire.clone()).unwrap_err());
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(
            status.message().contains("GetConsignments page"),
            "{}",
            status.message()
        );

        // Just under the limit, it is accepted, and with an assigned id and a
        // vessel it still fits a page on its own.
        let each = wire.encoded_len() / wire.containers.len();
        wire.containers.truncate(MAX_CONSIGNMENT_BYTES / each);
        while wire.encoded_len() > MAX_CONSIGNMENT_BYTES {
            wire.containers.pop();
        }
        assert!(wire.encoded_len() > MAX_CONSIGNMENT_BYTES - 2 * each);
        let stored: pb::Consignment = NewConsignment::parse(wire)
            .unwrap()
            .assign("vessel001".into())
            .into();
        let page = pb::Response {
            consignments: vec![stored],
            next_page_token: i64::MAX.to_string(),
            ..Default::default()
        };
        assert!(page.encoded_len() <= MAX_PAGE_BYTES);
    }

    #[test]
    fn the_most_containers_and_the_heaviest_weight_reach_the_vessel_request_unchanged() {
        let mut wire = sample();
        wire.weight = i32::MAX;
        wire.containers = vec![container("cust001"); usize::from(MAX_CONTAINERS)];
        let parsed = NewConsignment::parse(wire).unwrap();
        assert_eq!(
            parsed.vessel_specification(),
            vessel_pb::Specification {
                capacity: 10_000,
                max_weight: i32::MAX
            }
        );
        let stored: pb::Consignment = parsed.assign("v".into()).into();
        assert_eq!(stored.weight, i32::MAX);
    }

    #[test]
    fn weights_are_whole_kilograms_from_one_to_the_wires_maximum() {
        for kg in [1, 55_000, i64::from(i32::MAX)] {
            let weight = Weight::new(kg).unwrap();
            assert_eq!(i64::from(weight), kg);
            assert_eq!(i64::from(i32::from(weight)), kg);
        }
        for kg in [0, -1, i64::from(i32::MAX) + 1, i64::MIN, i64::MAX] {
            assert_eq!(Weight::new(kg), None, "{kg}");
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        fn any_container() -> impl Strategy<Value = pb::Container> {
            (".{0,4}", ".{0,6}", ".{0,6}", ".{0,6}").prop_map(
                |(id, customer_id, origin, user_id)| pb::Container {
                    id,
                    customer_id,
                    origin,
                    user_id,
                },
            )
        }

        proptest! {
            /// Any wire consignment is either refused with a named field or
            /// accepted with every invariant the store relies on.
            #[test]
            fn parsing_any_wire_consignment_is_safe(
                id in ".{0,8}",
                description in ".{0,8}",
                weight in any::<i32>(),
                containers in proptest::collection::vec(any_container(), 0..5),
            ) {
                let wire = pb::Consignment { id, description, weight, containers, vessel_id: String::new() };
                match NewConsignment::parse(wire.clone()) {
                    Ok(parsed) => {
                        prop_assert!(wire.weight > 0);
                        let spec = parsed.vessel_specification();
                        prop_assert_eq!(usize::try_from(spec.capacity).unwrap(), wire.containers.len());
                        prop_assert_eq!(spec.max_weight, wire.weight);
                        let stored = parsed.assign("v".into());
                        prop_assert!(!stored.id.is_empty());
                        let safe = |id: &str| id.chars().all(|c| c.is_ascii_alphanumeric() || ID_PUNCTUATION.contains(c));
                        prop_assert!(safe(&stored.id));
                        prop_assert!(stored.containers.iter().all(|c| safe(&c.id) && safe(&c.customer_id) && safe(&c.user_id)));
                        prop_assert!(stored.containers.iter().all(|c| !c.customer_id.is_empty()
                            && !c.origin.is_empty() && !c.user_id.is_empty()));
                    }
                    Err(ConsignmentError::InvalidArgument { field, .. }) => prop_assert!(!field.is_empty()),
                    Err(other) => prop_assert!(false, "unexpected error {other:?}"),
                }
            }
        }
    }
}
