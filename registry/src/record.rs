//! The registry's data layout: where an instance's record lives in etcd and
//! what the record holds.
//!
//! Every running instance owns one key:
//!
//! ```text
//! <prefix>/<service-name>/<instance-id>  →  {"name":…,"id":…,"address":"host:port","metadata":{…}}
//! ```
//!
//! The prefix defaults to [`DEFAULT_PREFIX`]. An instance's identity is taken
//! from its key, never from the value, so a record whose JSON is damaged can
//! still be removed by key.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where service records live unless configured otherwise.
pub const DEFAULT_PREFIX: &str = "/shippy/services";

/// The JSON value stored under an instance's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// The service name the instance registered under, e.g. `shippy.service.vessel`.
    pub name: String,
    /// Unique per process, so two replicas of one service never share a key.
    pub id: String,
    /// Where callers reach the instance, as `host:port`. Never an unspecified
    /// address such as `0.0.0.0`, which no caller could dial.
    pub address: AdvertiseAddr,
    /// Free-form facts about the instance (version, protocol) for operators.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// One live instance as discovery sees it: its key and its decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// The full etcd key, which identifies the instance.
    pub key: String,
    /// The decoded value.
    pub record: ServiceRecord,
}

/// Why a stored record could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The key is not under the service's prefix or has no instance id.
    #[error("key {key:?} is not of the form {prefix}<instance-id>")]
    BadKey {
        /// The offending key, lossily decoded.
        key: String,
        /// The prefix it was expected under.
        prefix: String,
    },
    /// The value is not a valid JSON record.
    #[error("record under {key} is not valid JSON: {source}")]
    BadJson {
        /// The key whose value failed to parse.
        key: String,
        /// The parse failure.
        source: serde_json::Error,
    },
}

/// The registry's key layout under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpace {
    /// The prefix without a trailing slash, e.g. `/shippy/services`.
    prefix: String,
}

impl KeySpace {
    /// A key space rooted at `prefix`; trailing slashes are ignored.
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.trim_end_matches('/').to_owned(),
        }
    }

    /// The prefix shared by every instance of `service`, with a trailing slash
    /// so that `svc` never matches the keys of `svc2`.
    pub fn service_prefix(&self, service: &str) -> String {
        format!("{}/{service}/", self.prefix)
    }

    /// The prefix shared by every service's instances.
    pub fn all_services_prefix(&self) -> String {
        format!("{}/", self.prefix)
    }

    /// The key an instance registers under.
    pub fn instance_key(&self, service: &str, instance_id: &str) -> String {
        format!("{}{instance_id}", self.service_prefix(service))
    }
}

impl ServiceRecord {
    /// Encodes the record as the JSON stored in etcd.
    pub fn to_json(&self) -> String {
        // Serialising a struct of strings and a string map cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Decodes one key/value pair read from under `service_prefix`.
///
/// The instance id comes from the key; the value must be a JSON
/// [`ServiceRecord`] whose address is dialable.
pub fn decode_instance(
    service_prefix: &str,
    key: &[u8],
    value: &[u8],
) -> Result<Instance, RecordError> {
    let key = instance_key_from(service_prefix, key)?;
    let record = serde_json::from_slice(value).map_err(|source| RecordError::BadJson {
        key: key.clone(),
        source,
    })?;
    Ok(Instance { key, record })
}

/// Checks that `key` names one instance under `service_prefix` and returns it
/// as a string.
pub fn instance_key_from(service_prefix: &str, key: &[u8]) -> Result<String, RecordError> {
    let bad_key = || RecordError::BadKey {
        key: String::from_utf8_lossy(key).into_owned(),
        prefix: service_prefix.to_owned(),
    };
    let key = std::str::from_utf8(key).map_err(|_| bad_key())?;
    match key.strip_prefix(service_prefix) {
        Some(id) if !id.is_empty() && !id.contains('/') => Ok(key.to_owned()),
        _ => Err(bad_key()),
    }
}

/// A `host:port` that other processes can dial.
///
/// Parsing rejects unspecified hosts (`0.0.0.0`, `::`), because a registry
/// entry pointing at them sends every caller to its own machine.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AdvertiseAddr {
    /// Host name or IP literal, without IPv6 brackets.
    host: String,
    /// TCP port, never 0.
    port: u16,
}

/// Why a string is not a usable advertise address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    /// No `:port` suffix.
    #[error("{0:?} is not host:port")]
    MissingPort(String),
    /// The port is not a number from 1 to 65535.
    #[error("{0:?} has no valid port (1-65535)")]
    BadPort(String),
    /// The host part is empty or malformed.
    #[error("{0:?} has no valid host")]
    BadHost(String),
    /// The host is 0.0.0.0 or ::, which no caller can dial.
    #[error(
        "{0:?} is an unspecified address; advertise an address other processes can reach, e.g. 127.0.0.1 or a DNS name"
    )]
    Unspecified(String),
}

impl AdvertiseAddr {
    /// An address from a host and a port, with the same checks as parsing.
    pub fn new(host: &str, port: u16) -> Result<Self, AddrError> {
        let text = format_host_port(host, port);
        if port == 0 {
            return Err(AddrError::BadPort(text));
        }
        if host.is_empty()
            || host
                .chars()
                .any(|c| c.is_whitespace() || matches!(c, '/' | '@' | '?' | '#' | '[' | ']'))
        {
            return Err(AddrError::BadHost(text));
        }
        if host.parse::<IpAddr>().is_ok_and(|ip| ip.is_unspecified()) {
            return Err(AddrError::Unspecified(text));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }

    /// The host part, without IPv6 brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port part.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address as an `http://` URI for a plaintext gRPC channel.
    pub fn http_uri(&self) -> String {
        format!("http://{self}")
    }
}

fn format_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

impl FromStr for AdvertiseAddr {
    type Err = AddrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| AddrError::MissingPort(text.to_owned()))?;
        let port: u16 = port
            .parse()
            .map_err(|_| AddrError::BadPort(text.to_owned()))?;
        let host = match host.strip_prefix('[') {
            Some(inner) => inner
                .strip_suffix(']')
                .ok_or_else(|| AddrError::BadHost(text.to_owned()))?,
            None if host.contains(':') => return Err(AddrError::BadHost(text.to_owned())),
            None => host,
        };
        Self::new(host, port)
    }
}

impl TryFrom<String> for AdvertiseAddr {
    type Error = AddrError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<AdvertiseAddr> for String {
    fn from(addr: AdvertiseAddr) -> Self {
        addr.to_string()
    }
}

impl fmt::Display for AdvertiseAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_host_port(&self.host, self.port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(address: &str) -> ServiceRecord {
        ServiceRecord {
            name: "shippy.service.vessel".into(),
            id: "abc".into(),
            address: address.parse().unwrap(),
            metadata: BTreeMap::from([("version".into(), "0.1.0".into())]),
        }
    }

    #[test]
    fn keys_follow_the_documented_layout() {
        let space = KeySpace::new("/shippy/services/");
        assert_eq!(
            space.instance_key("shippy.service.vessel", "abc"),
            "/shippy/services/shippy.service.vessel/abc"
        );
        assert_eq!(
            space.service_prefix("shippy.service.vessel"),
            "/shippy/services/shippy.service.vessel/"
        );
    }

    #[test]
    fn a_record_survives_a_round_trip_through_etcd_bytes() {
        let space = KeySpace::new(DEFAULT_PREFIX);
        let prefix = space.service_prefix("shippy.service.vessel");
        let key = space.instance_key("shippy.service.vessel", "abc");
        let original = record("10.1.2.3:50052");

        let decoded = decode_instance(&prefix, key.as_bytes(), original.to_json().as_bytes())
            .expect("decodes");

        assert_eq!(decoded.key, key);
        assert_eq!(decoded.record, original);
    }

    #[test]
    fn the_json_layout_is_stable() {
        let json: serde_json::Value =
            serde_json::from_str(&record("vessel:50052").to_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "name": "shippy.service.vessel",
                "id": "abc",
                "address": "vessel:50052",
                "metadata": {"version": "0.1.0"}
            })
        );
    }

    #[test]
    fn unknown_fields_from_newer_writers_are_tolerated() {
        let value = br#"{"name":"s","id":"i","address":"h:1","zone":"eu-1"}"#;
        let decoded = decode_instance("/p/s/", b"/p/s/i", value).expect("decodes");
        assert_eq!(decoded.record.address.to_string(), "h:1");
        assert!(decoded.record.metadata.is_empty());
    }

    #[test]
    fn damaged_records_are_rejected_with_the_key_named() {
        let cases: [(&[u8], &[u8]); 5] = [
            (b"/p/s/i", b"not json"),
            (
                b"/p/s/i",
                br#"{"name":"s","id":"i","address":"0.0.0.0:80"}"#,
            ),
            (b"/p/s/i", br#"{"name":"s","id":"i","address":"nohost"}"#),
            (b"/p/s/i", br#"{"name":"s","id":"i","address":"h:0"}"#),
            (b"/p/s/i", br#"{"name":"s","address":"h:1"}"#),
        ];
        for (key, value) in cases {
            let err = decode_instance("/p/s/", key, value).unwrap_err();
            assert!(err.to_string().contains("/p/s/i"), "{err}");
        }
    }

    #[test]
    fn keys_outside_one_instance_slot_are_rejected() {
        for key in [&b"/p/s/"[..], b"/p/s/i/extra", b"/p/other/i", b"/p/s/\xff"] {
            assert!(
                instance_key_from("/p/s/", key).is_err(),
                "{}",
                String::from_utf8_lossy(key)
            );
        }
    }

    #[test]
    fn advertise_addresses_must_be_dialable() {
        assert_eq!(
            "127.0.0.1:50052".parse::<AdvertiseAddr>().unwrap().port(),
            50052
        );
        assert_eq!(
            "[::1]:50052".parse::<AdvertiseAddr>().unwrap().host(),
            "::1"
        );
        assert_eq!(
            "vessel-service:50052"
                .parse::<AdvertiseAddr>()
                .unwrap()
                .http_uri(),
            "http://vessel-service:50052"
        );
        for bad in [
            "0.0.0.0:1",
            "[::]:1",
            "host",
            "host:99999",
            ":80",
            "::1:80",
            "a b:1",
        ] {
            assert!(
                bad.parse::<AdvertiseAddr>().is_err(),
                "{bad} should be rejected"
            );
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        proptest! {
            /// Whatever etcd holds, decoding never panics, and what it
            /// accepts is a dialable address under the right prefix.
            #[test]
            fn decoding_any_bytes_is_safe(key in proptest::collection::vec(any::<u8>(), 0..64),
                                          value in proptest::collection::vec(any::<u8>(), 0..256)) {
                if let Ok(instance) = decode_instance("/p/s/", &key, &value) {
                    prop_assert!(instance.key.starts_with("/p/s/"));
                    prop_assert!(instance.record.address.port() != 0);
                }
            }

            /// JSON-shaped junk is refused or decoded, never a panic.
            #[test]
            fn decoding_json_shaped_values_is_safe(name in ".{0,12}", address in ".{0,24}", extra in ".{0,12}") {
                let value = serde_json::json!({"name": name, "id": "i", "address": address, "x": extra});
                let decoded = decode_instance("/p/s/", b"/p/s/i", value.to_string().as_bytes());
                if let Ok(instance) = decoded {
                    prop_assert_eq!(instance.record.address.to_string().parse::<AdvertiseAddr>().ok(),
                                    Some(instance.record.address.clone()));
                }
            }

            /// Every record a service writes is read back unchanged.
            #[test]
            fn records_round_trip(host in "[a-z][a-z0-9.-]{0,20}", port in 1u16.., id in "[a-f0-9]{1,32}",
                                  metadata in proptest::collection::btree_map("[a-z]{1,8}", ".{0,16}", 0..4)) {
                let record = ServiceRecord {
                    name: "svc".into(),
                    id: id.clone(),
                    address: AdvertiseAddr::new(&host, port).unwrap(),
                    metadata,
                };
                let key = KeySpace::new("/p").instance_key("svc", &id);
                let decoded = decode_instance("/p/svc/", key.as_bytes(), record.to_json().as_bytes()).unwrap();
                prop_assert_eq!(decoded.record, record);
            }
        }
    }
}
