//! Secrets: set (create or replace, the values travel once, to the
//! control plane), list and get (names and keys only, never a value),
//! delete; and a node's fetch of the values its instances read.

use crate::transport::{NO_BODY, NO_QUERY};
use crate::{Client, Error};
use reqwest::Method;
use shoal_api::config::{PutSecret, SecretValues, SecretView};
use shoal_api::endpoints;
use std::collections::BTreeMap;

impl Client {
    /// Sets secret `name` of namespace `ns` to `data` (its whole
    /// contents); answers its names and keys. Apps that read a value that
    /// changed roll out a new revision.
    pub async fn put_secret(
        &self,
        ns: &str,
        name: &str,
        data: BTreeMap<String, String>,
    ) -> Result<SecretView, Error> {
        self.json(
            Method::PUT,
            &endpoints::secret(ns, name),
            self.timeout(),
            Some(&PutSecret { data }),
            NO_QUERY,
        )
        .await
    }

    /// The secrets of namespace `ns`: names and keys.
    pub async fn secrets(&self, ns: &str) -> Result<Vec<SecretView>, Error> {
        self.json(
            Method::GET,
            &endpoints::secrets(ns),
            self.timeout(),
            NO_BODY,
            NO_QUERY,
        )
        .await
    }

    /// One secret's names and keys.
    pub async fn secret(&self, ns: &str, name: &str) -> Result<SecretView, Error> {
        self.json(
            Method::GET,
            &endpoints::secret(ns, name),
            self.timeout(),
            NO_BODY,
            NO_QUERY,
        )
        .await
    }

    /// Deletes a secret (refused while an app reads it).
    pub async fn delete_secret(&self, ns: &str, name: &str) -> Result<(), Error> {
        self.no_content(self.request(Method::DELETE, &endpoints::secret(ns, name)))
            .await
    }

    /// The values instance `id` reads, for `node`, the node it is
    /// assigned to (with the node's own credential).
    pub async fn instance_secrets(&self, node: &str, id: &str) -> Result<SecretValues, Error> {
        self.json(
            Method::GET,
            &endpoints::node_instance_secrets(node, id),
            self.timeout(),
            NO_BODY,
            NO_QUERY,
        )
        .await
    }
}
