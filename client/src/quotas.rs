//! Namespaces' quotas: read (any token of the namespace), set and remove
//! (the cluster's admin).

use crate::transport::{NO_BODY, NO_QUERY};
use crate::{Client, Error};
use reqwest::Method;
use shoal_api::endpoints::{self, ListQuery};
use shoal_api::quota::{Quota, QuotaView, SetQuota};

impl Client {
    /// Quotas with what each namespace holds (`namespace` as for lists).
    pub async fn quotas(&self, q: &ListQuery) -> Result<Vec<QuotaView>, Error> {
        self.json(
            Method::GET,
            endpoints::QUOTAS,
            self.timeout(),
            NO_BODY,
            Some(q),
        )
        .await
    }

    pub async fn quota(&self, namespace: &str) -> Result<QuotaView, Error> {
        self.json(
            Method::GET,
            &endpoints::quota(namespace),
            self.timeout(),
            NO_BODY,
            NO_QUERY,
        )
        .await
    }

    /// Sets a namespace's whole quota; answers it with what it holds.
    pub async fn set_quota(&self, namespace: &str, quota: Quota) -> Result<QuotaView, Error> {
        self.json(
            Method::PUT,
            &endpoints::quota(namespace),
            self.timeout(),
            Some(&SetQuota { quota }),
            NO_QUERY,
        )
        .await
    }

    /// Removes a namespace's quota: it has no limits from now on.
    pub async fn remove_quota(&self, namespace: &str) -> Result<(), Error> {
        self.no_content(self.request(Method::DELETE, &endpoints::quota(namespace)))
            .await
    }
}
