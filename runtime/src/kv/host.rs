//! The host side of `wasi:keyvalue` for components: `open` checks the
//! name against the app's manifest, and every call goes to the process's
//! [`Kv`] as the app's namespace.

use super::{Kv, KvError, StoreId};
use crate::caps::GuestCaps;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit/keyvalue",
        world: "wasi:keyvalue/imports",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": super::Bucket,
        },
        trappable_error_type: {
            "wasi:keyvalue/store.error" => super::GuestError,
        },
    });
}

use bindings::wasi::keyvalue::{atomics, batch, store};

/// An open store, as a guest holds it.
pub struct Bucket {
    store: StoreId,
}

/// What a call answers the guest, or a trap.
pub enum GuestError {
    AccessDenied,
    Other(String),
    Trap(wasmtime::Error),
}

impl From<wasmtime::component::ResourceTableError> for GuestError {
    fn from(e: wasmtime::component::ResourceTableError) -> Self {
        Self::Trap(e.into())
    }
}

impl From<KvError> for GuestError {
    fn from(e: KvError) -> Self {
        if let KvError::Unavailable(detail) = &e {
            tracing::warn!(error = %detail, "key-value store call failed");
        }
        Self::Other(e.to_string())
    }
}

/// What the key-value host functions see of an instance's state.
pub struct KvView<'a> {
    caps: &'a GuestCaps,
    table: &'a mut ResourceTable,
}

impl<'a> KvView<'a> {
    pub(crate) fn new(caps: &'a GuestCaps, table: &'a mut ResourceTable) -> Self {
        Self { caps, table }
    }

    /// The store behind `bucket` and the process's stores.
    fn open_store(&self, bucket: &Resource<Bucket>) -> Result<(Kv, StoreId), GuestError> {
        let b = self.table.get(bucket)?;
        let kv = self
            .caps
            .kv
            .as_ref()
            .map(|g| g.kv.clone())
            .ok_or(GuestError::AccessDenied)?;
        Ok((kv, b.store.clone()))
    }
}

struct HasKv;

impl HasData for HasKv {
    type Data<'a> = KvView<'a>;
}

/// Adds `wasi:keyvalue` (store, atomics, batch) to `linker`.
pub(crate) fn link<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> KvView<'_>,
) -> wasmtime::Result<()> {
    store::add_to_linker::<T, HasKv>(linker, view)?;
    atomics::add_to_linker::<T, HasKv>(linker, view)?;
    batch::add_to_linker::<T, HasKv>(linker, view)?;
    Ok(())
}

impl store::Host for KvView<'_> {
    async fn open(&mut self, identifier: String) -> Result<Resource<Bucket>, GuestError> {
        let Some(grant) = &self.caps.kv else {
            return Err(GuestError::AccessDenied);
        };
        if !grant.stores.iter().any(|s| **s == *identifier) {
            return Err(GuestError::AccessDenied);
        }
        let store = StoreId {
            namespace: self.caps.namespace.clone(),
            name: identifier.into(),
        };
        Ok(self.table.push(Bucket { store })?)
    }

    fn convert_error(&mut self, err: GuestError) -> wasmtime::Result<store::Error> {
        match err {
            GuestError::AccessDenied => Ok(store::Error::AccessDenied),
            GuestError::Other(m) => Ok(store::Error::Other(m)),
            GuestError::Trap(e) => Err(e),
        }
    }
}

impl store::HostBucket for KvView<'_> {
    async fn get(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> Result<Option<Vec<u8>>, GuestError> {
        let (kv, s) = self.open_store(&bucket)?;
        Ok(kv.get(&s, key).await?)
    }

    async fn set(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), GuestError> {
        let (kv, s) = self.open_store(&bucket)?;
        Ok(kv.set(&s, key, value).await?)
    }

    async fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> Result<(), GuestError> {
        let (kv, s) = self.open_store(&bucket)?;
        Ok(kv.delete(&s, key).await?)
    }

    async fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> Result<bool, GuestError> {
        let (kv, s) = self.open_store(&bucket)?;
        Ok(kv.exists(&s, key).await?)
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<u64>,
    ) -> Result<store::KeyResponse, GuestError> {
        let (kv, s) = self.open_store(&bucket)?;
        let page = kv.list_keys(&s, cursor).await?;
        Ok(store::KeyResponse {
            keys: page.keys,
            cursor: page.cursor,
        })
    }

    async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for KvView<'_> {
    async fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: u64,
    ) -> Result<u64, GuestError> {
        let (kv, s) = self.open_store(&bucket)?;
        Ok(kv.increment(&s, key, delta).await?)
    }
}

impl batch::Host for KvView<'_> {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, Vec<u8>)>>, GuestError> {
        let (kv, s) = self.open_store(&bucket)?;
        Ok(kv.get_many(&s, keys).await?)
    }

    async fn set_many(
        &mut self,
        bucket: Resource<Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Result<(), GuestError> {
        let (kv, s) = self.open_store(&bucket)?;
        Ok(kv.set_many(&s, key_values).await?)
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Result<(), GuestError> {
        let (kv, s) = self.open_store(&bucket)?;
        Ok(kv.delete_many(&s, keys).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::store::{Host as _, HostBucket as _};
    use super::*;
    use crate::caps::Capabilities;

    fn guest(kv: &Kv, namespace: &str, stores: &[&str]) -> GuestCaps {
        let stores: Vec<String> = stores.iter().map(|s| s.to_string()).collect();
        Capabilities::new(namespace, "app")
            .with_keyvalue(Some(kv), &stores)
            .guest()
    }

    fn other(e: GuestError) -> String {
        match e {
            GuestError::Other(m) => m,
            GuestError::AccessDenied => "access-denied".into(),
            GuestError::Trap(t) => format!("trap: {t}"),
        }
    }

    #[tokio::test]
    async fn a_guest_opens_only_the_stores_its_manifest_names_in_its_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let kv = Kv::embedded(&dir.path().join("kv.redb")).unwrap();
        let mut table = ResourceTable::new();
        let alpha = guest(&kv, "alpha", &["default"]);
        let mut view = KvView::new(&alpha, &mut table);
        let b = view.open("default".into()).await.ok().unwrap();
        view.set(Resource::new_borrow(b.rep()), "k".into(), b"v".to_vec())
            .await
            .ok()
            .unwrap();
        assert!(matches!(
            view.open("cache".into()).await,
            Err(GuestError::AccessDenied)
        ));
        let e = view
            .set(Resource::new_borrow(b.rep()), String::new(), Vec::new())
            .await
            .err()
            .map(other);
        assert_eq!(
            e.as_deref(),
            Some("a key is 1 to 1024 bytes; this one is 0")
        );
        view.drop(b).await.unwrap();

        // Another namespace's `default` is another store.
        let beta = guest(&kv, "beta", &["default"]);
        let mut view = KvView::new(&beta, &mut table);
        let b = view.open("default".into()).await.ok().unwrap();
        let got = view.get(Resource::new_borrow(b.rep()), "k".into()).await;
        assert_eq!(got.ok(), Some(None));

        // An app with no stores named opens none.
        let none = Capabilities::new("alpha", "app")
            .with_keyvalue(Some(&kv), &[])
            .guest();
        let mut view = KvView::new(&none, &mut table);
        assert!(matches!(
            view.open("default".into()).await,
            Err(GuestError::AccessDenied)
        ));
    }
}
