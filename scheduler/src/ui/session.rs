//! The dashboard's sessions: kept in the control plane's memory, named in
//! the browser by a random id in an `HttpOnly`, `SameSite=Strict` cookie.
//!
//! The token a person signs in with stays here, with the session: it never
//! goes back to the browser, into a page, a URL or a log. The map is keyed
//! by the sha256 of the id, so the ids themselves are not kept either.
//! Each session has its own CSRF token, which every form that changes
//! something carries.

use sha2::Digest as _;
use shoal_api::auth::{Role, Scope, SecretToken};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq as _;

/// How long a session lasts after sign-in (the token's own expiry, and
/// its revocation, end it sooner: every page asks the API with it).
pub(crate) const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);

/// The most sessions kept at once; past it, the oldest goes.
const MAX_SESSIONS: usize = 4096;

/// The name of the session cookie.
pub(crate) const COOKIE: &str = "shoal_session";

/// Who a session acts as.
#[derive(Clone)]
pub(crate) struct Session {
    /// The token signed in with: what every call to the API carries.
    pub(crate) token: SecretToken,
    /// The token's name, role and scope, for the page header and the
    /// namespaces offered (the API decides what is allowed, not these).
    pub(crate) name: String,
    pub(crate) role: Option<Role>,
    pub(crate) scope: Scope,
    pub(crate) csrf: String,
    created: Instant,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// The namespace a tenant's token is confined to, if it is.
    pub(crate) fn namespace(&self) -> Option<&str> {
        match &self.scope {
            Scope::Namespace(ns) => Some(ns),
            _ => None,
        }
    }
}

/// A message for the next page the session sees (after a redirect).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Flash {
    pub(crate) ok: bool,
    pub(crate) text: String,
}

struct Entry {
    session: Session,
    flash: Option<Flash>,
}

#[derive(Default)]
pub(crate) struct Sessions {
    by_id_hash: Mutex<HashMap<String, Entry>>,
}

fn random_hex() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(hex::encode(bytes))
}

fn id_hash(id: &str) -> String {
    hex::encode(sha2::Sha256::digest(id.as_bytes()))
}

impl Sessions {
    /// A new session for `token`; its id, for the cookie.
    pub(crate) fn create(
        &self,
        token: SecretToken,
        name: String,
        role: Option<Role>,
        scope: Scope,
    ) -> Result<String, getrandom::Error> {
        let id = random_hex()?;
        let session = Session {
            token,
            name,
            role,
            scope,
            csrf: random_hex()?,
            created: Instant::now(),
        };
        let mut map = self.lock();
        map.retain(|_, e| e.session.created.elapsed() < SESSION_TTL);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, e)| e.session.created)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(
            id_hash(&id),
            Entry {
                session,
                flash: None,
            },
        );
        Ok(id)
    }

    /// The live session of cookie value `id`.
    pub(crate) fn get(&self, id: &str) -> Option<Session> {
        let key = id_hash(id);
        let mut map = self.lock();
        let entry = map.get(&key)?;
        if entry.session.created.elapsed() >= SESSION_TTL {
            map.remove(&key);
            return None;
        }
        Some(entry.session.clone())
    }

    /// Ends the session of `id`.
    pub(crate) fn remove(&self, id: &str) {
        self.lock().remove(&id_hash(id));
    }

    pub(crate) fn set_flash(&self, id: &str, flash: Flash) {
        if let Some(e) = self.lock().get_mut(&id_hash(id)) {
            e.flash = Some(flash);
        }
    }

    /// The message left for the session, once.
    pub(crate) fn take_flash(&self, id: &str) -> Option<Flash> {
        self.lock().get_mut(&id_hash(id))?.flash.take()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding the lock leaves a map that is still whole.
        self.by_id_hash
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// Whether `given` is the session's CSRF token (in constant time).
pub(crate) fn csrf_matches(session: &Session, given: &str) -> bool {
    !given.is_empty() && bool::from(session.csrf.as_bytes().ct_eq(given.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make(s: &Sessions) -> String {
        s.create(
            SecretToken::new("shoal_x"),
            "t".into(),
            Some(Role::View),
            Scope::Cluster,
        )
        .unwrap()
    }

    #[test]
    fn a_session_is_found_by_its_id_only_and_ends_when_removed() {
        let s = Sessions::default();
        let id = make(&s);
        assert_eq!(id.len(), 64);
        let got = s.get(&id).expect("the session");
        assert_eq!(got.name, "t");
        assert!(s.get("nope").is_none());
        assert!(csrf_matches(&got, &got.csrf));
        assert!(!csrf_matches(&got, ""));
        assert!(!csrf_matches(&got, &id));
        // Not kept by id: only its hash.
        assert!(!s.lock().contains_key(&id));
        s.remove(&id);
        assert!(s.get(&id).is_none());
    }

    #[test]
    fn a_flash_is_shown_once() {
        let s = Sessions::default();
        let id = make(&s);
        s.set_flash(
            &id,
            Flash {
                ok: true,
                text: "done".into(),
            },
        );
        assert_eq!(s.take_flash(&id).map(|f| f.text), Some("done".into()));
        assert_eq!(s.take_flash(&id), None);
    }

    #[test]
    fn sessions_are_capped() {
        let s = Sessions::default();
        let first = make(&s);
        for _ in 0..MAX_SESSIONS {
            make(&s);
        }
        assert_eq!(s.len(), MAX_SESSIONS);
        assert!(s.get(&first).is_none(), "the oldest went");
    }
}
