//! The `grpc-timeout` header: how long a caller gives a call.

use std::time::Duration;

use tonic::codegen::http::{HeaderMap, HeaderValue};

/// The header's name.
pub const HEADER: &str = "grpc-timeout";

/// The most digits gRPC allows in the value.
const MAX_AMOUNT: u128 = 99_999_999;

/// The timeout in `headers`, when they carry a valid one.
pub fn from_headers(headers: &HeaderMap) -> Option<Duration> {
    parse(headers.get(HEADER)?.to_str().ok()?)
}

/// `timeout` as a header value, in the finest unit that fits gRPC's eight
/// digits (so microseconds for anything under 100 s).
pub fn encode(timeout: Duration) -> HeaderValue {
    let units: [(u128, &str); 4] = [
        (timeout.as_micros(), "u"),
        (timeout.as_millis(), "m"),
        (u128::from(timeout.as_secs()), "S"),
        (u128::from(timeout.as_secs() / 3600), "H"),
    ];
    let (amount, unit) = units
        .into_iter()
        .find(|(amount, _)| *amount <= MAX_AMOUNT)
        .unwrap_or((MAX_AMOUNT, "H"));
    HeaderValue::from_str(&format!("{amount}{unit}"))
        .unwrap_or_else(|_| HeaderValue::from_static("99999999H"))
}

/// Parses a `grpc-timeout` value: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse(value: &str) -> Option<Duration> {
    let split = value.len().checked_sub(1)?;
    let (digits, unit) = value.split_at_checked(split)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        let cases = [
            ("1H", Duration::from_secs(3600)),
            ("2M", Duration::from_secs(120)),
            ("3S", Duration::from_secs(3)),
            ("250m", Duration::from_millis(250)),
            ("7u", Duration::from_micros(7)),
            ("99999999n", Duration::from_nanos(99_999_999)),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(text), Some(expected), "{text}");
        }
    }

    #[test]
    fn encoded_timeouts_parse_back_within_a_unit() {
        let cases = [
            (Duration::from_millis(1500), Duration::from_millis(1500)),
            (Duration::from_secs(200), Duration::from_millis(200_000)),
            (Duration::from_secs(400_000), Duration::from_secs(400_000)),
            (Duration::MAX, Duration::from_secs(99_999_999 * 3600)),
        ];
        for (timeout, expected) in cases {
            let value = encode(timeout);
            assert_eq!(parse(value.to_str().unwrap()), Some(expected), "{value:?}");
        }
    }

    #[test]
    fn malformed_grpc_timeouts_are_ignored() {
        for text in ["", "S", "10", "10x", "123456789S", "-1S", "1.5S", "１S"] {
            assert_eq!(parse(text), None, "{text}");
        }
    }
}
