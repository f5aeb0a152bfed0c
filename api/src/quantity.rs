//! Quantities as people write them in manifests and on the command line.
//!
//! Sizes accept binary and decimal units (`64MiB`, `1GB`, `512KiB`, or a bare
//! number of bytes); durations accept humantime syntax (`5s`, `250ms`,
//! `1m 30s`). Both serialise back to the same human form.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("invalid size {input:?}: {reason} (expected e.g. 64MiB, 1GB or a number of bytes)")]
    Size { input: String, reason: String },
    #[error("invalid duration {input:?}: {reason} (expected e.g. 5s, 250ms, 1m)")]
    Duration { input: String, reason: String },
}

/// A number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn mib(n: u64) -> Self {
        Self(n * 1024 * 1024)
    }
    pub const fn kib(n: u64) -> Self {
        Self(n * 1024)
    }
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = QuantityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if let Ok(n) = t.parse::<u64>() {
            return Ok(Self(n));
        }
        t.parse::<bytesize::ByteSize>()
            .map(|b| Self(b.as_u64()))
            .map_err(|reason| QuantityError::Size {
                input: s.to_string(),
                reason,
            })
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 4] = [
            (1 << 40, "TiB"),
            (1 << 30, "GiB"),
            (1 << 20, "MiB"),
            (1 << 10, "KiB"),
        ];
        for (size, unit) in UNITS {
            if self.0 >= size && self.0.is_multiple_of(size) {
                return write!(f, "{}{unit}", self.0 / size);
            }
        }
        write!(f, "{}", self.0)
    }
}

/// A span of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }
    pub const fn from_secs(s: u64) -> Self {
        Self(std::time::Duration::from_secs(s))
    }
    pub const fn get(self) -> std::time::Duration {
        self.0
    }
}

impl FromStr for Duration {
    type Err = QuantityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s.trim())
            .map(Self)
            .map_err(|e| QuantityError::Duration {
                input: s.to_string(),
                reason: e.to_string(),
            })
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl From<std::time::Duration> for Duration {
    fn from(d: std::time::Duration) -> Self {
        Self(d)
    }
}

macro_rules! serde_as_string {
    ($ty:ty, $expecting:literal, $from_u64:expr) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$ty, E> {
                        v.parse().map_err(E::custom)
                    }
                    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<$ty, E> {
                        Ok($from_u64(v))
                    }
                    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<$ty, E> {
                        u64::try_from(v)
                            .map($from_u64)
                            .map_err(|_| E::custom("must not be negative"))
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}

serde_as_string!(
    ByteSize,
    "a size such as \"64MiB\" or a number of bytes",
    ByteSize
);
serde_as_string!(
    Duration,
    "a duration such as \"5s\" or a number of milliseconds",
    Duration::from_millis
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!("64MiB".parse::<ByteSize>().unwrap(), ByteSize::mib(64));
        assert_eq!("64 MiB".parse::<ByteSize>().unwrap(), ByteSize::mib(64));
        assert_eq!("1000".parse::<ByteSize>().unwrap(), ByteSize(1000));
        assert_eq!("1KB".parse::<ByteSize>().unwrap(), ByteSize(1000));
        assert_eq!(ByteSize::mib(64).to_string(), "64MiB");
        assert_eq!(ByteSize(1500).to_string(), "1500");
        let err = "lots".parse::<ByteSize>().unwrap_err().to_string();
        assert!(err.contains("invalid size \"lots\""), "{err}");
    }

    #[test]
    fn durations_parse_and_print() {
        assert_eq!("5s".parse::<Duration>().unwrap(), Duration::from_secs(5));
        assert_eq!(
            "250ms".parse::<Duration>().unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(Duration::from_millis(1500).to_string(), "1s 500ms");
        assert!("soon".parse::<Duration>().is_err());
    }

    #[test]
    fn serde_accepts_strings_and_numbers() {
        let s: ByteSize = serde_json::from_str("\"2MiB\"").unwrap();
        assert_eq!(s, ByteSize::mib(2));
        let n: ByteSize = serde_json::from_str("4096").unwrap();
        assert_eq!(n, ByteSize(4096));
        let d: Duration = serde_json::from_str("\"2s\"").unwrap();
        assert_eq!(d, Duration::from_secs(2));
        assert_eq!(
            serde_json::to_string(&ByteSize::mib(3)).unwrap(),
            "\"3MiB\""
        );
        assert!(serde_json::from_str::<ByteSize>("-1").is_err());
    }
}
