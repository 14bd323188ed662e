//! Deterministic time: the transaction timestamp, RFC 3339 text, and
//! fixed-width sort keys.
//!
//! The contract never reads a clock; "now" is the proposal's timestamp. Times
//! are written as RFC 3339 UTC with `Z` (`2025-01-31T12:00:00Z`, with a
//! fraction of 3, 6 or 9 digits only when the time has one). Inputs are
//! parsed strictly: `YYYY-MM-DDTHH:MM:SS[.f{1,9}](Z|±HH:MM)`, uppercase `T`
//! and `Z`, no leap second; an offset is converted to UTC. The supported
//! range is 1970-01-01T00:00:00Z ..= 9999-12-31T23:59:59.999999999Z.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::stub::TxTimestamp;

/// Seconds of 9999-12-31T23:59:59Z.
const MAX_SECS: i64 = 253_402_300_799;

/// An instant, UTC, nanosecond precision, within the supported range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time {
    secs: i64,
    nanos: u32,
}

impl Time {
    /// Builds a time from Unix seconds and nanoseconds, if in range.
    pub fn from_unix(secs: i64, nanos: u32) -> Option<Self> {
        ((0..=MAX_SECS).contains(&secs) && nanos < 1_000_000_000).then_some(Self { secs, nanos })
    }

    /// The transaction's timestamp as a time (None if out of range).
    pub fn from_tx(ts: TxTimestamp) -> Option<Self> {
        u32::try_from(ts.nanos)
            .ok()
            .and_then(|n| Self::from_unix(ts.seconds, n))
    }

    /// Unix seconds.
    pub fn unix_secs(self) -> i64 {
        self.secs
    }

    /// Nanoseconds within the second.
    pub fn subsec_nanos(self) -> u32 {
        self.nanos
    }

    /// A 21-digit key whose byte order is time order: 12 digits of seconds
    /// then 9 of nanoseconds.
    pub fn sort_key(self) -> String {
        format!("{:012}{:09}", self.secs, self.nanos)
    }

    /// RFC 3339 UTC text with `Z`.
    pub fn to_rfc3339(self) -> String {
        let days = self.secs.div_euclid(86_400);
        let sod = self.secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        let (hh, mm, ss) = (sod / 3600, (sod / 60) % 60, sod % 60);
        let frac = match self.nanos {
            0 => String::new(),
            n if n % 1_000_000 == 0 => format!(".{:03}", n / 1_000_000),
            n if n % 1_000 == 0 => format!(".{:06}", n / 1_000),
            n => format!(".{n:09}"),
        };
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}{frac}Z")
    }

    /// Parses strict RFC 3339 (see the module docs).
    pub fn parse_rfc3339(s: &str) -> Result<Self, String> {
        parse(s.as_bytes()).ok_or_else(|| {
            format!(
                "{s:?} is not an RFC 3339 time like 2025-01-31T12:00:00Z within years 1970-9999"
            )
        })
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Time::parse_rfc3339(&s).map_err(serde::de::Error::custom)
    }
}

fn digits(b: &[u8]) -> Option<u32> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    b.iter().try_fold(0u32, |acc, &d| {
        acc.checked_mul(10)?.checked_add(u32::from(d - b'0'))
    })
}

fn parse(b: &[u8]) -> Option<Time> {
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let year = digits(&b[0..4])?;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    let hour = digits(&b[11..13])?;
    let minute = digits(&b[14..16])?;
    let second = digits(&b[17..19])?;
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let mut rest = &b[19..];
    let mut nanos = 0u32;
    if rest.first() == Some(&b'.') {
        let n = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if !(1..=9).contains(&n) {
            return None;
        }
        nanos = digits(&rest[1..=n])? * 10u32.pow(9 - n as u32);
        rest = &rest[1 + n..];
    }
    let offset_secs: i64 = match rest {
        [b'Z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let oh = digits(&[*h1, *h2])?;
            let om = digits(&[*m1, *m2])?;
            if oh > 23 || om > 59 {
                return None;
            }
            let o = i64::from(oh * 3600 + om * 60);
            if *sign == b'-' { -o } else { o }
        }
        _ => return None,
    };
    let days = days_from_civil(i64::from(year), month, day);
    let local = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second);
    Time::from_unix(local - offset_secs, nanos)
}

fn is_leap(y: u32) -> bool {
    (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400)
}

fn days_in_month(y: u32, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(y) => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01 (inverse of `days_from_civil`).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(secs: i64, nanos: u32) -> Time {
        Time::from_unix(secs, nanos).unwrap()
    }

    #[test]
    fn known_instants() {
        assert_eq!(t(0, 0).to_rfc3339(), "1970-01-01T00:00:00Z");
        assert_eq!(t(951_782_400, 0).to_rfc3339(), "2000-02-29T00:00:00Z");
        assert_eq!(
            t(1_700_000_000, 5_000_000).to_rfc3339(),
            "2023-11-14T22:13:20.005Z"
        );
        assert_eq!(
            t(1_700_000_000, 1_000).to_rfc3339(),
            "2023-11-14T22:13:20.000001Z"
        );
        assert_eq!(
            t(1_700_000_000, 7).to_rfc3339(),
            "2023-11-14T22:13:20.000000007Z"
        );
        assert_eq!(t(MAX_SECS, 0).to_rfc3339(), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn parses_strictly() {
        let p = |s| Time::parse_rfc3339(s);
        assert_eq!(p("2023-11-14T22:13:20Z").unwrap(), t(1_700_000_000, 0));
        assert_eq!(
            p("2023-11-14T22:13:20.5Z").unwrap(),
            t(1_700_000_000, 500_000_000)
        );
        assert_eq!(p("2023-11-15T00:13:20+02:00").unwrap(), t(1_700_000_000, 0));
        assert_eq!(p("2023-11-14T21:13:20-01:00").unwrap(), t(1_700_000_000, 0));
        for bad in [
            "2023-11-14 22:13:20Z",
            "2023-11-14t22:13:20Z",
            "2023-11-14T22:13:20z",
            "2023-11-14T22:13:20",
            "2023-11-14T22:13:60Z",
            "2023-02-29T00:00:00Z",
            "2023-13-01T00:00:00Z",
            "2023-11-14T24:00:00Z",
            "2023-11-14T22:13:20.Z",
            "2023-11-14T22:13:20.1234567890Z",
            "2023-11-14T22:13:20+0200",
            "1969-12-31T23:59:59Z",
            "+2023-11-14T22:13:20Z",
            "２０23-11-14T22:13:20Z",
            "",
        ] {
            assert!(p(bad).is_err(), "{bad}");
        }
        assert!(p("2024-02-29T00:00:00Z").is_ok());
        assert!(
            p("1970-01-01T00:30:00+01:00").is_err(),
            "before the epoch in UTC"
        );
    }

    #[test]
    fn serde_round_trip() {
        let v = serde_json::to_string(&t(1_700_000_000, 0)).unwrap();
        assert_eq!(v, "\"2023-11-14T22:13:20Z\"");
        let back: Time = serde_json::from_str(&v).unwrap();
        assert_eq!(back, t(1_700_000_000, 0));
        assert!(serde_json::from_str::<Time>("\"yesterday\"").is_err());
    }

    #[test]
    fn tx_timestamp_range() {
        assert!(
            Time::from_tx(TxTimestamp {
                seconds: -1,
                nanos: 0
            })
            .is_none()
        );
        assert!(
            Time::from_tx(TxTimestamp {
                seconds: 1,
                nanos: -1
            })
            .is_none()
        );
        assert!(
            Time::from_tx(TxTimestamp {
                seconds: 1,
                nanos: 1_000_000_000
            })
            .is_none()
        );
        assert_eq!(
            Time::from_tx(TxTimestamp {
                seconds: 5,
                nanos: 6
            }),
            Some(t(5, 6))
        );
    }

    proptest! {
        #[test]
        fn format_parse_round_trip(secs in 0..=MAX_SECS, nanos in 0u32..1_000_000_000) {
            let x = t(secs, nanos);
            prop_assert_eq!(Time::parse_rfc3339(&x.to_rfc3339()).unwrap(), x);
        }

        #[test]
        fn sort_key_order_is_time_order(a in 0..=MAX_SECS, an in 0u32..1_000_000_000,
                                        b in 0..=MAX_SECS, bn in 0u32..1_000_000_000) {
            let (x, y) = (t(a, an), t(b, bn));
            prop_assert_eq!(x.sort_key().len(), 21);
            prop_assert_eq!(x.cmp(&y), x.sort_key().cmp(&y.sort_key()));
        }
    }
}
