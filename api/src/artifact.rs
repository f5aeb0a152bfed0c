//! Compiled artifacts: a module compiled once, by the control plane, for
//! the engine its nodes run, and loaded by every node that runs it.
//!
//! Loading compiled code trusts it with the node, so a node loads only what
//! the control plane vouches for: the cluster CA's signature over
//! [`signed_message`], which binds the module's sha256, the engine key the
//! code was compiled for, what the binary is, and the artifact's own
//! sha256. The answer of [`crate::endpoints::ARTIFACT`] carries the
//! artifact as its body and the rest in the headers below.

/// The artifact's sha256, lowercase hex.
pub const SHA256_HEADER: &str = "x-shoal-artifact-sha256";
/// The CA's signature over [`signed_message`], base64 (standard alphabet).
pub const SIGNATURE_HEADER: &str = "x-shoal-artifact-signature";
/// What the binary is: [`KIND_COMPONENT`] or [`KIND_MODULE`].
pub const KIND_HEADER: &str = "x-shoal-artifact-kind";
pub const KIND_COMPONENT: &str = "component";
pub const KIND_MODULE: &str = "module";

/// The error code when the control plane's engine is not the node's (the
/// node compiles the module itself).
pub const ENGINE_MISMATCH: &str = "engine_mismatch";
/// The error code when the control plane does not compile for nodes (no
/// CA to sign with, or turned off).
pub const UNAVAILABLE: &str = "artifacts_unavailable";

/// What the CA signs for one artifact. Every field is hex or a fixed word,
/// so a newline cannot occur inside one and the encoding is unambiguous.
pub fn signed_message(module: &str, engine: &str, kind: &str, artifact: &str) -> Vec<u8> {
    format!("module {module}\nengine {engine}\nkind {kind}\nartifact {artifact}\n").into_bytes()
}

/// Whether `s` is usable as an engine key or digest in a message: hex and
/// nothing else, of a sane length.
pub fn is_hex_key(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_field_changes_the_message() {
        let base = signed_message("aa", "bb", KIND_COMPONENT, "cc");
        assert_ne!(base, signed_message("ab", "bb", KIND_COMPONENT, "cc"));
        assert_ne!(base, signed_message("aa", "bc", KIND_COMPONENT, "cc"));
        assert_ne!(base, signed_message("aa", "bb", KIND_MODULE, "cc"));
        assert_ne!(base, signed_message("aa", "bb", KIND_COMPONENT, "cd"));
    }

    #[test]
    fn keys_are_hex_only() {
        assert!(is_hex_key("0123abcdef"));
        assert!(!is_hex_key(""));
        assert!(!is_hex_key("ab\nengine ff"));
        assert!(!is_hex_key(&"a".repeat(129)));
    }
}
