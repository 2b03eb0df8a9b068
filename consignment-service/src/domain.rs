//! Consignments as the service understands them, parsed from the wire at the
//! edge so that everything past the handler works with valid data only.

use std::collections::BTreeSet;

use shippy_proto::consignment::v1 as pb;

use crate::error::ConsignmentError;
use crate::repository::PageRequest;

/// The longest id (consignment, container, customer, user) accepted.
pub const MAX_ID_LEN: usize = 128;
/// The longest description or origin accepted.
pub const MAX_TEXT_LEN: usize = 1024;
/// The most containers one consignment may hold.
pub const MAX_CONTAINERS: usize = 10_000;

/// One container of a consignment.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// Total weight in kilograms, above zero.
    pub weight: u32,
    /// At least one.
    pub containers: Vec<Container>,
    /// The vessel vessel-service assigned.
    pub vessel_id: String,
}

/// A validated CreateConsignment request, before a vessel is assigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewConsignment {
    /// The caller's id, or `None` to have one assigned.
    id: Option<String>,
    description: String,
    weight: u32,
    containers: Vec<Container>,
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
        let weight = u32::try_from(wire.weight)
            .ok()
            .filter(|weight| *weight > 0)
            .ok_or_else(|| {
                ConsignmentError::invalid(
                    "weight",
                    format!("must be above 0 kg, got {}", wire.weight),
                )
            })?;
        if wire.containers.is_empty() {
            return Err(ConsignmentError::invalid(
                "containers",
                "a consignment needs at least one container",
            ));
        }
        if wire.containers.len() > MAX_CONTAINERS {
            return Err(ConsignmentError::invalid(
                "containers",
                format!(
                    "at most {MAX_CONTAINERS} containers, got {}",
                    wire.containers.len()
                ),
            ));
        }
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
        })
    }

    /// What a vessel must carry for this consignment.
    pub fn vessel_specification(&self) -> shippy_proto::vessel::v1::Specification {
        shippy_proto::vessel::v1::Specification {
            capacity: i32::try_from(self.container_count()).unwrap_or(i32::MAX),
            max_weight: i32::try_from(self.weight).unwrap_or(i32::MAX),
        }
    }

    /// How many containers need carrying.
    pub fn container_count(&self) -> u32 {
        // Bounded by MAX_CONTAINERS at parse time.
        u32::try_from(self.containers.len()).unwrap_or(u32::MAX)
    }

    /// The total weight in kilograms.
    pub fn weight(&self) -> u32 {
        self.weight
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
            weight: i32::try_from(consignment.weight).unwrap_or(i32::MAX),
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
    let limit = match request.page_size {
        0 => None,
        size if size < 0 => {
            return Err(ConsignmentError::invalid(
                "page_size",
                "must not be negative",
            ));
        }
        size => Some(
            u32::try_from(size)
                .unwrap_or(MAX_PAGE_SIZE)
                .min(MAX_PAGE_SIZE),
        ),
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
    use shippy_test_support::fixtures::sample_consignment as sample;

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
        assert_eq!(parsed.container_count(), 3);
        assert_eq!(parsed.weight(), 55_000);

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

        for (wire, field) in cases {
            assert_eq!(rejected_field(wire), field);
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
                        prop_assert_eq!(parsed.container_count() as usize, wire.containers.len());
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
