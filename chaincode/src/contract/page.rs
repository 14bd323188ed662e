//! Paginated range scans with filtering.
//!
//! A page is built by scanning `[start, end)` in chunks and keeping the
//! entries a filter accepts, until `limit` are kept. The **bookmark** is the
//! key to resume from, hex-encoded: opaque to clients, and validated on the
//! way back in (it must lie inside the same query's range, so a bookmark
//! cannot be used to read outside what the query — and the caller's
//! visibility — allows). A bookmark is returned only when another matching
//! entry exists, or when the scan budget ran out first (then the page may
//! hold fewer than `limit` entries, even none; keep following bookmarks).

use serde::Deserialize;

use super::error::ContractError;
use crate::stub::{Kv, Stub};

/// The argument of the per-patient list functions (`ListRecords`,
/// `ListConsents`): a patient and a page.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatientPageArgs {
    pub patient_id: String,
    #[serde(default)]
    pub limit: Option<u32>,
    #[serde(default)]
    pub bookmark: Option<String>,
}

/// The default page size.
pub const DEFAULT_LIMIT: u32 = 100;
/// The largest page size.
pub const MAX_LIMIT: u32 = 1000;
/// How many entries one call examines at most (bounds the cost of a
/// selective filter over a large index).
pub const SCAN_BUDGET: usize = 10_000;
/// Entries fetched per range query.
const CHUNK: u32 = 256;
/// The longest bookmark accepted.
const MAX_BOOKMARK_LEN: usize = 2048;

/// Checks a requested page size (1..=1000, default 100).
pub fn limit(requested: Option<u32>) -> Result<usize, ContractError> {
    match requested.unwrap_or(DEFAULT_LIMIT) {
        l @ 1..=MAX_LIMIT => Ok(l as usize),
        l => Err(ContractError::invalid(format!(
            "limit must be 1-{MAX_LIMIT} (got {l})"
        ))),
    }
}

/// The opaque form of a resume key.
pub fn encode_bookmark(key: &str) -> String {
    hex::encode(key.as_bytes())
}

/// The resume key of a bookmark, which must lie in `[start, end)`.
pub fn decode_bookmark(bookmark: &str, start: &str, end: &str) -> Result<String, ContractError> {
    let bad = || ContractError::invalid("bookmark is malformed or belongs to another query");
    if bookmark.is_empty() || bookmark.len() > MAX_BOOKMARK_LEN {
        return Err(bad());
    }
    let bytes = hex::decode(bookmark).map_err(|_| bad())?;
    let key = String::from_utf8(bytes).map_err(|_| bad())?;
    if key.as_str() < start || key.as_str() >= end {
        return Err(bad());
    }
    Ok(key)
}

/// The smallest key greater than `key`.
fn successor(key: &str) -> String {
    let mut s = String::with_capacity(key.len() + 1);
    s.push_str(key);
    s.push('\u{0}');
    s
}

/// Scans `[start, end)` from `bookmark` (or `start`), keeping what `keep`
/// maps to `Some`, up to `limit` items. Returns the items and the bookmark
/// of the next page, if any.
pub fn scan<T>(
    stub: &mut dyn Stub,
    start: &str,
    end: &str,
    bookmark: Option<&str>,
    limit: usize,
    mut keep: impl FnMut(&Kv) -> Result<Option<T>, ContractError>,
) -> Result<(Vec<T>, Option<String>), ContractError> {
    let mut from = match bookmark {
        Some(b) => decode_bookmark(b, start, end)?,
        None => start.to_owned(),
    };
    let mut items = Vec::new();
    let mut examined = 0usize;
    loop {
        let chunk = stub.get_state_by_range(&from, end, Some(CHUNK))?;
        let n = chunk.len();
        let Some(last) = chunk.last().map(|kv| kv.key.clone()) else {
            return Ok((items, None));
        };
        for kv in &chunk {
            if kv.key.as_str() < from.as_str() || kv.key.as_str() >= end {
                return Err(ContractError::internal(
                    "host returned a key outside the range",
                ));
            }
            if let Some(item) = keep(kv)? {
                if items.len() == limit {
                    return Ok((items, Some(encode_bookmark(&kv.key))));
                }
                items.push(item);
            }
            examined += 1;
            if examined >= SCAN_BUDGET {
                return Ok((items, Some(encode_bookmark(&successor(&kv.key)))));
            }
        }
        if n < CHUNK as usize {
            return Ok((items, None));
        }
        from = successor(&last);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memstub::MemStub;
    use crate::stub::TxTimestamp;

    fn stub_with(n: usize) -> MemStub {
        let mut s = MemStub::new();
        s.begin("t", TxTimestamp::default());
        for i in 0..n {
            s.put_state(&format!("k{i:05}"), format!("{i}").as_bytes())
                .unwrap();
        }
        s.put_state("z", b"outside").unwrap();
        s.commit();
        s
    }

    fn even(kv: &Kv) -> Result<Option<u32>, ContractError> {
        let v: u32 = std::str::from_utf8(&kv.value).unwrap().parse().unwrap();
        Ok(v.is_multiple_of(2).then_some(v))
    }

    #[test]
    fn pages_through_everything_once() {
        let mut s = stub_with(1000);
        let mut seen = Vec::new();
        let mut bm: Option<String> = None;
        let mut pages = 0;
        loop {
            let (items, next) = scan(&mut s, "k", "l", bm.as_deref(), 37, even).unwrap();
            assert!(items.len() <= 37);
            seen.extend(items);
            pages += 1;
            match next {
                Some(b) => bm = Some(b),
                None => break,
            }
        }
        assert_eq!(
            seen,
            (0u32..1000)
                .filter(|v| v.is_multiple_of(2))
                .collect::<Vec<_>>()
        );
        assert_eq!(pages, 500usize.div_ceil(37));
    }

    #[test]
    fn exact_fit_has_no_bookmark() {
        let mut s = stub_with(10);
        let (items, next) = scan(&mut s, "k", "l", None, 5, even).unwrap();
        assert_eq!(items.len(), 5);
        assert_eq!(next, None);
    }

    #[test]
    fn budget_bounds_a_selective_scan() {
        let mut s = stub_with(SCAN_BUDGET + 10);
        let none = |_: &Kv| Ok(None::<()>);
        let (items, next) = scan(&mut s, "k", "l", None, 10, none).unwrap();
        assert!(items.is_empty());
        let next = next.expect("budget ran out, so there is a bookmark");
        let (items, next) = scan(&mut s, "k", "l", Some(&next), 10, none).unwrap();
        assert!(items.is_empty());
        assert_eq!(next, None);
    }

    #[test]
    fn bookmarks_are_validated() {
        let mut s = stub_with(3);
        for bad in [
            "",
            "zz",
            &encode_bookmark("z"),
            &encode_bookmark("a"),
            &"0".repeat(5000),
        ] {
            let r = scan(&mut s, "k", "l", Some(bad), 5, even);
            assert!(matches!(r, Err(ContractError::InvalidArgument(_))), "{bad}");
        }
        assert_eq!(limit(None).unwrap(), 100);
        assert!(limit(Some(0)).is_err());
        assert!(limit(Some(1001)).is_err());
        assert_eq!(limit(Some(1000)).unwrap(), 1000);
    }
}
