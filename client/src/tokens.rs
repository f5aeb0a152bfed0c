//! An admin's calls on tokens: create (the secret comes back once), list
//! (never a secret), revoke.

use crate::transport::{NO_BODY, NO_QUERY};
use crate::{Client, Error};
use reqwest::Method;
use shoal_api::auth::{CreateToken, CreatedToken, TokenView};
use shoal_api::endpoints;

impl Client {
    /// Makes a token; the answer holds its secret, which the control plane
    /// never shows again.
    pub async fn create_token(&self, req: &CreateToken) -> Result<CreatedToken, Error> {
        self.json(
            Method::POST,
            endpoints::TOKENS,
            self.timeout(),
            Some(req),
            NO_QUERY,
        )
        .await
    }

    pub async fn tokens(&self) -> Result<Vec<TokenView>, Error> {
        self.json(
            Method::GET,
            endpoints::TOKENS,
            self.timeout(),
            NO_BODY,
            NO_QUERY,
        )
        .await
    }

    /// Revokes a token: the control plane refuses its next request.
    pub async fn revoke_token(&self, name: &str) -> Result<(), Error> {
        self.no_content(self.request(Method::DELETE, &endpoints::token(name)))
            .await
    }
}
