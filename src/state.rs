//! The operator's view of the cluster: one watch and one cache per kind, shared by every
//! controller and the admission webhook.
//!
//! Each kind is listed and watched once ([`watch`]). The cache holds objects without
//! `managedFields` and kubectl's last-applied annotation (most of a typed object's size, and of
//! no use here). After the cache has applied an event, the [`Hub`] hands the cached `Arc` (no
//! copy) to every subscriber: the kind's own controller and the controllers that other kinds
//! trigger. Deletions are handed on too, so a mapper sees an object go. Subscribers filter with
//! [`changes`] so that, e.g., a status write does not wake the controllers of other kinds.

use std::{
    collections::{BTreeSet, HashMap},
    hash::{Hash, Hasher},
    sync::{Arc, Mutex},
};

use futures::{Stream, StreamExt, channel::mpsc, stream::BoxStream};
use kube::{
    Api, Resource, ResourceExt,
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use tracing::warn;

/// kubectl's client-side-apply record: a full copy of the object, never read here.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Whether every cache has its initial list. kube's `Store::wait_until_ready` keeps a single
/// waker, so concurrent waiters (every reconcile, and kube's own applier) lose wake-ups; this gate
/// is fed by the watch streams themselves and any number of tasks may wait on it.
pub struct Readiness {
    pending: Mutex<BTreeSet<&'static str>>,
    ready: tokio::sync::watch::Sender<bool>,
}

impl Readiness {
    pub fn new(caches: &[&'static str]) -> Arc<Readiness> {
        Arc::new(Readiness {
            pending: Mutex::new(caches.iter().copied().collect()),
            ready: tokio::sync::watch::Sender::new(caches.is_empty()),
        })
    }

    /// Marks `cache` as listed.
    pub fn listed(&self, cache: &'static str) {
        let mut pending = self.pending.lock().expect("readiness lock");
        if pending.remove(cache) && pending.is_empty() {
            self.ready.send_replace(true);
            tracing::info!("caches synced");
        }
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    pub async fn wait(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|ready| *ready).await;
    }
}

/// Drops what the operator never reads before an object is cached: `managedFields` and the
/// last-applied annotation.
pub fn strip<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = &mut meta.annotations {
        annotations.remove(LAST_APPLIED);
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

/// A change of a cached object, as handed to subscribers.
#[derive(Debug)]
pub enum Change<K> {
    /// Created or updated: the object as cached now.
    Applied(Arc<K>),
    /// Deleted: the object as it was last.
    Deleted(Arc<K>),
}

impl<K> Clone for Change<K> {
    fn clone(&self) -> Self {
        match self {
            Change::Applied(o) => Change::Applied(o.clone()),
            Change::Deleted(o) => Change::Deleted(o.clone()),
        }
    }
}

impl<K> Change<K> {
    pub fn object(&self) -> &Arc<K> {
        match self {
            Change::Applied(o) | Change::Deleted(o) => o,
        }
    }
}

/// How many changes a subscriber may lag behind before the hub waits for it (backpressure on
/// the watch rather than unbounded memory).
const SUBSCRIBER_BUFFER: usize = 1024;

/// The events of one kind's watch, after its cache applied them.
type Events<K> = BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>;

/// Hands each change of one kind's cache to its subscribers. Subscribe first, then run.
pub struct Hub<K: Resource<DynamicType = ()> + 'static> {
    store: Store<K>,
    events: Events<K>,
    subscribers: Vec<mpsc::Sender<Change<K>>>,
}

/// A subscription to a [`Hub`].
pub type Subscription<K> = mpsc::Receiver<Change<K>>;

impl<K> Hub<K>
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    pub fn subscribe(&mut self) -> Subscription<K> {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        self.subscribers.push(tx);
        rx
    }

    /// Drives the watch (and so the cache) and hands every change on. Ends when the watch ends.
    pub async fn run(self) {
        let Hub {
            store,
            events,
            mut subscribers,
        } = self;
        let mut events = events;
        while let Some(event) = events.next().await {
            let changes: Vec<Change<K>> = match event {
                Ok(watcher::Event::Apply(obj)) => store
                    .get(&ObjectRef::from(&obj))
                    .map(Change::Applied)
                    .into_iter()
                    .collect(),
                Ok(watcher::Event::Delete(obj)) => vec![Change::Deleted(Arc::new(obj))],
                // A (re)list is complete: every object, as cached now. Objects that vanished
                // during a relist are not reported; the controllers' own triggers cover them.
                Ok(watcher::Event::InitDone) => {
                    store.state().into_iter().map(Change::Applied).collect()
                }
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => vec![],
                Err(e) => {
                    warn!(kind = %K::kind(&()), error = %e, "watch failed; retrying");
                    vec![]
                }
            };
            for change in changes {
                for tx in &mut subscribers {
                    // A closed subscriber (its controller stopped) is skipped.
                    let _ = futures::SinkExt::send(tx, change.clone()).await;
                }
            }
        }
    }
}

/// One watch and one cache of `api`. The first complete list marks `name` ready. Subscribe to
/// the hub, then run it.
pub fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    readiness: Arc<Readiness>,
    name: &'static str,
) -> (Store<K>, Hub<K>)
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let events = reflector::reflector(
        writer,
        watcher(api, config).default_backoff().modify(strip::<K>),
    )
    .inspect(move |event| {
        if let Ok(watcher::Event::InitDone) = event {
            readiness.listed(name);
        }
    });
    (
        store.clone(),
        Hub {
            store,
            events: events.boxed(),
            subscribers: vec![],
        },
    )
}

/// The objects of a subscription whose `key` changed (or that are new, or deleted): what a
/// controller that cares only about those fields needs to see. Deletions always pass.
pub fn changes<K, T>(
    subscription: Subscription<K>,
    key: impl Fn(&K) -> T + Send + 'static,
) -> impl Stream<Item = Arc<K>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Send + Sync + 'static,
    T: Hash,
{
    let mut seen: HashMap<ObjectRef<K>, u64> = HashMap::new();
    subscription.filter_map(move |change| {
        let object = change.object().clone();
        let reference = ObjectRef::from(&*object);
        let pass = match &change {
            Change::Deleted(_) => {
                seen.remove(&reference);
                true
            }
            Change::Applied(obj) => {
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                key(obj).hash(&mut hasher);
                let value = hasher.finish();
                seen.insert(reference, value) != Some(value)
            }
        };
        futures::future::ready(pass.then_some(object))
    })
}

/// Every change of a subscription, as objects (deletions included).
pub fn all<K: Send + Sync + 'static>(
    subscription: Subscription<K>,
) -> impl Stream<Item = Arc<K>> + Send + 'static {
    subscription.map(|change| change.object().clone())
}

/// Every change of a subscription of managed Secrets, as objects; a deleted Secret's echo record
/// is dropped on the way (so the records do not outlive their Secrets).
pub fn forgetting(
    subscription: Subscription<k8s_openapi::api::core::v1::Secret>,
    echoes: Arc<Echoes>,
) -> impl Stream<Item = Arc<k8s_openapi::api::core::v1::Secret>> + Send + 'static {
    subscription.map(move |change| {
        if let Change::Deleted(secret) = &change {
            echoes.forget(&**secret);
        }
        change.object().clone()
    })
}

/// The spec generation and the deletion mark: what a controller of the object itself reacts to
/// (its own status writes change neither).
pub fn generation<K: Resource>(obj: &K) -> (Option<i64>, bool) {
    (
        obj.meta().generation,
        obj.meta().deletion_timestamp.is_some(),
    )
}

/// The resourceVersions of the operator's own writes to its managed Secrets, so that the watch
/// event a write causes does not wake the controller that made it (it already knows the result).
/// Another writer's change has another resourceVersion and passes.
#[derive(Default)]
pub struct Echoes {
    written: Mutex<HashMap<(String, String), String>>,
}

impl Echoes {
    /// Records that the operator's write left `obj` at its resourceVersion.
    pub fn record<K: Resource>(&self, obj: &K) {
        let (Some(ns), Some(rv)) = (obj.namespace(), obj.resource_version()) else {
            return;
        };
        self.written
            .lock()
            .expect("echo lock")
            .insert((ns, obj.name_any()), rv);
    }

    /// Whether `obj` is exactly as the operator's last write left it.
    pub fn is_echo<K: Resource>(&self, obj: &K) -> bool {
        let (Some(ns), Some(rv)) = (obj.namespace(), obj.resource_version()) else {
            return false;
        };
        self.written
            .lock()
            .expect("echo lock")
            .get(&(ns, obj.name_any()))
            == Some(&rv)
    }

    /// Forgets a deleted object.
    pub fn forget<K: Resource>(&self, obj: &K) {
        if let Some(ns) = obj.namespace() {
            self.written
                .lock()
                .expect("echo lock")
                .remove(&(ns, obj.name_any()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::{
        api::core::v1::ConfigMap, apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry,
    };

    fn config_map(name: &str, generation: i64, rv: &str) -> ConfigMap {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some(name.into());
        cm.metadata.namespace = Some("ns".into());
        cm.metadata.generation = Some(generation);
        cm.metadata.resource_version = Some(rv.into());
        cm
    }

    #[test]
    fn stripping_drops_managed_fields_and_the_last_applied_copy_only() {
        let mut cm = config_map("a", 1, "1");
        cm.metadata.managed_fields = Some(vec![ManagedFieldsEntry::default()]);
        cm.metadata.annotations = Some(
            [
                (LAST_APPLIED.to_string(), "{...}".to_string()),
                ("keep".to_string(), "me".to_string()),
            ]
            .into(),
        );
        strip(&mut cm);
        assert!(cm.metadata.managed_fields.is_none());
        assert_eq!(cm.annotations().keys().collect::<Vec<_>>(), ["keep"]);
    }

    #[tokio::test]
    async fn changes_pass_new_changed_and_deleted_objects_only() {
        let (mut tx, rx) = mpsc::channel(16);
        let a1 = Arc::new(config_map("a", 1, "1"));
        let a1_status = Arc::new(config_map("a", 1, "2"));
        let a2 = Arc::new(config_map("a", 2, "3"));
        for change in [
            Change::Applied(a1.clone()),
            Change::Applied(a1_status),
            Change::Applied(a2.clone()),
            Change::Deleted(a2.clone()),
        ] {
            futures::SinkExt::send(&mut tx, change).await.unwrap();
        }
        drop(tx);
        let passed: Vec<Option<String>> = changes(rx, generation)
            .map(|o| o.metadata.resource_version.clone())
            .collect()
            .await;
        assert_eq!(
            passed,
            [Some("1".into()), Some("3".into()), Some("3".into())],
            "the status-only change is filtered; the delete passes"
        );
    }

    #[test]
    fn echoes_are_the_operators_own_writes_only() {
        let echoes = Echoes::default();
        let written = config_map("s", 1, "10");
        echoes.record(&written);
        assert!(echoes.is_echo(&written));
        assert!(!echoes.is_echo(&config_map("s", 1, "11")), "another writer");
        assert!(!echoes.is_echo(&config_map("t", 1, "10")));
        echoes.forget(&written);
        assert!(!echoes.is_echo(&written));
    }
}
