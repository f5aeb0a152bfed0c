//! Pages of long lists (`GET /v1/apps`, `/v1/instances`, `/v1/revisions`):
//! `?limit=N&continue=TOKEN`, answered with at most N items and, when more
//! remain, the token of the next page in the `x-shoal-continue` header.
//!
//! A token is the key of the last item answered, with the list and the
//! filter it was answered for, base64url-encoded JSON. It is opaque to
//! clients and vouches for nothing: it only says where to resume, and the
//! resumed list is filtered as any other, so a made-up token shows nothing
//! a plain list would not. A token of another list or of another filter
//! is refused rather than resumed somewhere meaningless.

use base64::Engine as _;
use serde::Serialize;
use serde::de::DeserializeOwned;
use shoal_api::endpoints::{DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT};
use std::ops::Bound;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Why a page cannot be answered; each is a 400 for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    #[error("limit {0:?}: expected a whole number from 1 to {MAX_PAGE_LIMIT}")]
    Limit(String),
    #[error("malformed continue token; list again without it")]
    Malformed,
    #[error("the continue token belongs to another list or another query; list again without it")]
    Foreign,
}

impl PageError {
    /// The error code of the JSON answer.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Limit(_) => "invalid_limit",
            Self::Malformed | Self::Foreign => "invalid_continue",
        }
    }
}

/// The paging part of a list's query as it came: strings, so that a bad
/// value is refused with a message of ours rather than the extractor's.
#[derive(Debug, Default, serde::Deserialize)]
pub struct RawPage {
    #[serde(default)]
    pub limit: Option<String>,
    #[serde(default, rename = "continue")]
    pub continue_token: Option<String>,
}

/// A page to answer: how many items, after which key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<K> {
    pub limit: usize,
    pub after: Option<K>,
}

#[derive(Serialize, serde::Deserialize)]
struct Token<K> {
    /// The list (`apps`, ...).
    l: String,
    /// The filter the list was answered for.
    f: String,
    /// The key of the last item answered.
    k: K,
}

/// The page `raw` asks of list `list` under filter `filter` (any string
/// that differs when the filter does); `None` for the whole list (neither
/// a limit nor a token given).
pub fn parse<K: DeserializeOwned>(
    raw: &RawPage,
    list: &str,
    filter: &str,
) -> Result<Option<Page<K>>, PageError> {
    let limit_text = raw
        .limit
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let token_text = raw
        .continue_token
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty());
    if limit_text.is_none() && token_text.is_none() {
        return Ok(None);
    }
    let limit = match limit_text {
        None => DEFAULT_PAGE_LIMIT,
        Some(t) => match t.parse::<u64>() {
            Ok(0) | Err(_) => return Err(PageError::Limit(t.to_string())),
            Ok(n) => n.min(u64::from(MAX_PAGE_LIMIT)) as u32,
        },
    };
    let after = match token_text {
        None => None,
        Some(t) => {
            let bytes = B64.decode(t).map_err(|_| PageError::Malformed)?;
            let token: Token<serde_json::Value> =
                serde_json::from_slice(&bytes).map_err(|_| PageError::Malformed)?;
            if token.l != list || token.f != filter {
                return Err(PageError::Foreign);
            }
            Some(serde_json::from_value(token.k).map_err(|_| PageError::Malformed)?)
        }
    };
    Ok(Some(Page {
        limit: limit as usize,
        after,
    }))
}

/// The token that resumes list `list` under `filter` after `key`.
pub fn token<K: Serialize>(list: &str, filter: &str, key: &K) -> String {
    let t = Token {
        l: list.to_string(),
        f: filter.to_string(),
        k: key,
    };
    // A key is plain data (strings, numbers): it always serializes.
    B64.encode(serde_json::to_vec(&t).unwrap_or_default())
}

/// The items of `map` that `keep` keeps, a page of them with `page` (all
/// without): the items, and the key to resume after when more remain.
pub fn take<'a, K, V>(
    map: &'a imbl::OrdMap<K, V>,
    page: Option<&Page<K>>,
    mut keep: impl FnMut(&V) -> bool,
) -> (Vec<&'a V>, Option<&'a K>)
where
    K: Ord + Clone,
    V: Clone,
{
    let Some(page) = page else {
        return (map.values().filter(|v| keep(v)).collect(), None);
    };
    let start: Bound<&K> = match &page.after {
        Some(k) => Bound::Excluded(k),
        None => Bound::Unbounded,
    };
    let mut items = Vec::with_capacity(page.limit.min(map.len()));
    let mut last = None;
    for (k, v) in map.range::<(Bound<&K>, Bound<&K>), K>((start, Bound::Unbounded)) {
        if !keep(v) {
            continue;
        }
        if items.len() == page.limit {
            return (items, last);
        }
        items.push(v);
        last = Some(k);
    }
    (items, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(limit: Option<&str>, cont: Option<&str>) -> RawPage {
        RawPage {
            limit: limit.map(Into::into),
            continue_token: cont.map(Into::into),
        }
    }

    #[test]
    fn pages_walk_the_filtered_list_once_in_order() {
        let map: imbl::OrdMap<u32, u32> = (0..50u32).map(|i| (i, i)).collect();
        let even = |v: &u32| v.is_multiple_of(2);
        let mut seen = Vec::new();
        let mut cont: Option<String> = None;
        let mut pages = 0;
        loop {
            let page: Page<u32> = parse(&raw(Some("7"), cont.as_deref()), "n", "even")
                .unwrap()
                .unwrap();
            let (items, next) = take(&map, Some(&page), even);
            assert!(items.len() <= 7);
            seen.extend(items.into_iter().copied());
            pages += 1;
            match next {
                Some(k) => cont = Some(token("n", "even", k)),
                None => break,
            }
        }
        assert_eq!(
            seen,
            (0..50u32)
                .filter(|v| v.is_multiple_of(2))
                .collect::<Vec<_>>()
        );
        assert_eq!(pages, 4);
    }

    #[test]
    fn a_page_that_ends_exactly_at_the_end_has_no_next() {
        let map: imbl::OrdMap<u32, u32> = (0..4u32).map(|i| (i, i)).collect();
        let page = Page {
            limit: 4,
            after: None,
        };
        let (items, next) = take(&map, Some(&page), |_| true);
        assert_eq!(items.len(), 4);
        assert_eq!(next, None);
    }

    #[test]
    fn no_limit_and_no_token_is_the_whole_list() {
        assert_eq!(parse::<u32>(&raw(None, None), "n", "").unwrap(), None);
        assert_eq!(
            parse::<u32>(&raw(Some(""), Some(" ")), "n", "").unwrap(),
            None
        );
        let p = parse::<u32>(&raw(None, Some(&token("n", "", &3u32))), "n", "")
            .unwrap()
            .unwrap();
        assert_eq!(p.limit, DEFAULT_PAGE_LIMIT as usize);
        assert_eq!(p.after, Some(3));
        let p = parse::<u32>(&raw(Some("999999"), None), "n", "")
            .unwrap()
            .unwrap();
        assert_eq!(p.limit, MAX_PAGE_LIMIT as usize);
    }

    #[test]
    fn bad_limits_and_tokens_are_refused() {
        for bad in ["0", "-1", "abc", "1.5", "99999999999999999999999"] {
            assert_eq!(
                parse::<u32>(&raw(Some(bad), None), "n", ""),
                Err(PageError::Limit(bad.into())),
                "{bad}"
            );
        }
        for bad in ["%%%", "bm90IGpzb24", "e30"] {
            assert_eq!(
                parse::<u32>(&raw(None, Some(bad)), "n", ""),
                Err(PageError::Malformed),
                "{bad}"
            );
        }
        // The right list and filter, a key of the wrong shape.
        let wrong_key = token("n", "", &"text");
        assert_eq!(
            parse::<u32>(&raw(None, Some(&wrong_key)), "n", ""),
            Err(PageError::Malformed)
        );
        let other_list = token("m", "", &1u32);
        let other_filter = token("n", "ns=a", &1u32);
        for t in [other_list, other_filter] {
            assert_eq!(
                parse::<u32>(&raw(None, Some(&t)), "n", ""),
                Err(PageError::Foreign)
            );
        }
    }
}
