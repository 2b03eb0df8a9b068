//! Consignments as the service understands them, parsed from the wire at the
//! edge so that everything past the handler works with valid data only.
//!
//! Numbers are checked once, where they come in, into types whose range
//! fits the wire's int32: [`Weight`] and the container count. Going back out
//! (a response, the FindAvailable request, a stored row) is then a `From`
//! conversion that cannot fail or saturate.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use shippy_proto::consignment::v1 as pb;
use shippy_proto::vessel::v1 as vessel_pb;

use crate::error::ConsignmentError;
use crate::repository::PageRequest;

/// The longest id (consignment, container, customer, user) accepted.
pub const MAX_ID_LEN: usize = 128;
/// The longest description or origin accepted.
pub const MAX_TEXT_LEN: usize = 1024;
/// The most containers one consignment may hold. A `u16`, so a count within
/// it is the wire's int32 capacity without a fallible conversion.
pub const MAX_CONTAINERS: u16 = 10_000;

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
        let id = match wire.id.trim() {
            "" => None,
            id => Some(bounded("id", id, MAX_ID_LEN)?.to_owned()),
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
    let required = |name: &str, value: &str, max: usize| -> Result<String, ConsignmentError> {
        let value = value.trim();
        if value.is_empty() {
            return Err(ConsignmentError::invalid(field(name), "must not be empty"));
        }
        Ok(bounded(&field(name), value, max)?.to_owned())
    };
    Ok(Container {
        id: bounded(&field("id"), wire.id.trim(), MAX_ID_LEN)?.to_owned(),
        customer_id: required("customer_id", &wire.customer_id, MAX_ID_LEN)?,
        origin: required("origin", &wire.origin, MAX_TEXT_LEN)?,
        user_id: required("user_id", &wire.user_id, MAX_ID_LEN)?,
    })
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

/// The most consignments one GetConsignments page holds; larger page sizes
/// are reduced to it.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// The consignments a GetConsignments request asks for: `page_size` 0 means
/// all of them (the original API); `page_token` continues after a previous
/// page.
pub fn page_request(request: &pb::GetRequest) -> Result<PageRequest, ConsignmentError> {
    let limit = match u32::try_from(request.page_size) {
        Err(_) => {
            return Err(ConsignmentError::invalid(
                "page_size",
                "must not be negative",
            ));
        }
        Ok(0) => None,
        Ok(size) => Some(size.min(MAX_PAGE_SIZE)),
    };
    let after = match request.page_token.as_str() {
        "" => None,
        token => Some(
            token
                .parse::<i64>()
                .ok()
                .filter(|seq| *seq > 0)
                .ok_or_else(|| {
                    ConsignmentError::invalid(
                        "page_token",
                        "not a token from a previous GetConsignments response",
                    )
                })?,
        ),
    };
    Ok(PageRequest { after, limit })
}

/// The `next_page_token` for a page that ends at `next_after`; empty when
/// nothing follows.
pub fn next_page_token(next_after: Option<i64>) -> String {
    next_after.map(|seq| seq.to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use shippy_test_support::fixtures::{container, sample_consignment as sample};

    use super::*;

    fn get(page_size: i32, page_token: &str) -> pb::GetRequest {
        pb::GetRequest {
            page_size,
            page_token: page_token.into(),
        }
    }

    #[test]
    fn paging_requests_are_read_and_checked() {
        assert_eq!(page_request(&get(0, "")).unwrap(), PageRequest::default());
        assert_eq!(
            page_request(&get(10, "42")).unwrap(),
            PageRequest {
                after: Some(42),
                limit: Some(10)
            }
        );
        assert_eq!(
            page_request(&get(i32::MAX, "")).unwrap().limit,
            Some(MAX_PAGE_SIZE)
        );
        for (request, field) in [
            (get(-1, ""), "page_size"),
            (get(1, "abc"), "page_token"),
            (get(1, "0"), "page_token"),
            (get(1, "-5"), "page_token"),
        ] {
            let status = tonic::Status::from(page_request(&request).unwrap_err());
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(status.message().contains(field), "{}", status.message());
        }
        assert_eq!(next_page_token(Some(7)), "7");
        assert_eq!(next_page_token(None), "");
    }

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
