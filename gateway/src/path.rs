//! The request path as the gateway routes it and as the app gets it,
//! normalized as nginx does before it chooses a location:
//!
//! - a percent-encoded unreserved character (`A`-`Z`, `a`-`z`, `0`-`9`,
//!   `-`, `.`, `_`, `~`) is decoded; other escapes are kept, their hex
//!   digits in upper case;
//! - `//` is merged into `/`;
//! - `.` and `..` segments are removed (also when they were written
//!   `%2e`), as RFC 3986 says.
//!
//! The route is chosen on the result, and the app gets the same path, so
//! the two cannot disagree. Refused (400): a `..` that climbs above the
//! root, a `%` not followed by two hex digits, and `%00`. The query string
//! is not touched. A path that does not start with `/` (`*`, or a
//! `CONNECT`'s authority) is left as it is.
//!
//! Decoding is done here rather than with `percent-encoding`, which
//! decodes every escape and lets malformed ones through: only unreserved
//! characters may be decoded, and a malformed escape must be refused.
//!
//! An encoded slash (`%2F`), an encoded backslash (`%5C`) and a raw
//! backslash are not separators here; [`separators_decoded`] is the path
//! as an app that reads them as `/` would see it, which the route stage
//! uses to refuse a request such an app would take for another route's.

/// Why a path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("its `..` segments climb above the root")]
    AboveRoot,
    #[error("it has a `%` that is not followed by two hex digits")]
    BadEscape,
    #[error("it has an encoded NUL (%00)")]
    Nul,
    #[error("it has an encoded `/` or a `\\` that would make it another app's path")]
    HiddenSeparator,
}

/// `path` normalized, or `None` if it already is (most paths: checked
/// without allocating).
pub fn normalize(path: &str) -> Result<Option<String>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') || is_normal(bytes) {
        return Ok(None);
    }
    let decoded = decode_unreserved(bytes)?;
    let normal = remove_dots(&decoded)?;
    Ok((normal != path).then_some(normal))
}

/// Whether a normalized `path` has an encoded slash or a backslash, raw or
/// encoded: something an app may read as a separator that the gateway
/// does not.
pub fn has_hidden_separator(path: &str) -> bool {
    let b = path.as_bytes();
    b.contains(&b'\\')
        || b.windows(3).any(|w| {
            w[0] == b'%'
                && (w[1..].eq_ignore_ascii_case(b"2f") || w[1..].eq_ignore_ascii_case(b"5c"))
        })
}

/// A normalized `path` as an app that reads `%2F`, `%5C` and `\` as `/`
/// would see it, normalized again.
pub fn separators_decoded(path: &str) -> Result<String, PathError> {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let escaped = b[i] == b'%'
            && b.get(i + 1..i + 3)
                .is_some_and(|h| h.eq_ignore_ascii_case(b"2f") || h.eq_ignore_ascii_case(b"5c"));
        if escaped {
            out.push(b'/');
            i += 3;
        } else {
            out.push(if b[i] == b'\\' { b'/' } else { b[i] });
            i += 1;
        }
    }
    remove_dots(&out)
}

/// No escapes, no empty segment, no segment starting with a dot: nothing
/// to change.
fn is_normal(b: &[u8]) -> bool {
    let mut prev = 0u8;
    for &c in b {
        if c == b'%' || (prev == b'/' && (c == b'/' || c == b'.')) {
            return false;
        }
        prev = c;
    }
    true
}

fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// Decodes escapes of unreserved characters; upper-cases the others.
fn decode_unreserved(b: &[u8]) -> Result<Vec<u8>, PathError> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            b.get(i + 1).copied().and_then(hex_value),
            b.get(i + 2).copied().and_then(hex_value),
        ) else {
            return Err(PathError::BadEscape);
        };
        let c = hi << 4 | lo;
        if c == 0 {
            return Err(PathError::Nul);
        }
        if is_unreserved(c) {
            out.push(c);
        } else {
            out.extend_from_slice(&[b'%', HEX[hi as usize], HEX[lo as usize]]);
        }
        i += 3;
    }
    Ok(out)
}

/// Merges empty segments and removes dot segments from a path that starts
/// with `/`. A trailing `/`, `/.` or `/..` leaves the result ending in `/`.
fn remove_dots(b: &[u8]) -> Result<String, PathError> {
    let rest = b.strip_prefix(b"/").unwrap_or(b);
    let mut kept: Vec<&[u8]> = Vec::new();
    let mut trailing = false;
    let mut parts = rest.split(|c| *c == b'/').peekable();
    while let Some(seg) = parts.next() {
        let last = parts.peek().is_none();
        match seg {
            b"" | b"." => trailing = last,
            b".." => {
                kept.pop().ok_or(PathError::AboveRoot)?;
                trailing = last;
            }
            _ => {
                kept.push(seg);
                trailing = false;
            }
        }
    }
    let mut out = Vec::with_capacity(b.len());
    for seg in &kept {
        out.push(b'/');
        out.extend_from_slice(seg);
    }
    if trailing || kept.is_empty() {
        out.push(b'/');
    }
    // Only ASCII was decoded or removed from a `str`: still UTF-8.
    String::from_utf8(out).map_err(|_| PathError::BadEscape)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What each path becomes: the normalized path, or the error.
    #[test]
    fn paths_are_normalized_as_nginx_does_or_refused() {
        use PathError::*;
        let ok = |s: &str| Ok::<_, PathError>(s.to_string());
        let table: &[(&str, Result<String, PathError>)] = &[
            // Already normal: kept.
            ("/", ok("/")),
            ("/a/b", ok("/a/b")),
            ("/a/b/", ok("/a/b/")),
            ("/a.b/c..d/...", ok("/a.b/c..d/...")),
            ("/.well-known/x", ok("/.well-known/x")),
            ("/a%20b", ok("/a%20b")),
            // Duplicate slashes merged.
            ("//b", ok("/b")),
            ("///a//b///", ok("/a/b/")),
            // Dot segments removed.
            ("/a/./b", ok("/a/b")),
            ("/a/../b", ok("/b")),
            ("/a/./../b", ok("/b")),
            ("/js/../py/a", ok("/py/a")),
            ("/a/b/..", ok("/a/")),
            ("/a/b/.", ok("/a/b/")),
            ("/a/..", ok("/")),
            ("/.", ok("/")),
            ("/a//..", ok("/")),
            ("/a/b/../../c", ok("/c")),
            // Unreserved characters decoded, also into dot segments.
            ("/%61pi/%7Ex", ok("/api/~x")),
            ("/a/%2e%2e/b", ok("/b")),
            ("/a/%2E%2E/b", ok("/b")),
            ("/a/.%2e/b", ok("/b")),
            ("/a/%2e/b", ok("/a/b")),
            ("/a/%2e%2e%2e", ok("/a/...")),
            // Other escapes kept, in upper case.
            ("/a%2fb", ok("/a%2Fb")),
            ("/%c3%a9", ok("/%C3%A9")),
            ("/a%25b", ok("/a%25b")),
            ("/a/..%2f..%2fb/x", ok("/a/..%2F..%2Fb/x")),
            // Nothing decoded can end the request line or a header.
            ("/a%20b%0d%0aX:%09", ok("/a%20b%0D%0AX:%09")),
            // Raw characters other than dots and slashes kept.
            ("/a\\..\\b", ok("/a\\..\\b")),
            // Refused.
            ("/..", Err(AboveRoot)),
            ("/../a", Err(AboveRoot)),
            ("/a/../..", Err(AboveRoot)),
            ("/a/../../b", Err(AboveRoot)),
            ("/%2e%2e/a", Err(AboveRoot)),
            ("//..", Err(AboveRoot)),
            ("/a%", Err(BadEscape)),
            ("/a%2", Err(BadEscape)),
            ("/a%zz", Err(BadEscape)),
            ("/a%%41", Err(BadEscape)),
            ("/a%00b", Err(Nul)),
        ];
        for (path, want) in table {
            let got = normalize(path).map(|n| n.unwrap_or_else(|| path.to_string()));
            assert_eq!(&got, want, "{path}");
            // Normalizing twice changes nothing more.
            if let Ok(once) = got {
                assert_eq!(normalize(&once), Ok(None), "{path} -> {once}");
            }
        }
    }

    #[test]
    fn paths_that_are_not_absolute_are_left_alone() {
        for path in ["*", "", "a/../b"] {
            assert_eq!(normalize(path), Ok(None), "{path:?}");
        }
    }

    #[test]
    fn hidden_separators_are_found_and_read_as_an_app_that_decodes_them_would() {
        let table: &[(&str, bool, Result<&str, PathError>)] = &[
            ("/a/b", false, Ok("/a/b")),
            ("/a%2Fb/x", true, Ok("/a/b/x")),
            ("/a%2fb", true, Ok("/a/b")),
            ("/a%5Cb", true, Ok("/a/b")),
            ("/a\\b", true, Ok("/a/b")),
            ("/a/..%2F..%2Fb/x", true, Err(PathError::AboveRoot)),
            ("/a/..%2Fb", true, Ok("/b")),
            ("/a%252Fb", false, Ok("/a%252Fb")),
        ];
        for (path, hidden, decoded) in table {
            assert_eq!(has_hidden_separator(path), *hidden, "{path}");
            assert_eq!(
                separators_decoded(path).as_deref().map_err(|e| *e),
                *decoded,
                "{path}"
            );
        }
    }
}
