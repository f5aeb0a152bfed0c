//! Long lists a page at a time: `?limit=N&continue=TOKEN` on `GET
//! /v1/apps`, `/v1/instances` and `/v1/revisions`, the next page's token
//! in the answer's `x-shoal-continue` header.

use crate::{Client, Error};
use reqwest::Method;
use serde::de::DeserializeOwned;
use shoal_api::endpoints::{self, CONTINUE_HEADER, ListQuery, PageQuery};
use shoal_api::objects::{Instance, Revision};
use shoal_api::rest::AppView;

/// One page of a list.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// The token of the next page; `None` after the last.
    pub next: Option<String>,
}

impl Client {
    /// One page of apps: at most `page.limit` after `page.continue_token`.
    pub async fn apps_page(&self, q: &ListQuery, page: &PageQuery) -> Result<Page<AppView>, Error> {
        self.page(endpoints::APPS, q, page).await
    }

    pub async fn instances_page(
        &self,
        q: &ListQuery,
        page: &PageQuery,
    ) -> Result<Page<Instance>, Error> {
        self.page(endpoints::INSTANCES, q, page).await
    }

    pub async fn revisions_page(
        &self,
        q: &ListQuery,
        page: &PageQuery,
    ) -> Result<Page<Revision>, Error> {
        self.page(endpoints::REVISIONS, q, page).await
    }

    /// Every app matching `q`, fetched `limit` at a time.
    pub async fn apps_paged(&self, q: &ListQuery, limit: u32) -> Result<Vec<AppView>, Error> {
        self.all_pages(endpoints::APPS, q, limit).await
    }

    /// Every instance matching `q`, fetched `limit` at a time.
    pub async fn instances_paged(&self, q: &ListQuery, limit: u32) -> Result<Vec<Instance>, Error> {
        self.all_pages(endpoints::INSTANCES, q, limit).await
    }

    /// Every revision matching `q`, fetched `limit` at a time.
    pub async fn revisions_paged(&self, q: &ListQuery, limit: u32) -> Result<Vec<Revision>, Error> {
        self.all_pages(endpoints::REVISIONS, q, limit).await
    }

    /// Walks a list page by page. A list that changes meanwhile is walked
    /// in key order from where the last page ended: nothing is answered
    /// twice, and what was added behind the walk is not seen.
    async fn all_pages<T: DeserializeOwned>(
        &self,
        path: &str,
        q: &ListQuery,
        limit: u32,
    ) -> Result<Vec<T>, Error> {
        let mut all = Vec::new();
        let mut page = PageQuery {
            limit: Some(limit.max(1)),
            continue_token: None,
        };
        loop {
            let p: Page<T> = self.page(path, q, &page).await?;
            let empty = p.items.is_empty();
            all.extend(p.items);
            match p.next {
                // A server that promises more but gives nothing would
                // keep us here forever.
                Some(_) if empty => {
                    return Err(Error::Malformed {
                        what: format!("GET {path}"),
                        cause: "an empty page with a continue token".into(),
                    });
                }
                Some(t) => page.continue_token = Some(t),
                None => return Ok(all),
            }
        }
    }

    async fn page<T: DeserializeOwned>(
        &self,
        path: &str,
        q: &ListQuery,
        page: &PageQuery,
    ) -> Result<Page<T>, Error> {
        let req = self.request(Method::GET, path).query(q).query(page);
        self.within(self.timeout(), async {
            let resp = self.send(req).await?;
            let next = resp
                .headers()
                .get(CONTINUE_HEADER)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
                .map(str::to_string);
            let items = resp.json().await.map_err(|e| Error::Malformed {
                what: format!("GET {path}"),
                cause: crate::root_cause(&e),
            })?;
            Ok(Page { items, next })
        })
        .await
    }
}
