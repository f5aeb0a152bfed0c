//! Calls between apps: how a guest names another app of its cluster, how
//! a manifest allows it, and how the callee learns who called.
//!
//! A guest calls `http://APP.NAMESPACE.svc/path` with `wasi:http`. Such a
//! host is never looked up in DNS: the node hands the request to a
//! gateway's calls entry, which sends it to a ready instance of the app
//! with the gateway's balancing, retries and timeouts, and the callee
//! gets the caller as [`CALLER_HEADER`] (`APP.NAMESPACE`).

use crate::manifest::valid_name;
use crate::objects::AppKey;

/// The request header that names the calling app (`APP.NAMESPACE`) to
/// the app it calls. Only gateways set it: one that a client or a guest
/// sends is removed.
pub const CALLER_HEADER: &str = "shoal-caller";

/// The last label of a host that names an app: `APP.NAMESPACE.svc`.
pub const APP_HOST_SUFFIX: &str = "svc";

/// The app a host names, if it has the form `APP.NAMESPACE.svc` (any
/// case, a port or a final dot allowed); `None` for any other host.
pub fn app_of_host(host: &str) -> Option<AppKey> {
    let host = strip_port(host).trim_end_matches('.');
    let mut labels = host.split('.');
    let (name, namespace, suffix) = (labels.next()?, labels.next()?, labels.next()?);
    if labels.next().is_some() || !suffix.eq_ignore_ascii_case(APP_HOST_SUFFIX) {
        return None;
    }
    let (name, namespace) = (name.to_ascii_lowercase(), namespace.to_ascii_lowercase());
    (valid_name(&name) && valid_name(&namespace)).then(|| AppKey::new(namespace, name))
}

/// Whether `host` is meant as an app's (its last label is `svc`), valid
/// or not: such a host never leaves the cluster.
pub fn is_app_host(host: &str) -> bool {
    strip_port(host)
        .trim_end_matches('.')
        .rsplit('.')
        .next()
        .is_some_and(|last| last.eq_ignore_ascii_case(APP_HOST_SUFFIX))
}

/// `host` without a `:port`.
fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// The host that names `app`: `APP.NAMESPACE.svc`.
pub fn host_of(app: &AppKey) -> String {
    format!("{}.{}.{APP_HOST_SUFFIX}", app.name, app.namespace)
}

/// How an app is written in [`CALLER_HEADER`] and in `allow-apps`:
/// `APP.NAMESPACE`.
pub fn caller_name(app: &AppKey) -> String {
    format!("{}.{}", app.name, app.namespace)
}

/// The app an `APP.NAMESPACE` value names, or, for a bare `APP`, that app
/// in `own_namespace`.
pub fn parse_app_ref(value: &str, own_namespace: &str) -> Option<AppKey> {
    let (name, namespace) = value.split_once('.').unwrap_or((value, own_namespace));
    (valid_name(name) && valid_name(namespace)).then(|| AppKey::new(namespace, name))
}

/// The caller a [`CALLER_HEADER`] value names (`APP.NAMESPACE`, both
/// parts required).
pub fn parse_caller(value: &str) -> Option<AppKey> {
    value
        .contains('.')
        .then(|| parse_app_ref(value, ""))
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_app_host_names_one_app() {
        let k = |ns: &str, n: &str| Some(AppKey::new(ns, n));
        assert_eq!(app_of_host("users.shop.svc"), k("shop", "users"));
        assert_eq!(app_of_host("Users.Shop.SVC:8080"), k("shop", "users"));
        assert_eq!(app_of_host("users.shop.svc."), k("shop", "users"));
        for other in [
            "users.svc",
            "a.b.c.svc",
            "users.shop.svc.example.com",
            "users.shop.com",
            "user_s.shop.svc",
            ".shop.svc",
            "-a.shop.svc",
            "example.com",
            "127.0.0.1:80",
        ] {
            assert_eq!(app_of_host(other), None, "{other}");
        }
        assert!(is_app_host("users.svc"));
        assert!(is_app_host("a.b.c.svc:1"));
        assert!(!is_app_host("svc.example.com"));
        assert_eq!(host_of(&AppKey::new("shop", "users")), "users.shop.svc");
    }

    #[test]
    fn references_and_callers() {
        assert_eq!(
            parse_app_ref("users", "shop"),
            Some(AppKey::new("shop", "users"))
        );
        assert_eq!(
            parse_app_ref("users.billing", "shop"),
            Some(AppKey::new("billing", "users"))
        );
        assert_eq!(parse_app_ref("users.billing.x", "shop"), None);
        assert_eq!(parse_app_ref("Users", "shop"), None);
        assert_eq!(parse_app_ref("", "shop"), None);
        assert_eq!(
            parse_caller("web.default"),
            Some(AppKey::new("default", "web"))
        );
        assert_eq!(parse_caller("web"), None);
        assert_eq!(caller_name(&AppKey::new("default", "web")), "web.default");
    }
}
