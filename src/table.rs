//! Plain-text tables and ages, as kubectl prints them.

// Output goes through `crate::out`, so that a closed pipe ends the command
// instead of panicking.
#![deny(clippy::print_stdout, clippy::print_stderr)]

use crate::out::out;

/// Prints rows under a header, each column as wide as its widest cell, two
/// spaces apart.
pub fn print(header: &[&str], rows: &[Vec<String>]) {
    out!("{}", render(header, rows));
}

pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let last = cells.len().saturating_sub(1);
        for (i, c) in cells.iter().enumerate() {
            out.push_str(c);
            if i < last {
                let pad = widths[i].saturating_sub(c.chars().count()) + 2;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// How long ago `then_ms` was, shortly: `5s`, `3m`, `2h`, `4d`.
pub fn age(then_ms: u64, now_ms: u64) -> String {
    let s = now_ms.saturating_sub(then_ms) / 1000;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// When `ms` (since the Unix epoch) was, in UTC: `2024-05-01T12:00:00Z`.
pub fn timestamp(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align() {
        let t = render(
            &["NAME", "READY"],
            &[
                vec!["web".into(), "3/3".into()],
                vec!["api-long".into(), "0/1".into()],
            ],
        );
        assert_eq!(t, "NAME      READY\nweb       3/3\napi-long  0/1\n");
    }

    #[test]
    fn ages() {
        assert_eq!(age(0, 5_000), "5s");
        assert_eq!(age(0, 600_000), "10m");
        assert_eq!(age(0, 3 * 3_600_000), "3h");
        assert_eq!(age(0, 3 * 86_400_000), "3d");
        assert_eq!(age(10, 0), "0s");
    }

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(86_400_000 + 1_500), "1970-01-02T00:00:01Z");
    }
}
