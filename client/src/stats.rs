//! Live numbers (`shoal top`, the dashboard): every app's or one app's
//! traffic and usage, and every node's.

use crate::transport::{NO_BODY, NO_QUERY};
use crate::{Client, Error};
use reqwest::Method;
use shoal_api::endpoints::{self, ListQuery};
use shoal_api::objects::AppKey;
use shoal_api::stats::{AppStats, AppStatsList, NodeStatsList};

impl Client {
    /// Every app's live numbers in `q`'s namespace (`*`: every one the
    /// token may list), without series.
    pub async fn app_stats_list(&self, q: &ListQuery) -> Result<AppStatsList, Error> {
        self.json(
            Method::GET,
            endpoints::STATS_APPS,
            self.timeout(),
            NO_BODY,
            Some(q),
        )
        .await
    }

    /// One app's live numbers with its series over the last minutes.
    pub async fn app_stats(&self, key: &AppKey) -> Result<AppStats, Error> {
        self.json(
            Method::GET,
            &endpoints::app_stats(key),
            self.timeout(),
            NO_BODY,
            NO_QUERY,
        )
        .await
    }

    /// Every node's live numbers (admins).
    pub async fn node_stats(&self) -> Result<NodeStatsList, Error> {
        self.json(
            Method::GET,
            endpoints::STATS_NODES,
            self.timeout(),
            NO_BODY,
            NO_QUERY,
        )
        .await
    }
}
