//! Namespaces' quotas: read (any token of the namespace), set and remove
//! (the cluster's admin); the default quota (the cluster's admin's).

use crate::transport::{NO_BODY, NO_QUERY};
use crate::{Client, Error};
use reqwest::Method;
use shoal_api::endpoints::{self, ListQuery};
use shoal_api::quota::{DefaultQuotaView, Quota, QuotaView, SetQuota};

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

    /// The default quota, which holds every namespace without its own.
    pub async fn default_quota(&self) -> Result<DefaultQuotaView, Error> {
        self.json(
            Method::GET,
            endpoints::DEFAULT_QUOTA,
            self.timeout(),
            NO_BODY,
            NO_QUERY,
        )
        .await
    }

    /// Sets the whole default quota.
    pub async fn set_default_quota(&self, quota: Quota) -> Result<DefaultQuotaView, Error> {
        self.json(
            Method::PUT,
            endpoints::DEFAULT_QUOTA,
            self.timeout(),
            Some(&SetQuota { quota }),
            NO_QUERY,
        )
        .await
    }

    /// Removes the default quota: namespaces without their own have no
    /// limits from now on.
    pub async fn remove_default_quota(&self) -> Result<(), Error> {
        self.no_content(self.request(Method::DELETE, endpoints::DEFAULT_QUOTA))
            .await
    }
}
