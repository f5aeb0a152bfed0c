/// What a call to etcd can end in. Messages carry etcd's own words or the
/// transport's innermost error, never an endpoint's address or a credential.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint answered in time, or etcd has no leader / lost quorum: retry later.
    /// A write that ends in this may or may not have been applied.
    #[error("etcd is unavailable: {0}")]
    Unavailable(String),
    /// etcd refused the request (too many ops, too large, bad argument...), with its message.
    #[error("etcd refused the request: {0}")]
    Rejected(String),
    #[error("the lease is not found (expired or revoked)")]
    LeaseNotFound,
    #[error("the revision was compacted (at {compact_revision})")]
    Compacted { compact_revision: i64 },
    #[error("etcd answered something unexpected: {0}")]
    Protocol(String),
    #[error("TLS configuration: {0}")]
    Tls(String),
}

impl EtcdError {
    /// etcd may answer the same request differently later (another member, a
    /// new leader): the caller may retry.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// gRPC status codes etcd's gateway puts in its error bodies.
pub(crate) mod code {
    pub const CANCELLED: i64 = 1;
    pub const DEADLINE_EXCEEDED: i64 = 4;
    pub const NOT_FOUND: i64 = 5;
    pub const OUT_OF_RANGE: i64 = 11;
    pub const UNAVAILABLE: i64 = 14;
}

/// How a failed attempt on one endpoint bears on trying the next one.
#[derive(Debug)]
pub(crate) enum Attempt {
    /// The request never reached etcd's state machine (no connection, the member
    /// refused it for having no leader): any request may go to the next endpoint.
    NotApplied(String),
    /// The TLS handshake failed (a certificate refused on either side): like
    /// `NotApplied`, but when every endpoint says so the configuration is at fault.
    Tls(String),
    /// The member may have applied the request (a timeout after sending it, a
    /// leader change mid-proposal): reads may go to the next endpoint, writes stop
    /// here, lest a retried transaction fail its compares on its own first write.
    Ambiguous(String),
    /// etcd answered: the answer holds whichever member is asked.
    Final(EtcdError),
}

/// Maps an error body of the gateway (`{"error", "message", "code"}`, or inside a
/// stream `{"grpc_code", "message"}`) to what it means for the caller.
pub(crate) fn classify(grpc_code: i64, message: &str) -> Attempt {
    match grpc_code {
        code::UNAVAILABLE => {
            // etcd checks for a leader before it does anything with the request
            // ("hasleader" metadata); the other Unavailable answers (timeouts, a
            // leader change) come after the proposal went out.
            if message.contains("no leader") || message.contains("not capable") {
                Attempt::NotApplied(message.to_string())
            } else {
                Attempt::Ambiguous(message.to_string())
            }
        }
        code::DEADLINE_EXCEEDED | code::CANCELLED => Attempt::Ambiguous(message.to_string()),
        code::NOT_FOUND if message.contains("lease not found") => {
            Attempt::Final(EtcdError::LeaseNotFound)
        }
        code::OUT_OF_RANGE if message.contains("compacted") => {
            // A range does not say where the compaction stands.
            Attempt::Final(EtcdError::Compacted {
                compact_revision: 0,
            })
        }
        _ => Attempt::Final(EtcdError::Rejected(message.to_string())),
    }
}

/// Whether a TLS error is somewhere in `e`'s chain. tokio-rustls hands rustls'
/// errors up inside (nested) io::Errors, whose `source` skips what they wrap:
/// look inside those.
pub(crate) fn is_tls(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<rustls::Error>() {
            return true;
        }
        cur = match err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    false
}

/// The innermost error's message: reqwest wraps hyper wraps io, and only the last
/// says what happened ("Connection refused"). It never holds the URL.
pub(crate) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
