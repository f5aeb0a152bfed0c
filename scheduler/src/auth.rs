//! The control plane's tokens: made from the OS's CSPRNG, stored as the
//! sha256 of the secret only, checked in constant time, and the admin
//! token of a control plane's first start.
//!
//! Secrets never reach a log: nothing here formats one, and
//! [`Secret`]'s `Debug` hides it.

use crate::store::{Store, StoreError};
use sha2::Digest as _;
use shoal_api::auth::{Role, Scope, TOKEN_PREFIX, TokenRecord};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use subtle::ConstantTimeEq as _;

/// The file of the data dir that holds the admin token made at the first
/// start, readable by its owner only.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// The name of that token.
pub const ADMIN_TOKEN_NAME: &str = "admin";

/// The file of the data dir that holds the join token made at the first
/// start (for `shoal up`'s nodes), readable by its owner only.
pub const JOIN_TOKEN_FILE: &str = "join.token";

/// The name of that token.
pub const JOIN_TOKEN_NAME: &str = "join";

/// What a first start made.
#[derive(Debug)]
pub struct FirstStart {
    /// Where the admin token was written.
    pub admin_file: PathBuf,
    /// Where the join token was written.
    pub join_file: PathBuf,
    /// The join token, to print once.
    pub join: Secret,
}

/// The name of the credential a node is given when it joins: one per
/// node name, so revoking it (`shoal delete node`) shuts that node out.
pub fn node_token_name(node: &str) -> String {
    format!("node:{node}")
}

/// Whether the API checks tokens. Deny by default: `Off` is for a
/// control plane on a trusted loopback, chosen explicitly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Auth {
    #[default]
    Enforce,
    Off,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the OS gave no random bytes: {0}")]
    Random(String),
    #[error("a token named {0:?} exists")]
    Exists(String),
    #[error("{0}")]
    Invalid(String),
    #[error("cannot write {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
}

/// A token's secret, as handed out once.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// `shoal_` and 32 random bytes in hex.
    pub fn generate() -> Result<Self, AuthError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| AuthError::Random(e.to_string()))?;
        Ok(Self(format!("{TOKEN_PREFIX}{}", hex::encode(bytes))))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// sha256 of a secret, hex: what the store keeps.
pub fn hash(secret: &str) -> String {
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

/// The tokens of a control plane: the store's table, and a copy in memory
/// that every request is checked against.
pub struct Tokens {
    store: Arc<Store>,
    table: RwLock<Table>,
}

/// The tokens by name, and the name of each by the hash of its secret.
#[derive(Default)]
struct Table {
    by_name: BTreeMap<String, TokenRecord>,
    by_hash: HashMap<String, String>,
}

impl Table {
    fn insert(&mut self, record: TokenRecord) {
        self.by_hash
            .insert(record.sha256.clone(), record.name.clone());
        if let Some(old) = self.by_name.insert(record.name.clone(), record) {
            self.by_hash.remove(&old.sha256);
        }
    }

    fn remove(&mut self, name: &str) -> Option<TokenRecord> {
        let old = self.by_name.remove(name)?;
        self.by_hash.remove(&old.sha256);
        Some(old)
    }
}

impl Tokens {
    pub fn load(store: Arc<Store>) -> Result<Self, StoreError> {
        let records = store.tokens()?;
        Ok(Self::from_records(store, records))
    }

    /// The tokens `records`, as read from `store` already.
    pub fn from_records(store: Arc<Store>, records: Vec<TokenRecord>) -> Self {
        let mut table = Table::default();
        for t in records {
            table.insert(t);
        }
        Self {
            store,
            table: RwLock::new(table),
        }
    }

    /// Follows a change another control plane made to the store: the
    /// token `name` is now `record`, or gone (a follower's read cache).
    pub fn mirror(&self, name: &str, record: Option<TokenRecord>) {
        let mut tokens = self.write();
        tokens.remove(name);
        if let Some(r) = record {
            tokens.insert(r);
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.table
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn is_empty(&self) -> bool {
        self.read().by_name.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<TokenRecord> {
        self.read().by_name.get(name).cloned()
    }

    pub fn list(&self) -> Vec<TokenRecord> {
        self.read().by_name.values().cloned().collect()
    }

    /// Makes and stores a token; its secret is returned here and nowhere
    /// else, ever.
    pub fn create(
        &self,
        name: &str,
        role: Role,
        scope: Scope,
        now_ms: u64,
        ttl_ms: Option<u64>,
    ) -> Result<(TokenRecord, Secret), AuthError> {
        if name.is_empty() || name.len() > 253 || name.chars().any(|c| c.is_control()) {
            return Err(AuthError::Invalid(format!(
                "a token's name is 1 to 253 characters, none a control character: {name:?}"
            )));
        }
        if let Scope::Namespace(ns) = &scope
            && !shoal_api::manifest::valid_name(ns)
        {
            return Err(AuthError::Invalid(format!(
                "{ns:?} is not a valid namespace: use 1-63 lowercase letters, digits and '-'"
            )));
        }
        let secret = Secret::generate()?;
        let record = TokenRecord {
            name: name.to_string(),
            role,
            scope,
            created_ms: now_ms,
            expires_ms: ttl_ms.map(|t| now_ms.saturating_add(t)),
            sha256: hash(secret.expose()),
        };
        self.put(record.clone())?;
        Ok((record, secret))
    }

    fn put(&self, record: TokenRecord) -> Result<(), AuthError> {
        let mut tokens = self.write();
        if tokens.by_name.contains_key(&record.name) || !self.store.insert_token(&record)? {
            return Err(AuthError::Exists(record.name));
        }
        tokens.insert(record);
        Ok(())
    }

    /// Removes the token `name`: the next request with it is refused.
    /// Whether there was one.
    pub fn revoke(&self, name: &str) -> Result<bool, StoreError> {
        let mut tokens = self.write();
        let removed = self.store.remove_token(name)?;
        Ok(tokens.remove(name).is_some() || removed)
    }

    /// The token whose secret is `secret`, unless it expired. It is
    /// looked up by the sha256 of the secret, so the cost is the same with
    /// ten tokens or ten thousand (one a node); what a lookup's time could
    /// tell is about the hash of a 256-bit random secret, which gives
    /// nothing away. The stored hash is then compared in constant time.
    pub fn authenticate(&self, secret: &str, now_ms: u64) -> Option<TokenRecord> {
        let presented = hash(secret);
        let table = self.read();
        let t = table.by_name.get(table.by_hash.get(&presented)?)?;
        bool::from(t.sha256.as_bytes().ct_eq(presented.as_bytes()))
            .then(|| t.clone())
            .filter(|t| !t.expired(now_ms))
    }
}

/// At a control plane's first start (no token stored yet): makes the
/// cluster admin token and a join token for nodes and writes them to
/// `<dir>/admin.token` and `<dir>/join.token`, readable by their owner
/// only. Later starts change nothing.
pub fn first_start(
    tokens: &Tokens,
    dir: &Path,
    now_ms: u64,
) -> Result<Option<FirstStart>, AuthError> {
    if !tokens.is_empty() {
        return Ok(None);
    }
    let join = Secret::generate()?;
    let join_file = dir.join(JOIN_TOKEN_FILE);
    write_private(&join_file, format!("{}\n", join.expose()).as_bytes())?;
    let _ = tokens.revoke(JOIN_TOKEN_NAME);
    tokens.put(TokenRecord {
        name: JOIN_TOKEN_NAME.into(),
        role: Role::Join,
        scope: Scope::Cluster,
        created_ms: now_ms,
        expires_ms: None,
        sha256: hash(join.expose()),
    })?;
    let secret = Secret::generate()?;
    let path = dir.join(ADMIN_TOKEN_FILE);
    // The file first: a token stored but never written out would leave a
    // cluster nobody can administer. A file written for a token that then
    // failed to store is replaced at the next start, which is again a
    // first start.
    write_private(&path, format!("{}\n", secret.expose()).as_bytes())?;
    let record = TokenRecord {
        name: ADMIN_TOKEN_NAME.into(),
        role: Role::Admin,
        scope: Scope::Cluster,
        created_ms: now_ms,
        expires_ms: None,
        sha256: hash(secret.expose()),
    };
    tokens.put(record)?;
    Ok(Some(FirstStart {
        admin_file: path,
        join_file,
        join,
    }))
}

/// Writes `bytes` to `path`, readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AuthError> {
    shoal_pki::write_file(path, bytes, 0o600).map_err(|source| AuthError::File {
        path: path.display().to_string(),
        source,
    })
}

/// Reads the admin token a control plane wrote into `dir`.
pub fn read_admin_token(dir: &Path) -> std::io::Result<String> {
    Ok(std::fs::read_to_string(dir.join(ADMIN_TOKEN_FILE))?
        .trim()
        .to_string())
}

/// Reads the join token a control plane wrote into `dir`.
pub fn read_join_token(dir: &Path) -> std::io::Result<String> {
    Ok(std::fs::read_to_string(dir.join(JOIN_TOKEN_FILE))?
        .trim()
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(dir: &Path) -> Tokens {
        Tokens::load(Arc::new(Store::open(dir).unwrap())).unwrap()
    }

    #[test]
    fn secrets_are_random_prefixed_and_only_their_hash_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let t = tokens(dir.path());
        let (rec, secret) = t
            .create(
                "ci",
                Role::Deploy,
                Scope::Namespace("a".into()),
                5,
                Some(10),
            )
            .unwrap();
        let s = secret.expose();
        assert!(s.starts_with("shoal_") && s.len() == 6 + 64, "{s}");
        assert_eq!(rec.expires_ms, Some(15));
        assert!(!format!("{secret:?}").contains(s));
        let (_, other) = t
            .create("ci2", Role::View, Scope::Cluster, 5, None)
            .unwrap();
        assert_ne!(other, secret);
        drop(t);
        let db = std::fs::read(dir.path().join("shoal.redb")).unwrap();
        assert!(!db.windows(s.len()).any(|w| w == s.as_bytes()));
        let t = tokens(dir.path());
        assert_eq!(t.authenticate(s, 14).map(|r| r.name), Some("ci".into()));
        assert_eq!(t.authenticate(s, 15), None, "expired");
        assert_eq!(t.authenticate("shoal_nope", 0), None);
        assert!(matches!(
            t.create("ci", Role::View, Scope::Cluster, 0, None),
            Err(AuthError::Exists(_))
        ));
        assert!(
            t.create("x", Role::View, Scope::Namespace("A/b".into()), 0, None)
                .is_err()
        );
    }

    #[test]
    fn a_revoked_token_is_refused_at_once_and_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let t = tokens(dir.path());
        let (_, s) = t
            .create("ci", Role::Admin, Scope::Cluster, 0, None)
            .unwrap();
        assert!(t.authenticate(s.expose(), 0).is_some());
        assert!(t.revoke("ci").unwrap());
        assert!(t.authenticate(s.expose(), 0).is_none());
        assert!(!t.revoke("ci").unwrap());
        drop(t);
        assert!(tokens(dir.path()).authenticate(s.expose(), 0).is_none());
    }

    #[test]
    fn the_first_start_writes_an_admin_token_for_the_owner_only_and_later_starts_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let t = tokens(dir.path());
        let first = first_start(&t, dir.path(), 1).unwrap().unwrap();
        let path = first.admin_file;
        let secret = read_admin_token(dir.path()).unwrap();
        let join = read_join_token(dir.path()).unwrap();
        assert_eq!(join, first.join.expose());
        let rec = t.authenticate(&join, 2).unwrap();
        assert_eq!((rec.role, rec.scope), (Role::Join, Scope::Cluster));
        let rec = t.authenticate(&secret, 2).unwrap();
        assert_eq!((rec.role, rec.scope), (Role::Admin, Scope::Cluster));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        drop(t);
        let t = tokens(dir.path());
        assert!(first_start(&t, dir.path(), 3).unwrap().is_none());
        assert_eq!(read_admin_token(dir.path()).unwrap(), secret);
        assert!(t.authenticate(&secret, 4).is_some());
    }
}
