//! The fleet and the rule for picking a vessel, free of gRPC and etcd.
//!
//! Capacities and weights are [`Quantity`]s: checked once where they come in
//! (a request, the fleet file) against the wire's int32 range, so a vessel
//! goes back on the wire without a conversion that can fail or saturate.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::error::VesselError;
use shippy_proto::vessel::v1 as pb;

/// A ship that can be assigned consignments.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vessel {
    /// Unique within the fleet, e.g. `vessel001`.
    pub id: String,
    /// Human-readable name.
    pub name: String,
    /// How many containers it carries.
    pub capacity: Quantity,
    /// The heaviest load it carries, in kilograms.
    pub max_weight: Quantity,
    /// Whether it can take consignments now.
    #[serde(default = "available_by_default")]
    pub available: bool,
    /// Who owns it; may be empty.
    #[serde(default)]
    pub owner_id: String,
}

fn available_by_default() -> bool {
    true
}

/// A number of containers or a weight in kilograms: from 0 to `i32::MAX`,
/// the range vessel.proto's int32 fields carry when not negative. Made only
/// by checking (a request's field, a fleet file's number), so converting
/// back to the wire's `i32`, or to a `u32`, is lossless by construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "i64")]
pub struct Quantity(i32);

impl TryFrom<i64> for Quantity {
    /// What a fleet file is told, after the field's name and position.
    type Error = String;

    fn try_from(value: i64) -> Result<Self, String> {
        i32::try_from(value)
            .ok()
            .filter(|value| *value >= 0)
            .map(Self)
            .ok_or_else(|| {
                format!(
                    "expected a whole number from 0 to {}, got {value}",
                    i32::MAX
                )
            })
    }
}

impl From<Quantity> for i32 {
    fn from(quantity: Quantity) -> Self {
        quantity.0
    }
}

impl From<Quantity> for u32 {
    fn from(quantity: Quantity) -> Self {
        // Never negative, so the absolute value is the value.
        quantity.0.unsigned_abs()
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What a load needs from a vessel, parsed from the wire at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Specification {
    /// Number of containers.
    pub capacity: Quantity,
    /// Total weight in kilograms.
    pub max_weight: Quantity,
}

impl Specification {
    /// Validates a wire specification: both numbers must be non-negative.
    pub fn parse(spec: &pb::Specification) -> Result<Self, VesselError> {
        let field = |field: &'static str, value: i32| {
            Quantity::try_from(i64::from(value)).map_err(|_| VesselError::InvalidSpec {
                field,
                reason: format!("must not be negative, got {value}"),
            })
        };
        Ok(Self {
            capacity: field("capacity", spec.capacity)?,
            max_weight: field("max_weight", spec.max_weight)?,
        })
    }
}

/// The vessels this instance knows.
#[derive(Debug, Clone)]
pub struct Fleet {
    /// Never empty, ids unique.
    vessels: Vec<Vessel>,
}

impl Fleet {
    /// A fleet from a list of vessels; ids must be unique and non-empty.
    pub fn new(vessels: Vec<Vessel>) -> anyhow::Result<Self> {
        if vessels.is_empty() {
            bail!("the fleet has no vessels");
        }
        let mut ids = BTreeSet::new();
        for vessel in &vessels {
            if vessel.id.trim().is_empty() {
                bail!("a vessel has an empty id");
            }
            if !ids.insert(vessel.id.as_str()) {
                bail!("vessel id {:?} appears twice", vessel.id);
            }
        }
        Ok(Self { vessels })
    }

    /// The fleet served when no fleet file is given: the tutorial's
    /// `vessel001` and a few others to choose from.
    pub fn builtin() -> Self {
        // Literals, all within Quantity's range.
        let vessel = |id: &str, name: &str, capacity, max_weight, available| Vessel {
            id: id.into(),
            name: name.into(),
            capacity: Quantity(capacity),
            max_weight: Quantity(max_weight),
            available,
            owner_id: "shippy".into(),
        };
        Self {
            vessels: vec![
                vessel("vessel001", "Boaty McBoatface", 500, 200_000, true),
                vessel("vessel002", "Little Dipper", 2, 30_000, true),
                vessel("vessel003", "Dry Dock Dora", 100, 100_000, false),
                vessel("vessel004", "Ever Ample", 20_000, 200_000_000, true),
            ],
        }
    }

    /// Reads a fleet from a JSON file holding an array of vessels.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read fleet file {}", path.display()))?;
        let vessels: Vec<Vessel> = serde_json::from_str(&text)
            .with_context(|| format!("fleet file {} is not a valid fleet", path.display()))?;
        Self::new(vessels).with_context(|| format!("fleet file {}", path.display()))
    }

    /// The smallest available vessel that carries `spec`: least capacity,
    /// then least max weight, then lowest id, so answers are deterministic and
    /// big ships stay free for big loads.
    pub fn find_available(&self, spec: Specification) -> Option<&Vessel> {
        self.vessels
            .iter()
            .filter(|vessel| {
                vessel.available
                    && vessel.capacity >= spec.capacity
                    && vessel.max_weight >= spec.max_weight
            })
            .min_by(|a, b| {
                (a.capacity, a.max_weight, &a.id).cmp(&(b.capacity, b.max_weight, &b.id))
            })
    }

    /// How many vessels there are.
    pub fn len(&self) -> usize {
        self.vessels.len()
    }

    /// Always false: a fleet has at least one vessel.
    pub fn is_empty(&self) -> bool {
        self.vessels.is_empty()
    }
}

impl From<&Vessel> for pb::Vessel {
    fn from(vessel: &Vessel) -> Self {
        Self {
            id: vessel.id.clone(),
            capacity: vessel.capacity.into(),
            max_weight: vessel.max_weight.into(),
            name: vessel.name.clone(),
            available: vessel.available,
            owner_id: vessel.owner_id.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(capacity: i32, max_weight: i32) -> Specification {
        Specification::parse(&pb::Specification {
            capacity,
            max_weight,
        })
        .unwrap()
    }

    fn vessel(id: &str, capacity: i32, max_weight: i32) -> Vessel {
        Vessel {
            id: id.into(),
            name: id.into(),
            capacity: Quantity(capacity),
            max_weight: Quantity(max_weight),
            available: true,
            owner_id: String::new(),
        }
    }

    #[test]
    fn the_tutorial_consignment_goes_to_boaty_mcboatface() {
        let fleet = Fleet::builtin();
        let found = fleet.find_available(spec(3, 55_000)).unwrap();
        assert_eq!(found.id, "vessel001");
        assert_eq!(found.name, "Boaty McBoatface");
    }

    #[test]
    fn the_smallest_vessel_that_fits_wins() {
        let fleet = Fleet::new(vec![
            vessel("big", 100, 1_000),
            vessel("small", 10, 1_000),
            vessel("tiny", 1, 1_000),
        ])
        .unwrap();
        assert_eq!(fleet.find_available(spec(5, 500)).unwrap().id, "small");
    }

    #[test]
    fn ties_are_broken_by_id() {
        let fleet = Fleet::new(vec![vessel("b", 10, 10), vessel("a", 10, 10)]).unwrap();
        assert_eq!(fleet.find_available(spec(1, 1)).unwrap().id, "a");
    }

    #[test]
    fn limits_are_inclusive_and_both_must_hold() {
        let fleet = Fleet::new(vec![vessel("v", 10, 100)]).unwrap();
        assert!(fleet.find_available(spec(10, 100)).is_some());
        assert!(fleet.find_available(spec(11, 100)).is_none());
        assert!(fleet.find_available(spec(10, 101)).is_none());
    }

    #[test]
    fn unavailable_vessels_are_never_picked() {
        let mut docked = vessel("docked", 10, 100);
        docked.available = false;
        let fleet = Fleet::new(vec![docked, vessel("free", 50, 500)]).unwrap();
        assert_eq!(fleet.find_available(spec(1, 1)).unwrap().id, "free");
    }

    #[test]
    fn negative_specifications_are_rejected_by_field() {
        let err = Specification::parse(&pb::Specification {
            capacity: 1,
            max_weight: -5,
        })
        .unwrap_err();
        assert!(err.to_string().contains("max_weight"), "{err}");
        assert!(
            Specification::parse(&pb::Specification {
                capacity: -1,
                max_weight: 0
            })
            .unwrap_err()
            .to_string()
            .contains("capacity")
        );
    }

    #[test]
    fn the_largest_vessel_goes_back_on_the_wire_unchanged() {
        let fleet = Fleet::new(vec![vessel("max", i32::MAX, i32::MAX)]).unwrap();
        let found = fleet.find_available(spec(i32::MAX, i32::MAX)).unwrap();
        let wire = pb::Vessel::from(found);
        assert_eq!((wire.capacity, wire.max_weight), (i32::MAX, i32::MAX));
        assert_eq!(u32::from(found.capacity), 2_147_483_647);
    }

    #[test]
    fn fleets_need_unique_non_empty_ids() {
        assert!(Fleet::new(vec![]).is_err());
        assert!(Fleet::new(vec![vessel("a", 1, 1), vessel("a", 2, 2)]).is_err());
        assert!(Fleet::new(vec![vessel(" ", 1, 1)]).is_err());
    }

    #[test]
    fn a_fleet_file_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.json");
        std::fs::write(
            &good,
            r#"[{"id":"x1","name":"X","capacity":5,"max_weight":10}]"#,
        )
        .unwrap();
        let fleet = Fleet::load(&good).unwrap();
        assert_eq!(fleet.find_available(spec(5, 10)).unwrap().id, "x1");

        let typo = dir.path().join("typo.json");
        std::fs::write(
            &typo,
            r#"[{"id":"x1","name":"X","capacity":5,"max_wieght":10}]"#,
        )
        .unwrap();
        let err = format!("{:#}", Fleet::load(&typo).unwrap_err());
        assert!(err.contains("max_wieght"), "{err}");

        // The wire carries int32: a larger fleet file number is refused at
        // start, not clamped when the vessel is sent.
        for (number, shown) in [("3000000000", "got 3000000000"), ("-3", "got -3")] {
            let big = dir.path().join("big.json");
            std::fs::write(
                &big,
                format!(r#"[{{"id":"x1","name":"X","capacity":5,"max_weight":{number}}}]"#),
            )
            .unwrap();
            let err = format!("{:#}", Fleet::load(&big).unwrap_err());
            assert!(err.contains(shown) && err.contains("big.json"), "{err}");
        }
    }
}
