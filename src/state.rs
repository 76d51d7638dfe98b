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

use futures::{Stream, StreamExt, TryStreamExt, channel::mpsc, stream::BoxStream};
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use tracing::warn;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use sha2::{Digest, Sha256};

use crate::{
    api::{AppVersion, Approval, PromotionPolicy, ToolJetApp},
    cached::CachedConfig,
    lean::{Lean, Parts},
    managed::ManagedSecret,
    materialize::{HashKey, Materialized, merge_layers, secret_name},
};

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
    indexes: Vec<Arc<dyn Indexer<K>>>,
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
/// is read (e.g. [`crate::managed::ManagedSecret`] for Secrets).
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
/// MiB however large the app is. Streaming lists need no pages at all ([`version_watch`]).
pub const VERSION_PAGE: u32 = 16;

/// How AppVersions are listed and watched: as a stream of single objects when the apiserver
/// serves streaming lists (`sendInitialEvents`, on by default from Kubernetes 1.34, and in 1.32),
/// so that no more than one version is ever read at once; in pages of [`VERSION_PAGE`] otherwise.
/// One metadata-only watch that selects no object asks the apiserver, whose first answer (the
/// bookmark that ends the initial events, or a refusal) says whether it streams.
pub async fn version_watch(client: &Client) -> watcher::Config {
    let paged = watcher::Config::default()
        .any_semantic()
        .page_size(VERSION_PAGE);
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
            tracing::info!(error = %e, "the apiserver does not serve streaming lists; AppVersions are listed in pages");
            false
        }
    };
    if streams {
        tracing::debug!("AppVersions are listed as a stream");
        paged.streaming_lists()
    } else {
        paged
    }
}

/// A 64-bit hash of `value` (SipHash with fixed keys: the same in every process and run).
fn hash64<T: Hash + ?Sized>(value: &T) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// The hash of an object's (namespace, name): a small fixed-size key for the per-object records
/// kept beside the caches (change filters, own-write records). Where two objects could share one
/// (a 64-bit collision), those records only ever let an extra event through.
fn object_hash<K: reflector::Lookup>(obj: &K) -> u64 {
    name_hash(obj.namespace().as_deref(), obj.name().as_deref())
}

/// [`object_hash`] of the object `namespace`/`name`.
pub fn name_hash(namespace: Option<&str>, name: Option<&str>) -> u64 {
    hash64(&(namespace, name))
}

/// The objects of one kind by a key derived from each (an object may have several keys), kept in
/// step with the cache by its [`Hub`]: lookups by key instead of scans of the whole cache.
///
/// Keys are held as 64-bit hashes and names as boxed strings (a few dozen bytes per object and
/// key, not an `ObjectRef` and a copy of every key). A lookup checks each object it returns
/// against the key itself, so a hash collision can never return an object of another key.
pub struct Index<K: Resource<DynamicType = ()> + 'static, Q> {
    keys: fn(&K) -> Vec<Q>,
    inner: std::sync::RwLock<IndexMaps>,
}

#[derive(Default)]
struct IndexMaps {
    /// Key hash -> the names under it, sorted.
    by_key: HashMap<u64, Vec<Box<str>>>,
    /// `namespace/name` -> the hashes of the object's keys.
    keys_of: HashMap<Box<str>, Box<[u64]>>,
}

/// The `keys_of` entry of an object: its namespace and name (neither may contain a `/`).
fn qualified<K: Resource>(obj: &K) -> String {
    format!(
        "{}/{}",
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.meta().name.as_deref().unwrap_or_default()
    )
}

impl<K, Q> Index<K, Q>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
    Q: Hash + Eq + Clone,
{
    pub fn new(keys: fn(&K) -> Vec<Q>) -> Arc<Self> {
        Arc::new(Index {
            keys,
            inner: std::sync::RwLock::new(IndexMaps::default()),
        })
    }

    fn remove(maps: &mut IndexMaps, qualified: &str, name: &str) {
        for key in maps.keys_of.remove(qualified).unwrap_or_default() {
            if let Some(names) = maps.by_key.get_mut(&key) {
                if let Ok(i) = names.binary_search_by(|n| (**n).cmp(name)) {
                    names.remove(i);
                }
                if names.is_empty() {
                    maps.by_key.remove(&key);
                }
            }
        }
    }

    fn insert(&self, maps: &mut IndexMaps, obj: &K) {
        let name = obj.meta().name.as_deref().unwrap_or_default();
        let mut keys: Vec<u64> = (self.keys)(obj).iter().map(hash64).collect();
        keys.sort_unstable();
        keys.dedup();
        for key in &keys {
            let names = maps.by_key.entry(*key).or_default();
            if let Err(i) = names.binary_search_by(|n| (**n).cmp(name)) {
                names.insert(i, name.into());
            }
        }
        maps.keys_of
            .insert(qualified(obj).into_boxed_str(), keys.into_boxed_slice());
    }

    /// The names of the objects filed under `key`'s hash (in the key's namespace), sorted. May
    /// include objects of another key of the same hash: [`Index::objects`] checks.
    fn names(&self, key: &Q) -> Vec<Box<str>> {
        let maps = self.inner.read().expect("index lock");
        maps.by_key.get(&hash64(key)).cloned().unwrap_or_default()
    }

    /// The cached objects under `key`, in namespace `ns`, sorted by name.
    pub fn objects(&self, store: &Store<K>, ns: &str, key: &Q) -> Vec<Arc<K>> {
        self.names(key)
            .iter()
            .filter_map(|name| store.get(&ObjectRef::new(name).within(ns)))
            .filter(|obj| (self.keys)(obj).contains(key))
            .collect()
    }
}

impl<K, Q> Indexer<K> for Index<K, Q>
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    Q: Hash + Eq + Clone + Send + Sync,
{
    fn apply(&self, change: &Change<K>) {
        let mut maps = self.inner.write().expect("index lock");
        let obj = change.object();
        let name = obj.meta().name.as_deref().unwrap_or_default();
        Self::remove(&mut maps, &qualified(&**obj), name);
        if let Change::Applied(obj) = change {
            self.insert(&mut maps, obj);
        }
    }

    fn rebuild(&self, all: &[Arc<K>]) {
        let mut maps = self.inner.write().expect("index lock");
        *maps = IndexMaps::default();
        for obj in all {
            self.insert(&mut maps, obj);
        }
    }
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
    // Object hash -> hash of its key when last passed: 16 bytes per object. Objects whose hashes
    // collide share an entry, which can only let an extra change through.
    let mut seen: HashMap<u64, u64> = HashMap::new();
    subscription.filter_map(move |change| {
        let object = change.object().clone();
        let reference = object_hash(&*object);
        let pass = match &change {
            Change::Deleted(_) => {
                seen.remove(&reference);
                true
            }
            Change::Applied(obj) => {
                let value = hash64(&key(obj));
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

/// The deletions of a subscription, as the objects were last (including those a relist finds
/// gone).
pub fn deletions<K: Send + Sync + 'static>(
    subscription: Subscription<K>,
) -> impl Stream<Item = Arc<K>> + Send + 'static {
    subscription.filter_map(|change| {
        futures::future::ready(match change {
            Change::Deleted(obj) => Some(obj),
            Change::Applied(_) => None,
        })
    })
}

/// Every change of a subscription of managed Secrets, as objects; a deleted Secret's echo record
/// is dropped on the way (so the records do not outlive their Secrets).
pub fn forgetting(
    subscription: Subscription<ManagedSecret>,
    echoes: Arc<Echoes>,
) -> impl Stream<Item = Arc<ManagedSecret>> + Send + 'static {
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
///
/// Kept as hashes (object -> resourceVersion, 16 bytes per Secret). A resourceVersion is never
/// reused, so an event is taken for an echo only when its resourceVersion hashes like the one
/// written (a 64-bit collision); two Secrets whose names collide share an entry, which can only
/// make an echo pass as a change.
#[derive(Default)]
pub struct Echoes {
    written: Mutex<HashMap<u64, u64>>,
}

impl Echoes {
    /// Records that the operator's write left `obj` at its resourceVersion.
    pub fn record<K: reflector::Lookup>(&self, obj: &K) {
        let (Some(_), Some(rv)) = (obj.namespace(), obj.resource_version()) else {
            return;
        };
        self.written
            .lock()
            .expect("echo lock")
            .insert(object_hash(obj), hash64(&*rv));
    }

    /// Whether `obj` is exactly as the operator's last write left it.
    pub fn is_echo<K: reflector::Lookup>(&self, obj: &K) -> bool {
        let (Some(_), Some(rv)) = (obj.namespace(), obj.resource_version()) else {
            return false;
        };
        self.written
            .lock()
            .expect("echo lock")
            .get(&object_hash(obj))
            == Some(&hash64(&*rv))
    }

    /// Forgets a deleted object.
    pub fn forget<K: reflector::Lookup>(&self, obj: &K) {
        if obj.namespace().is_some() {
            self.written
                .lock()
                .expect("echo lock")
                .remove(&object_hash(obj));
        }
    }
}

/// A hub with no watch behind it (tests).
#[cfg(test)]
fn watch_nothing<K>() -> (Store<K>, Hub<K>)
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

/// (namespace, app or none for workspace-wide, stage): what makes two EnvironmentConfigs rivals.
pub type ConfigKey = (String, Option<String>, String);

/// The lookups the controllers and the admission webhook make, by index rather than by scanning
/// a whole cache: configurations by key and by stage, versions by app and by stage, apps that
/// roll workloads out.
#[derive(Clone)]
pub struct Lookups {
    pub configs: Store<CachedConfig>,
    pub versions: Store<AppVersion>,
    pub apps: Store<ToolJetApp>,
    pub policies: Store<PromotionPolicy>,
    pub approvals: Store<Approval>,
    configs_by_key: Arc<Index<CachedConfig, ConfigKey>>,
    configs_by_stage: Arc<Index<CachedConfig, (String, String)>>,
    versions_by_app: Arc<Index<AppVersion, (String, String)>>,
    versions_by_stage: Arc<Index<AppVersion, (String, String)>>,
    versions_by_app_stage: Arc<Index<AppVersion, (String, String, String)>>,
    apps_with_rollout: Arc<Index<ToolJetApp, String>>,
    policies_by_namespace: Arc<Index<PromotionPolicy, String>>,
    approvals_by_version: Arc<Index<Approval, (String, String)>>,
}

impl Lookups {
    /// The lookups over these caches; their hubs keep the indexes in step.
    pub fn new(
        (configs, config_hub): (&Store<CachedConfig>, &mut Hub<CachedConfig>),
        (versions, version_hub): (&Store<AppVersion>, &mut Hub<AppVersion>),
        (apps, app_hub): (&Store<ToolJetApp>, &mut Hub<ToolJetApp>),
        (policies, policy_hub): (&Store<PromotionPolicy>, &mut Hub<PromotionPolicy>),
        (approvals, approval_hub): (&Store<Approval>, &mut Hub<Approval>),
    ) -> Lookups {
        let configs_by_key = Index::new(|c: &CachedConfig| {
            vec![(
                c.namespace().unwrap_or_default(),
                c.spec.app.clone(),
                c.spec.environment.clone(),
            )]
        });
        let configs_by_stage = Index::new(|c: &CachedConfig| {
            vec![(
                c.namespace().unwrap_or_default(),
                c.spec.environment.clone(),
            )]
        });
        let versions_by_app = Index::new(|v: &AppVersion| {
            vec![(v.namespace().unwrap_or_default(), v.spec.app.clone())]
        });
        let versions_by_stage = Index::new(|v: &AppVersion| {
            vec![(
                v.namespace().unwrap_or_default(),
                v.spec.environment.clone(),
            )]
        });
        let versions_by_app_stage = Index::new(|v: &AppVersion| {
            vec![(
                v.namespace().unwrap_or_default(),
                app_label_value(&v.spec.app),
                v.spec.environment.clone(),
            )]
        });
        let apps_with_rollout = Index::new(|a: &ToolJetApp| {
            if a.spec.rollout.is_empty() {
                vec![]
            } else {
                vec![a.namespace().unwrap_or_default()]
            }
        });
        let policies_by_namespace =
            Index::new(|p: &PromotionPolicy| vec![p.namespace().unwrap_or_default()]);
        let approvals_by_version = Index::new(|a: &Approval| {
            vec![(a.namespace().unwrap_or_default(), a.spec.version.clone())]
        });
        policy_hub.index(policies_by_namespace.clone());
        approval_hub.index(approvals_by_version.clone());
        config_hub.index(configs_by_key.clone());
        config_hub.index(configs_by_stage.clone());
        version_hub.index(versions_by_app.clone());
        version_hub.index(versions_by_stage.clone());
        version_hub.index(versions_by_app_stage.clone());
        app_hub.index(apps_with_rollout.clone());
        Lookups {
            configs: configs.clone(),
            versions: versions.clone(),
            apps: apps.clone(),
            policies: policies.clone(),
            approvals: approvals.clone(),
            configs_by_key,
            configs_by_stage,
            versions_by_app,
            versions_by_stage,
            versions_by_app_stage,
            apps_with_rollout,
            policies_by_namespace,
            approvals_by_version,
        }
    }

    /// Lookups over fixed objects (unit tests of mappers and reconcile helpers).
    #[cfg(test)]
    pub fn of(configs: &[CachedConfig], versions: &[AppVersion], apps: &[ToolJetApp]) -> Lookups {
        fn cache<K>(objects: &[K]) -> (Store<K>, Vec<Arc<K>>)
        where
            K: Resource<DynamicType = ()> + Clone + 'static,
        {
            let (reader, mut writer) = reflector::store();
            for o in objects {
                writer.apply_watcher_event(&watcher::Event::Apply(o.clone()));
            }
            let all = reader.state();
            (reader, all)
        }
        let (configs, all_configs) = cache(configs);
        let (versions, all_versions) = cache(versions);
        let (apps, all_apps) = cache(apps);
        let (_, mut config_hub) = watch_nothing::<CachedConfig>();
        let (_, mut version_hub) = watch_nothing::<AppVersion>();
        let (_, mut app_hub) = watch_nothing::<ToolJetApp>();
        let (policies, mut policy_hub) = watch_nothing::<PromotionPolicy>();
        let (approvals, mut approval_hub) = watch_nothing::<Approval>();
        let lookups = Lookups::new(
            (&configs, &mut config_hub),
            (&versions, &mut version_hub),
            (&apps, &mut app_hub),
            (&policies, &mut policy_hub),
            (&approvals, &mut approval_hub),
        );
        for index in &config_hub.indexes {
            index.rebuild(&all_configs);
        }
        for index in &version_hub.indexes {
            index.rebuild(&all_versions);
        }
        for index in &app_hub.indexes {
            index.rebuild(&all_apps);
        }
        lookups
    }

    /// The live configs of (namespace, app or workspace, stage): one, or rivals.
    pub fn configs_for(&self, ns: &str, app: Option<&str>, stage: &str) -> Vec<Arc<CachedConfig>> {
        let key = (ns.to_string(), app.map(str::to_string), stage.to_string());
        self.configs_by_key
            .objects(&self.configs, ns, &key)
            .into_iter()
            .filter(|c| c.metadata.deletion_timestamp.is_none())
            .collect()
    }

    /// Every config of a stage in a namespace (workspace-wide and every app's).
    pub fn configs_in(&self, ns: &str, stage: &str) -> Vec<Arc<CachedConfig>> {
        let key = (ns.to_string(), stage.to_string());
        self.configs_by_stage.objects(&self.configs, ns, &key)
    }

    /// The versions of an app.
    pub fn versions_of(&self, ns: &str, app: &str) -> Vec<Arc<AppVersion>> {
        let key = (ns.to_string(), app.to_string());
        self.versions_by_app.objects(&self.versions, ns, &key)
    }

    /// The versions in a stage (of every app of the namespace).
    pub fn versions_in(&self, ns: &str, stage: &str) -> Vec<Arc<AppVersion>> {
        let key = (ns.to_string(), stage.to_string());
        self.versions_by_stage.objects(&self.versions, ns, &key)
    }

    /// The versions of the app whose `tooljet.io/app` label value is `app_label` (see
    /// [`app_label_value`]) in a stage: what an app-scoped stage Secret's change matters to.
    pub fn versions_of_app_in(
        &self,
        ns: &str,
        app_label: &str,
        stage: &str,
    ) -> Vec<Arc<AppVersion>> {
        let key = (ns.to_string(), app_label.to_string(), stage.to_string());
        self.versions_by_app_stage.objects(&self.versions, ns, &key)
    }

    /// The PromotionPolicies of a namespace.
    pub fn policies_in(&self, ns: &str) -> Vec<Arc<PromotionPolicy>> {
        self.policies_by_namespace
            .objects(&self.policies, ns, &ns.to_string())
    }

    /// The Approvals naming a version (by metadata.name; callers check the owner UID).
    pub fn approvals_of(&self, ns: &str, version: &str) -> Vec<Arc<Approval>> {
        let key = (ns.to_string(), version.to_string());
        self.approvals_by_version.objects(&self.approvals, ns, &key)
    }

    /// The apps of a namespace with a rollout.
    pub fn apps_with_rollout(&self, ns: &str) -> Vec<Arc<ToolJetApp>> {
        self.apps_with_rollout
            .objects(&self.apps, ns, &ns.to_string())
    }
}

/// The value of the `tooljet.io/app` label for an app: the name when it fits a label value (63
/// characters), else a prefix and a hash of the whole name.
pub fn app_label_value(app: &str) -> String {
    if app.len() <= 63 {
        return app.to_string();
    }
    let digest: String = Sha256::digest(app.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{}-{digest}", app[..46].trim_end_matches(['.', '-']))
}

// Ownership and stage configurations: what the controllers and the webhook both judge by.

/// A Secret's namespace and controller ownerReference, read alike from a Secret and from a
/// cached [`ManagedSecret`]: what ownership is judged by.
pub trait Controlled {
    fn secret_namespace(&self) -> Option<&str>;
    /// The name and UID of the ownerReference with `controller: true`, if any.
    fn controller(&self) -> Option<(&str, &str)>;
}

impl Controlled for k8s_openapi::api::core::v1::Secret {
    fn secret_namespace(&self) -> Option<&str> {
        self.metadata.namespace.as_deref()
    }

    fn controller(&self) -> Option<(&str, &str)> {
        self.metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o: &&OwnerReference| o.controller == Some(true))
            .map(|o| (o.name.as_str(), o.uid.as_str()))
    }
}

impl Controlled for ManagedSecret {
    fn secret_namespace(&self) -> Option<&str> {
        Some(self.namespace())
    }

    fn controller(&self) -> Option<(&str, &str)> {
        self.owners()
            .iter()
            .find(|o| o.controller)
            .map(|o| (&*o.name, &*o.uid))
    }
}

/// Whether `secret`'s controller is the object with `uid`: the only test of ownership. A label
/// or a name proves nothing (anyone who may create Secrets can copy them); an object without a
/// uid (not stored yet) owns nothing.
pub fn controlled_by<S: Controlled>(secret: &S, uid: Option<&str>) -> bool {
    uid.is_some_and(|uid| secret.controller().is_some_and(|(_, owner)| owner == uid))
}

/// `trigger`, each item mapped to the objects it wakes, for `Controller::reconcile_on`: the way
/// to trigger a controller from a stream whose items are not a kube `Resource` (a cached
/// [`ManagedSecret`]; `watches_shared_stream` asks for one). Such a reconcile's logged reason is
/// "unknown" rather than the related object.
pub fn mapped<T, K, I>(
    trigger: impl Stream<Item = T> + Send + 'static,
    mapper: impl Fn(T) -> I + Send + 'static,
) -> impl Stream<Item = ObjectRef<K>> + Send + 'static
where
    K: reflector::Lookup + 'static,
    I: IntoIterator<Item = ObjectRef<K>>,
    I::IntoIter: Send + 'static,
{
    trigger.flat_map(move |item| futures::stream::iter(mapper(item)))
}

/// The merged configuration of (app, environment) from the materialised stage Secrets, workspace
/// first, hashed with `key`. Reads only the caches. A Secret of a stage's name is a layer only
/// when [`is_stage_config`] says so; any other is ignored, its content never read.
pub fn resolve(
    key: &HashKey,
    managed: &Store<ManagedSecret>,
    configs: &Store<CachedConfig>,
    ns: &str,
    app: &str,
    environment: &str,
) -> Materialized {
    let layers: Vec<BTreeMap<String, Vec<u8>>> = [None, Some(app)]
        .into_iter()
        .filter_map(|scope| {
            let secret =
                managed.get(&ObjectRef::new(&secret_name(scope, environment)).within(ns))?;
            let owner = secret
                .controller()
                .and_then(|(name, _)| configs.get(&ObjectRef::new(name).within(ns)));
            is_stage_config(&*secret, owner.as_deref(), ns, scope, environment).then_some(secret)
        })
        .map(|s| s.layer().unwrap_or_default())
        .collect();
    merge_layers(key, &layers.iter().collect::<Vec<_>>())
}

/// Why configuration `c` cannot be materialised (its Ready message: the missing Secret or key
/// and the command that creates it), when that is so; a configuration refused as a second one
/// for its stage (reason Conflict) is not counted. What [`explain_missing`] tells, and so what a
/// version's status depends on of its stage's configurations.
pub fn unmaterialisable(c: &CachedConfig) -> Option<&str> {
    let ready = c
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")?;
    (ready.status == "False" && ready.reason != "Conflict").then_some(ready.message.as_str())
}

/// `missing` ([`crate::materialize::missing_requirements`]) as phrases, each one that an
/// EnvironmentConfig of (app or workspace, stage) declares but that is not in the stage's
/// configuration because the config cannot be materialised told as such: the config, and its
/// Ready message (which names the missing Secret or key and the command that creates it). Reads
/// only the caches.
pub fn explain_missing(
    lookups: &Lookups,
    ns: &str,
    app: &str,
    stage: &str,
    missing: Vec<crate::materialize::Missing>,
) -> Vec<String> {
    use crate::materialize::Missing;
    if missing.is_empty() {
        return vec![];
    }
    let broken: Vec<(String, crate::api::EnvironmentConfigSpec, String)> = lookups
        .configs_for(ns, Some(app), stage)
        .into_iter()
        .chain(lookups.configs_for(ns, None, stage))
        .filter_map(|c| {
            let why = unmaterialisable(&c)?.to_string();
            Some((c.name_any(), c.spec().ok()?, why))
        })
        .collect();
    missing
        .into_iter()
        .map(|missing| {
            let declared_by = broken.iter().find(|(_, spec, _)| match &missing {
                Missing::DataSource(name) => spec.data_sources.iter().any(|d| &d.name == name),
                Missing::Secret(name) => {
                    spec.constants.iter().any(|c| &c.name == name)
                        || spec.data_sources.iter().any(|d| {
                            d.secret_options
                                .keys()
                                .any(|o| crate::lifecycle::constants::option_constant(&d.name, o) == *name)
                        })
                }
                Missing::Constant(name) => spec.constants.iter().any(|c| &c.name == name),
            });
            let phrase = missing.to_string();
            match declared_by {
                Some((config, _, message)) => format!(
                    "{phrase} (declared by EnvironmentConfig {config}, which cannot be materialised: {message})"
                ),
                None => phrase,
            }
        })
        .collect()
}

/// Whether `secret` is the configuration of (namespace `ns`, app `scope` or the workspace,
/// `environment`) (pure): its controller ownerReference is `owner`, by UID, and `owner` is a live
/// EnvironmentConfig of exactly that key. `owner` is the cached config of the reference's name.
/// The label and the name prove nothing; nor does an ownerReference to a config of another key
/// (a reference is only a uid anyone can copy, so the key must match too).
pub(crate) fn is_stage_config<S: Controlled>(
    secret: &S,
    owner: Option<&CachedConfig>,
    ns: &str,
    scope: Option<&str>,
    environment: &str,
) -> bool {
    owner.is_some_and(|cfg| {
        controlled_by(secret, cfg.metadata.uid.as_deref())
            && cfg.metadata.deletion_timestamp.is_none()
            && cfg.metadata.namespace.as_deref() == Some(ns)
            && secret.secret_namespace() == Some(ns)
            && cfg.spec.app.as_deref() == scope
            && cfg.spec.environment == environment
    })
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

    #[test]
    fn an_index_follows_changes_deletions_and_relists() {
        fn by_label(cm: &ConfigMap) -> Vec<(String, String)> {
            cm.labels()
                .get("team")
                .map(|t| vec![(cm.namespace().unwrap_or_default(), t.clone())])
                .unwrap_or_default()
        }
        let index = Index::new(by_label);
        let labelled = |name: &str, team: &str| {
            let mut cm = config_map(name, 1, "1");
            cm.metadata.labels = Some([("team".to_string(), team.to_string())].into());
            Arc::new(cm)
        };
        let key = |team: &str| ("ns".to_string(), team.to_string());
        let names = |team: &str| -> Vec<String> {
            index
                .names(&key(team))
                .iter()
                .map(|n| n.to_string())
                .collect()
        };
        index.apply(&Change::Applied(labelled("a", "crm")));
        index.apply(&Change::Applied(labelled("b", "crm")));
        assert_eq!(names("crm"), ["a", "b"]);
        // A key change moves it.
        index.apply(&Change::Applied(labelled("a", "billing")));
        assert_eq!(names("crm"), ["b"]);
        assert_eq!(names("billing"), ["a"]);
        index.apply(&Change::Deleted(labelled("b", "crm")));
        assert!(names("crm").is_empty());
        index.rebuild(&[labelled("c", "crm")]);
        assert_eq!(names("crm"), ["c"]);
        assert!(names("billing").is_empty());
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
