//! Secrets at rest: sealed with an AEAD (ChaCha20-Poly1305, `ring`) under
//! the control plane's secrets key, each value with a fresh random nonce
//! and bound to its namespace and name, so a sealed record copied to
//! another secret's place does not open.
//!
//! The key is 32 random bytes in a file (`--secrets-key-file`, by default
//! `DATA_DIR/secrets.key`, created mode 0600 at the first start); every
//! replica of a control plane on etcd needs the same file. Two keys are
//! derived from it: one seals, the other makes each value's version (a
//! keyed hash, so a version says nothing of a low-entropy value). A
//! record names the key it was sealed with by an id, so a replica with
//! another key says so instead of failing to decrypt.

use crate::store::StoredSecret;
use base64::Engine as _;
use ring::aead::{self, Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use std::collections::BTreeMap;
use std::path::Path;

/// Bytes of a secrets key.
pub const KEY_LEN: usize = 32;

/// What the associated data of every sealed record starts with.
const AAD_CONTEXT: &[u8] = b"shoal secret v1\0";

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("cannot read the secrets key file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot create the secrets key file {path}: {source}")]
    Create {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "the secrets key file {path} does not hold a key: it must hold 32 bytes, or 64 hexadecimal digits"
    )]
    Malformed { path: String },
    #[error("cannot make a random key or nonce")]
    Random,
    #[error(
        "secret {namespace}/{name} was sealed with another secrets key (key id {theirs}, this control plane's is {ours}): start every control-plane replica with the same --secrets-key-file"
    )]
    OtherKey {
        namespace: String,
        name: String,
        theirs: String,
        ours: String,
    },
    #[error("this control plane holds no secrets key")]
    NoKey,
    #[error("secret {namespace}/{name} does not open: its stored record is damaged")]
    Damaged { namespace: String, name: String },
}

/// The control plane's secrets key, ready to seal and open. Its `Debug`
/// shows the key's id only.
pub struct SecretBox {
    seal: LessSafeKey,
    versions: hmac::Key,
    id: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretBox(key id {})", self.id)
    }
}

/// 32 bytes derived from `master` for `purpose`.
fn derive(master: &hmac::Key, purpose: &str) -> [u8; KEY_LEN] {
    let tag = hmac::sign(master, purpose.as_bytes());
    let mut out = [0u8; KEY_LEN];
    out.copy_from_slice(&tag.as_ref()[..KEY_LEN]);
    out
}

impl SecretBox {
    /// The box of `key`.
    pub fn new(key: &[u8; KEY_LEN]) -> Self {
        let master = hmac::Key::new(hmac::HMAC_SHA256, key);
        let seal = derive(&master, "shoal secrets: sealing v1");
        let versions = derive(&master, "shoal secrets: versions v1");
        let id = hex::encode(&derive(&master, "shoal secrets: key id v1")[..8]);
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &seal)
            .unwrap_or_else(|_| unreachable!("a 32-byte key is a ChaCha20-Poly1305 key"));
        Self {
            seal: LessSafeKey::new(unbound),
            versions: hmac::Key::new(hmac::HMAC_SHA256, &versions),
            id,
            rng: SystemRandom::new(),
        }
    }

    /// A box with a key of its own, for tests and for a control plane
    /// that keeps nothing (its secrets would not open after a restart).
    pub fn ephemeral() -> Result<Self, SecretsError> {
        let mut key = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| SecretsError::Random)?;
        Ok(Self::new(&key))
    }

    /// The key in `path`, made (32 random bytes as hex, mode 0600) if the
    /// file is not there.
    pub fn load_or_create(path: &Path) -> Result<Self, SecretsError> {
        let shown = path.display().to_string();
        match std::fs::read(path) {
            Ok(bytes) => {
                let key = parse_key(&bytes).ok_or(SecretsError::Malformed {
                    path: shown.clone(),
                })?;
                warn_if_readable(path);
                Ok(Self::new(&key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; KEY_LEN];
                SystemRandom::new()
                    .fill(&mut key)
                    .map_err(|_| SecretsError::Random)?;
                write_key(path, &key).map_err(|source| SecretsError::Create {
                    path: shown,
                    source,
                })?;
                Ok(Self::new(&key))
            }
            Err(source) => Err(SecretsError::Read {
                path: shown,
                source,
            }),
        }
    }

    /// Which key this is, without saying anything of it.
    pub fn key_id(&self) -> &str {
        &self.id
    }

    /// The version of `value` as key `key` of secret `ns/name`.
    fn version(&self, ns: &str, name: &str, key: &str, value: &str) -> String {
        let mut ctx = hmac::Context::with_key(&self.versions);
        for part in [ns, name, key, value] {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part.as_bytes());
        }
        hex::encode(&ctx.sign().as_ref()[..16])
    }

    /// `data` sealed as secret `ns/name`, stored at `now_ms` (also its
    /// creation time: the caller keeps an earlier one).
    pub fn seal(
        &self,
        ns: &str,
        name: &str,
        data: &BTreeMap<String, String>,
        now_ms: u64,
    ) -> Result<StoredSecret, SecretsError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| SecretsError::Random)?;
        let mut buf = encode(data);
        self.seal
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(ns, name)),
                &mut buf,
            )
            .map_err(|_| SecretsError::Random)?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&buf);
        Ok(StoredSecret {
            namespace: ns.to_string(),
            name: name.to_string(),
            keys: data.keys().cloned().collect(),
            versions: data
                .iter()
                .map(|(k, v)| (k.clone(), self.version(ns, name, k, v)))
                .collect(),
            key_id: self.id.clone(),
            sealed: base64::engine::general_purpose::STANDARD.encode(sealed),
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
        })
    }

    /// The keys and values of `s`.
    pub fn open(&self, s: &StoredSecret) -> Result<BTreeMap<String, String>, SecretsError> {
        let damaged = || SecretsError::Damaged {
            namespace: s.namespace.clone(),
            name: s.name.clone(),
        };
        if s.key_id != self.id {
            return Err(SecretsError::OtherKey {
                namespace: s.namespace.clone(),
                name: s.name.clone(),
                theirs: s.key_id.clone(),
                ours: self.id.clone(),
            });
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&s.sealed)
            .map_err(|_| damaged())?;
        if bytes.len() < NONCE_LEN {
            return Err(damaged());
        }
        let (nonce, rest) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| damaged())?;
        let mut buf = rest.to_vec();
        let plain = self
            .seal
            .open_in_place(nonce, Aad::from(aad(&s.namespace, &s.name)), &mut buf)
            .map_err(|_| damaged())?;
        decode(plain).ok_or_else(damaged)
    }
}

/// What binds a sealed record to its secret.
fn aad(ns: &str, name: &str) -> Vec<u8> {
    let mut a = AAD_CONTEXT.to_vec();
    a.extend_from_slice(ns.as_bytes());
    a.push(0);
    a.extend_from_slice(name.as_bytes());
    a
}

/// Keys and values, each with its length first (u32, big-endian).
fn encode(data: &BTreeMap<String, String>) -> Vec<u8> {
    let size: usize = data.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
    let mut out = Vec::with_capacity(size + aead::MAX_TAG_LEN);
    for (k, v) in data {
        for part in [k, v] {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part.as_bytes());
        }
    }
    out
}

fn decode(mut bytes: &[u8]) -> Option<BTreeMap<String, String>> {
    let mut take = || -> Option<String> {
        let (len, rest) = bytes.split_first_chunk::<4>()?;
        let len = u32::from_be_bytes(*len) as usize;
        let part = rest.get(..len)?;
        bytes = &rest[len..];
        String::from_utf8(part.to_vec()).ok()
    };
    let mut out = BTreeMap::new();
    while let Some(k) = take() {
        out.insert(k, take()?);
    }
    bytes.is_empty().then_some(out)
}

/// A key file's key: 32 bytes as they are, or as 64 hexadecimal digits
/// (surrounding white space ignored).
fn parse_key(bytes: &[u8]) -> Option<[u8; KEY_LEN]> {
    let text = std::str::from_utf8(bytes).ok().map(str::trim);
    if let Some(t) = text
        && t.len() == 2 * KEY_LEN
        && let Ok(v) = hex::decode(t)
    {
        return v.try_into().ok();
    }
    bytes.try_into().ok()
}

/// Writes `key` as hex to a new file readable by its owner only.
pub fn write_key(path: &Path, key: &[u8; KEY_LEN]) -> std::io::Result<()> {
    use std::io::Write as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(format!("{}\n", hex::encode(key)).as_bytes())?;
    f.sync_all()
}

/// A new random key, as a key file holds it.
pub fn new_key_file(path: &Path) -> Result<(), SecretsError> {
    let mut key = [0u8; KEY_LEN];
    SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| SecretsError::Random)?;
    write_key(path, &key).map_err(|source| SecretsError::Create {
        path: path.display().to_string(),
        source,
    })
}

fn warn_if_readable(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(m) = std::fs::metadata(path)
            && m.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(path = %path.display(), "the secrets key file is readable by others than its owner: chmod 600 it");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> BTreeMap<String, String> {
        [
            ("password".to_string(), "hunter2".to_string()),
            ("user".to_string(), "admin".to_string()),
        ]
        .into()
    }

    #[test]
    fn sealed_values_open_only_as_the_secret_they_were_sealed_for() {
        let b = SecretBox::ephemeral().unwrap();
        let s = b.seal("web", "db", &data(), 5).unwrap();
        assert_eq!(b.open(&s).unwrap(), data());
        assert_eq!(s.keys, ["password", "user"]);
        let json = String::from_utf8(crate::store::to_json(&s)).unwrap();
        assert!(
            !json.contains("hunter2") && !json.contains("admin\""),
            "{json}"
        );
        assert!(!format!("{s:?}").contains(&s.sealed));
        // Moved to another name or namespace: refused.
        for (ns, name) in [("web", "db2"), ("other", "db")] {
            let mut moved = s.clone();
            moved.namespace = ns.into();
            moved.name = name.into();
            assert!(matches!(b.open(&moved), Err(SecretsError::Damaged { .. })));
        }
        // A flipped bit: refused.
        let mut raw = base64::engine::general_purpose::STANDARD
            .decode(&s.sealed)
            .unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        let mut flipped = s.clone();
        flipped.sealed = base64::engine::general_purpose::STANDARD.encode(raw);
        assert!(matches!(
            b.open(&flipped),
            Err(SecretsError::Damaged { .. })
        ));
        // Another key: said so.
        let other = SecretBox::ephemeral().unwrap();
        let e = other.open(&s).unwrap_err();
        assert!(e.to_string().contains("--secrets-key-file"), "{e}");
        // Each seal has its own nonce.
        let again = b.seal("web", "db", &data(), 5).unwrap();
        assert_ne!(again.sealed, s.sealed);
    }

    #[test]
    fn versions_are_keyed_and_follow_the_value() {
        let b = SecretBox::ephemeral().unwrap();
        let one = b.seal("web", "db", &data(), 0).unwrap();
        let two = b.seal("web", "db", &data(), 0).unwrap();
        assert_eq!(one.versions, two.versions);
        let mut changed = data();
        changed.insert("password".into(), "hunter3".into());
        let three = b.seal("web", "db", &changed, 0).unwrap();
        assert_ne!(three.versions["password"], one.versions["password"]);
        assert_eq!(three.versions["user"], one.versions["user"]);
        // Another key gives other versions of the same values: a version
        // cannot be checked against guesses without the key.
        let other = SecretBox::ephemeral().unwrap();
        let theirs = other.seal("web", "db", &data(), 0).unwrap();
        assert_ne!(theirs.versions["password"], one.versions["password"]);
    }

    #[test]
    fn the_key_file_is_made_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        let b = SecretBox::load_or_create(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = SecretBox::load_or_create(&path).unwrap();
        assert_eq!(again.key_id(), b.key_id());
        let s = b.seal("default", "a", &data(), 0).unwrap();
        assert_eq!(again.open(&s).unwrap(), data());
        std::fs::write(&path, "not a key").unwrap();
        let e = SecretBox::load_or_create(&path).unwrap_err();
        assert!(e.to_string().contains("does not hold a key"), "{e}");
        assert!(!e.to_string().contains("not a key"), "{e}");
        std::fs::write(&path, [7u8; 32]).unwrap();
        SecretBox::load_or_create(&path).unwrap();
    }
}
