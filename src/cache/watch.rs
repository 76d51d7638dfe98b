//! One watch and one cache per kind, and the [`Hub`] that hands each change of a cache to its
//! subscribers (see the module doc of [`crate::cache`] for the flow).

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
};

use futures::{StreamExt, TryStreamExt, channel::mpsc, stream::BoxStream};
use kube::{
    Api, Client, Resource,
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use tracing::warn;

use super::lean::{Lean, Parts};
use crate::api::AppVersion;

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
pub struct Hub<K: reflector::Lookup<DynamicType = ()> + 'static> {
    store: Store<K>,
    events: Events<K>,
    subscribers: Vec<mpsc::Sender<Change<K>>>,
    pub(super) indexes: Vec<Arc<dyn Indexer<K>>>,
    /// The readiness gate and this cache's name in it: marked listed once a list is complete
    /// *and* the indexes are rebuilt from it, so no reconcile looks up an index that is behind
    /// its cache.
    listed: Option<(Arc<Readiness>, &'static str)>,
}

/// Something kept in step with a cache: updated with every change before any subscriber hears
/// of it, and rebuilt after every (re)list.
pub trait Indexer<K>: Send + Sync {
    fn apply(&self, change: &Change<K>);
    fn rebuild(&self, all: &[Arc<K>]);
}

/// A subscription to a [`Hub`].
pub type Subscription<K> = mpsc::Receiver<Change<K>>;

impl<K> Hub<K>
where
    K: reflector::Lookup<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    /// Keeps `index` in step with the cache.
    pub fn index(&mut self, index: Arc<dyn Indexer<K>>) {
        self.indexes.push(index);
    }

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
            indexes,
            listed,
        } = self;
        let mut events = events;
        // What the cache held when a (re)list began: an object deleted while the watch was
        // broken (e.g. expired, `410 Gone`) is absent from the new list, and no delete event
        // will ever say so. Reported as deleted once the list is complete.
        let mut before_list: Vec<Arc<K>> = vec![];
        while let Some(event) = events.next().await {
            let changes: Vec<Change<K>> = match event {
                Ok(watcher::Event::Apply(obj)) => store
                    .get(&ObjectRef::from(&obj))
                    .map(Change::Applied)
                    .into_iter()
                    .collect(),
                Ok(watcher::Event::Delete(obj)) => vec![Change::Deleted(Arc::new(obj))],
                // A (re)list is complete: every object, as cached now, and every object that
                // vanished since the cache was last complete.
                Ok(watcher::Event::InitDone) => {
                    let all = store.state();
                    for index in &indexes {
                        index.rebuild(&all);
                    }
                    if let Some((readiness, name)) = &listed {
                        readiness.listed(name);
                    }
                    let present: std::collections::HashSet<ObjectRef<K>> =
                        all.iter().map(|o| ObjectRef::from(&**o)).collect();
                    let vanished = std::mem::take(&mut before_list)
                        .into_iter()
                        .filter(|o| !present.contains(&ObjectRef::from(&**o)))
                        .map(Change::Deleted);
                    vanished
                        .chain(all.into_iter().map(Change::Applied))
                        .collect()
                }
                // The reflector swaps in the new list only when it is complete: the cache still
                // holds the previous one here.
                Ok(watcher::Event::Init) => {
                    before_list = store.state();
                    vec![]
                }
                Ok(watcher::Event::InitApply(_)) => vec![],
                Err(e) => {
                    warn!(kind = %K::kind(&()), error = %e, "watch failed; retrying");
                    vec![]
                }
            };
            for change in changes {
                for index in &indexes {
                    index.apply(&change);
                }
                for tx in &mut subscribers {
                    // A closed subscriber (its controller stopped) is skipped.
                    let _ = futures::SinkExt::send(tx, change.clone()).await;
                }
            }
        }
    }
}

/// One watch and one cache of every `K` the client may list. The first complete list marks
/// `name` ready. Subscribe to the hub, then run it.
pub fn watch<K>(
    client: &Client,
    config: watcher::Config,
    readiness: Arc<Readiness>,
    name: &'static str,
) -> (Store<K>, Hub<K>)
where
    K: Parts<DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync + 'static,
{
    watch_projected(client, config, readiness, name, |o: K| o)
}

/// [`watch`], caching each object as `project` makes it (read without `managedFields`, see
/// [`Lean`], and [`strip`]ped first): only what the controllers and the webhook read from the
/// cache.
pub fn watch_projected<K, C>(
    client: &Client,
    config: watcher::Config,
    readiness: Arc<Readiness>,
    name: &'static str,
    project: fn(K) -> C,
) -> (Store<C>, Hub<C>)
where
    K: Parts<DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync + 'static,
    C: reflector::Lookup<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    watch_as(
        Api::<Lean<K>>::all(client.clone()),
        config,
        readiness,
        name,
        move |Lean(mut o)| {
            strip(&mut o);
            project(o)
        },
    )
}

/// One watch of `api`, caching each object as `convert` makes it: a type that holds only what
/// is read (e.g. [`super::ManagedSecret`] for Secrets).
pub fn watch_as<S, K>(
    api: Api<S>,
    config: watcher::Config,
    readiness: Arc<Readiness>,
    name: &'static str,
    convert: impl Fn(S) -> K + Send + 'static,
) -> (Store<K>, Hub<K>)
where
    S: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
    K: reflector::Lookup<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let converted = watcher(api, config)
        .default_backoff()
        .map_ok(move |event| match event {
            watcher::Event::Apply(o) => watcher::Event::Apply(convert(o)),
            watcher::Event::Delete(o) => watcher::Event::Delete(convert(o)),
            watcher::Event::Init => watcher::Event::Init,
            watcher::Event::InitApply(o) => watcher::Event::InitApply(convert(o)),
            watcher::Event::InitDone => watcher::Event::InitDone,
        });
    let events = reflector::reflector(writer, converted);
    (
        store.clone(),
        Hub {
            store,
            events: events.boxed(),
            subscribers: vec![],
            indexes: vec![],
            listed: Some((readiness, name)),
        },
    )
}

/// Objects per page when AppVersions are listed in pages: a page is read whole before it is
/// parsed, and a version may hold a definition of up to
/// [`crate::webhook::limits::MAX_DEFINITION_BYTES`] (1 MiB), so a page holds at most about 16
/// MiB however large the app is. Streaming lists need no pages at all ([`Lists`]).
pub const VERSION_PAGE: u32 = 16;

/// How every watch of the operator gets its initial list (and each relist).
///
/// As a stream of single objects when the apiserver serves streaming lists
/// (`sendInitialEvents`: the `WatchList` feature, on by default from Kubernetes 1.34): each object
/// arrives as one watch event and is parsed and cached before the next is read, so no more than
/// one object is ever held as JSON. Otherwise in pages: kube-runtime's default of 500 objects a
/// page (kube-client reads a page whole and copies it before parsing it, and none of it is cached
/// before all of it is parsed: at 1000 apps of the benchmark's workload a page of
/// EnvironmentConfigs is about 5 MiB of JSON), and [`VERSION_PAGE`] for AppVersions, whose
/// definitions may be large.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lists {
    Streamed,
    Paged,
}

impl Lists {
    /// Asks the apiserver: one metadata-only watch of AppVersions that selects no object, with
    /// `sendInitialEvents`. Its first answer (the bookmark that ends the initial events, or a
    /// refusal) says whether it streams.
    pub async fn probe(client: &Client) -> Lists {
        let api = Api::<AppVersion>::all(client.clone());
        let params = kube::api::WatchParams::streaming_lists()
            .fields("metadata.name=.")
            .timeout(5);
        let streams = match api.watch_metadata(&params, "0").await {
            Ok(stream) => {
                let mut stream = std::pin::pin!(stream);
                matches!(stream.next().await, Some(Ok(_)))
            }
            Err(e) => {
                tracing::info!(error = %e, "the apiserver does not serve streaming lists; caches are listed in pages");
                false
            }
        };
        if streams {
            tracing::debug!("caches are listed as streams");
            Lists::Streamed
        } else {
            Lists::Paged
        }
    }

    /// `config` (its selectors and list semantic), listed this way.
    pub fn of(self, config: watcher::Config) -> watcher::Config {
        match self {
            Lists::Streamed => config.streaming_lists(),
            Lists::Paged => config,
        }
    }

    /// The watch of AppVersions: as [`Lists::of`], in pages of [`VERSION_PAGE`] when paged.
    pub fn versions(self) -> watcher::Config {
        self.of(watcher::Config::default()
            .any_semantic()
            .page_size(VERSION_PAGE))
    }
}

/// A hub with no watch behind it (tests).
#[cfg(test)]
pub(super) fn watch_nothing<K>() -> (Store<K>, Hub<K>)
where
    K: reflector::Lookup<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    let (store, _writer) = reflector::store();
    (
        store.clone(),
        Hub {
            store,
            events: futures::stream::empty().boxed(),
            subscribers: vec![],
            indexes: vec![],
            listed: None,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::fixtures::config_map;

    use k8s_openapi::{
        api::core::v1::ConfigMap, apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry,
    };
    use kube::ResourceExt;

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

    /// Records, at each rebuild, whether the readiness gate was already open.
    struct Spy {
        readiness: Arc<Readiness>,
        open_at_rebuild: Mutex<Vec<bool>>,
    }

    impl Indexer<ConfigMap> for Spy {
        fn apply(&self, _: &Change<ConfigMap>) {}
        fn rebuild(&self, _: &[Arc<ConfigMap>]) {
            self.open_at_rebuild
                .lock()
                .unwrap()
                .push(self.readiness.is_ready());
        }
    }

    #[tokio::test]
    async fn a_cache_is_ready_only_once_its_indexes_are_rebuilt_from_the_list() {
        use kube::runtime::watcher::Event;
        let readiness = Readiness::new(&["config maps"]);
        let (store, writer) = kube::runtime::reflector::store::<ConfigMap>();
        let events = [
            Event::Init,
            Event::InitApply(config_map("a", 1, "1")),
            Event::InitDone,
        ]
        .into_iter()
        .map(Ok);
        let spy = Arc::new(Spy {
            readiness: readiness.clone(),
            open_at_rebuild: Mutex::default(),
        });
        let mut hub = Hub {
            store,
            events: kube::runtime::reflector(writer, futures::stream::iter(events)).boxed(),
            subscribers: vec![],
            indexes: vec![],
            listed: Some((readiness.clone(), "config maps")),
        };
        hub.index(spy.clone());
        hub.run().await;
        assert_eq!(*spy.open_at_rebuild.lock().unwrap(), [false]);
        assert!(readiness.is_ready());
    }

    #[tokio::test]
    async fn an_object_deleted_while_the_watch_was_broken_is_reported_after_the_relist() {
        use kube::runtime::watcher::Event;
        let (a, b) = (config_map("a", 1, "1"), config_map("b", 1, "2"));
        let (store, writer) = kube::runtime::reflector::store::<ConfigMap>();
        // The first list holds a and b; the relist (after a 410) only b: a was deleted meanwhile.
        let events = [
            Event::Init,
            Event::InitApply(a.clone()),
            Event::InitApply(b.clone()),
            Event::InitDone,
            Event::Init,
            Event::InitApply(b),
            Event::InitDone,
        ]
        .into_iter()
        .map(Ok);
        let mut hub = Hub {
            store,
            events: kube::runtime::reflector(writer, futures::stream::iter(events)).boxed(),
            subscribers: vec![],
            indexes: vec![],
            listed: None,
        };
        let rx = hub.subscribe();
        hub.run().await;
        let mut seen: Vec<(bool, String)> = rx
            .map(|c| (matches!(c, Change::Applied(_)), c.object().name_any()))
            .collect()
            .await;
        let (applied, deleted) = (true, false);
        // The first list, in the cache's order; then the vanished object, then the new list.
        seen[..2].sort();
        assert_eq!(
            seen,
            [
                (applied, "a".to_string()),
                (applied, "b".to_string()),
                (deleted, "a".to_string()),
                (applied, "b".to_string()),
            ]
        );
    }
}
