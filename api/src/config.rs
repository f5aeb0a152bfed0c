//! Configuration an app's guests read: plain values and references to
//! secrets, and the secrets themselves as the API shows them.
//!
//! A manifest's `[config]` table and its `env` table map names to a
//! [`ConfigValue`]: a plain string, or `{ secret = "NAME", key = "KEY" }`,
//! a key of a secret in the app's namespace. A revision freezes the
//! references only, never a secret's value; a node resolves them when it
//! starts an instance ([`resolve`]). Guests see every `[config]` entry
//! through `wasi:config/store` and as an environment variable, and every
//! `env` entry as an environment variable (an `env` entry wins over a
//! `[config]` entry of the same name).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The most bytes one secret may hold: its keys and values together.
pub const MAX_SECRET_BYTES: usize = 1 << 20;

/// The most keys one secret may hold.
pub const MAX_SECRET_KEYS: usize = 256;

/// The code of the error an apply gets when a reference names a secret
/// or a key that does not exist.
pub const SECRET_NOT_FOUND: &str = "secret_not_found";

/// The code of the error a delete gets for a secret an app still uses.
pub const SECRET_IN_USE: &str = "secret_in_use";

/// A key of a secret in the app's own namespace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// The secret's name.
    pub secret: String,
    /// The key within it.
    pub key: String,
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "secret {}, key {}", self.secret, self.key)
    }
}

/// One value of `[config]` or `env`: a string as written, or where to find
/// it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ConfigValue {
    Plain(String),
    Secret(SecretRef),
}

impl ConfigValue {
    /// The secret it names, if it is a reference.
    pub fn secret(&self) -> Option<&SecretRef> {
        match self {
            Self::Secret(r) => Some(r),
            Self::Plain(_) => None,
        }
    }

    /// A reference to `key` of secret `secret`.
    pub fn secret_ref(secret: impl Into<String>, key: impl Into<String>) -> Self {
        Self::Secret(SecretRef {
            secret: secret.into(),
            key: key.into(),
        })
    }
}

impl From<String> for ConfigValue {
    fn from(s: String) -> Self {
        Self::Plain(s)
    }
}

impl From<&str> for ConfigValue {
    fn from(s: &str) -> Self {
        Self::Plain(s.to_string())
    }
}

impl fmt::Display for ConfigValue {
    /// A plain value as it is; a reference as `<secret NAME, key KEY>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Plain(s) => f.write_str(s),
            Self::Secret(r) => write!(f, "<{r}>"),
        }
    }
}

impl Serialize for ConfigValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Plain(v) => s.serialize_str(v),
            Self::Secret(r) => r.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for ConfigValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ConfigValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, or { secret = \"NAME\", key = \"KEY\" }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ConfigValue, E> {
                Ok(ConfigValue::Plain(v.to_string()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<ConfigValue, E> {
                Ok(ConfigValue::Plain(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<ConfigValue, A::Error> {
                use serde::de::Error;
                let (mut secret, mut key) = (None::<String>, None::<String>);
                while let Some(k) = map.next_key::<String>()? {
                    match k.as_str() {
                        "secret" if secret.is_none() => secret = Some(map.next_value()?),
                        "key" if key.is_none() => key = Some(map.next_value()?),
                        "secret" | "key" => return Err(A::Error::duplicate_field("secret or key")),
                        other => {
                            return Err(A::Error::custom(format!(
                                "unknown field `{other}` in a secret reference: write {{ secret = \"NAME\", key = \"KEY\" }}"
                            )));
                        }
                    }
                }
                match (secret, key) {
                    (Some(secret), Some(key)) => Ok(ConfigValue::Secret(SecretRef { secret, key })),
                    _ => Err(A::Error::custom(
                        "a secret reference names both the secret and the key: { secret = \"NAME\", key = \"KEY\" }",
                    )),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// Whether `s` may name a `[config]` entry: 1-256 ASCII letters, digits,
/// `_`, `.` and `-`, not starting with a digit, `.` or `-` (guests see it
/// as an environment variable too).
pub fn valid_config_key(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && s.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
}

/// Whether `s` may name a key of a secret: 1-253 ASCII letters, digits,
/// `_`, `.` and `-`.
pub fn valid_secret_key(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Checks a reference's names; the message says what is wrong.
pub fn check_ref(r: &SecretRef) -> Result<(), String> {
    if !crate::manifest::valid_name(&r.secret) {
        return Err(format!(
            "secret {:?} is not a valid secret name: use 1-63 lowercase letters, digits and '-'",
            r.secret
        ));
    }
    if !valid_secret_key(&r.key) {
        return Err(format!(
            "key {:?} is not a valid key: use 1-253 letters, digits, '_', '.' and '-'",
            r.key
        ));
    }
    Ok(())
}

/// What a guest sees, with every reference replaced by its value: the
/// `wasi:config/store` entries and the environment. Its `Debug` shows
/// names only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    pub config: BTreeMap<String, String>,
    pub env: BTreeMap<String, String>,
}

impl fmt::Debug for Resolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolved")
            .field("config", &self.config.keys().collect::<Vec<_>>())
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A reference that could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} refers to {reference}, which {why}")]
pub struct Unresolved {
    /// `config.NAME` or `env.NAME`.
    pub field: String,
    pub reference: SecretRef,
    pub why: &'static str,
}

/// Resolves `config` and `env` (a manifest's tables) with `lookup`, which
/// gives a reference's value or `None`: every config entry becomes an
/// environment variable too, and an `env` entry of the same name wins.
pub fn resolve(
    config: &BTreeMap<String, ConfigValue>,
    env: &BTreeMap<String, ConfigValue>,
    mut lookup: impl FnMut(&SecretRef) -> Option<String>,
    why: &'static str,
) -> Result<Resolved, Unresolved> {
    let mut one = |field: &str, name: &str, v: &ConfigValue| match v {
        ConfigValue::Plain(s) => Ok(s.clone()),
        ConfigValue::Secret(r) => lookup(r).ok_or_else(|| Unresolved {
            field: format!("{field}.{name}"),
            reference: r.clone(),
            why,
        }),
    };
    let mut out = Resolved::default();
    for (k, v) in config {
        let value = one("config", k, v)?;
        out.env.insert(k.clone(), value.clone());
        out.config.insert(k.clone(), value);
    }
    for (k, v) in env {
        let value = one("env", k, v)?;
        out.env.insert(k.clone(), value);
    }
    Ok(out)
}

/// A secret as the API shows it: its name and keys, never its values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SecretView {
    pub namespace: String,
    pub name: String,
    pub keys: Vec<String>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

/// `PUT /v1/namespaces/{ns}/secrets/{name}`: the secret's whole contents,
/// replacing what it held.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutSecret {
    pub data: BTreeMap<String, String>,
}

impl fmt::Debug for PutSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PutSecret")
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl PutSecret {
    /// Checks the keys and the size; the message says what is wrong and
    /// never repeats a value.
    pub fn check(&self) -> Result<(), String> {
        if self.data.is_empty() {
            return Err("a secret holds at least one key".into());
        }
        if self.data.len() > MAX_SECRET_KEYS {
            return Err(format!(
                "a secret holds at most {MAX_SECRET_KEYS} keys, not {}",
                self.data.len()
            ));
        }
        for (k, v) in &self.data {
            if !valid_secret_key(k) {
                return Err(format!(
                    "key {k:?} is not a valid key: use 1-253 letters, digits, '_', '.' and '-'"
                ));
            }
            if v.contains('\0') {
                return Err(format!(
                    "the value of key {k:?} holds a NUL byte, which no environment variable can"
                ));
            }
        }
        let size = secret_size(&self.data);
        if size > MAX_SECRET_BYTES {
            return Err(format!(
                "the secret holds {size} bytes; the most is {MAX_SECRET_BYTES} (1 MiB)"
            ));
        }
        Ok(())
    }
}

/// The bytes a secret's keys and values take together.
pub fn secret_size(data: &BTreeMap<String, String>) -> usize {
    data.iter().map(|(k, v)| k.len() + v.len()).sum()
}

/// What a node gets for an instance: the values of the references its
/// revision makes, by secret and key. Its `Debug` shows names only.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretValues {
    pub values: Vec<(SecretRef, String)>,
}

impl fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.values.iter().map(|(r, _)| r))
            .finish()
    }
}

impl SecretValues {
    pub fn get(&self, r: &SecretRef) -> Option<&str> {
        self.values
            .iter()
            .find(|(k, _)| k == r)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_values_stay_plain_strings_and_references_are_tables() {
        let v: BTreeMap<String, ConfigValue> =
            toml::from_str("A = \"1\"\nB = { secret = \"db\", key = \"password\" }\n").unwrap();
        assert_eq!(v["A"], ConfigValue::Plain("1".into()));
        assert_eq!(v["B"], ConfigValue::secret_ref("db", "password"));
        let json = serde_json::to_string(&v).unwrap();
        assert_eq!(json, r#"{"A":"1","B":{"secret":"db","key":"password"}}"#);
        let back: BTreeMap<String, ConfigValue> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn malformed_references_say_what_to_write() {
        for bad in [
            "B = { secret = \"db\" }",
            "B = { secret = \"db\", key = \"k\", version = 2 }",
            "B = 3",
        ] {
            let e = toml::from_str::<BTreeMap<String, ConfigValue>>(bad).unwrap_err();
            let m = e.to_string();
            assert!(m.contains("secret") || m.contains("a string"), "{bad}: {m}");
        }
    }

    #[test]
    fn env_wins_over_config_and_every_config_entry_is_in_the_environment() {
        let config: BTreeMap<String, ConfigValue> = [
            ("greeting".to_string(), "hi".into()),
            (
                "DB_PASSWORD".to_string(),
                ConfigValue::secret_ref("db", "pw"),
            ),
            ("MODE".to_string(), "config".into()),
        ]
        .into();
        let env: BTreeMap<String, ConfigValue> = [("MODE".to_string(), "env".into())].into();
        let r = resolve(
            &config,
            &env,
            |r| (r.secret == "db" && r.key == "pw").then(|| "s3cret".to_string()),
            "does not exist",
        )
        .unwrap();
        assert_eq!(r.config["DB_PASSWORD"], "s3cret");
        assert_eq!(r.config["MODE"], "config");
        assert_eq!(r.env["MODE"], "env");
        assert_eq!(r.env["greeting"], "hi");
        assert!(!format!("{r:?}").contains("s3cret"));
        let e = resolve(&config, &env, |_| None, "does not exist").unwrap_err();
        assert_eq!(e.field, "config.DB_PASSWORD");
        assert!(e.to_string().contains("secret db, key pw"), "{e}");
    }

    #[test]
    fn keys_and_sizes_are_checked_without_echoing_values() {
        let ok = PutSecret {
            data: [("password".to_string(), "hunter2".to_string())].into(),
        };
        ok.check().unwrap();
        assert!(!format!("{ok:?}").contains("hunter2"));
        let bad_key = PutSecret {
            data: [("no/slash".to_string(), "hunter2".to_string())].into(),
        };
        let e = bad_key.check().unwrap_err();
        assert!(e.contains("no/slash") && !e.contains("hunter2"), "{e}");
        let big = PutSecret {
            data: [("k".to_string(), "x".repeat(MAX_SECRET_BYTES))].into(),
        };
        assert!(big.check().unwrap_err().contains("1 MiB"));
        assert!(
            PutSecret {
                data: BTreeMap::new()
            }
            .check()
            .is_err()
        );
        assert!(valid_config_key("DB_URL") && valid_config_key("db.url") && valid_config_key("_x"));
        assert!(!valid_config_key("1X") && !valid_config_key("") && !valid_config_key("A=B"));
    }
}
