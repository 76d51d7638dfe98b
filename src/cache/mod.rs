//! The operator's view of the cluster: one watch and one cache per kind, shared by every
//! controller and the admission webhook, and what is kept beside the caches.
//!
//! How a change flows from the apiserver to a reconcile:
//!
//! ```text
//!  apiserver ── watch (one per kind, watch.rs) ──► projection (lean.rs, config.rs, secret.rs)
//!                                                     │  only what is read: no managedFields,
//!                                                     │  a config's entries as JSON bytes, a
//!                                                     ▼  managed Secret as a digest
//!                                               kube reflector Store  ◄──── Lookups (lookups.rs)
//!                                                     │                      reads by index
//!                                                     ▼
//!                                    Hub (watch.rs): after the store applied the event
//!                                      1. every Index (index.rs) applies the change
//!                                      2. every subscriber gets the cached Arc (no copy)
//!                                                     │
//!                       triggers.rs: filter or map    ▼
//!                       changes(key) / all / deletions / forgetting(echoes) / mapped
//!                                                     │
//!                                                     ▼
//!                    Controller::for_shared_stream / watches_shared_stream / reconcile_on
//!                                                     │
//!                                                     ▼
//!                     reconcile: reads Lookups, ownership.rs, stage.rs, refs.rs; writes;
//!                     records its own Secret writes in Echoes (echoes.rs) so their
//!                     events do not wake it again
//! ```
//!
//! A (re)list ends in `InitDone`: the Hub rebuilds every index from the whole cache, marks the
//! cache listed in [`Readiness`] (no reconcile and no admission review runs before every cache
//! is), and reports objects that vanished while the watch was broken as deleted.
//!
//! | file | one idea |
//! |---|---|
//! | `watch.rs` | the watches, the [`Hub`], [`Readiness`], how AppVersions are listed |
//! | `lean.rs`, `config.rs`, `secret.rs` | projections: what is kept of an object ([`Lean`], [`CachedConfig`], [`ManagedSecret`]) |
//! | `index.rs` | [`Index`]: objects by a derived key, kept in step by the Hub |
//! | `lookups.rs` | [`Lookups`]: the indexed reads the controllers and the webhook make |
//! | `triggers.rs` | which changes wake which controller |
//! | `echoes.rs` | [`Echoes`]: the operator's own Secret writes, so their events do not wake it; [`StatusEchoes`]: its status writes, so a pass ahead of the cache does not repeat one |
//! | `ownership.rs` | who owns a Secret (by UID), and which Secret is a stage's configuration |
//! | `stage.rs` | a stage's configuration as the caches hold it, and why something is missing |
//! | `refs.rs` | [`RefIndex`]: referenced Secrets -> their referrers, versions and values |

pub mod config;
pub mod echoes;
pub mod index;
pub mod lean;
pub mod lookups;
pub mod ownership;
pub mod refs;
pub mod secret;
pub mod stage;
pub mod triggers;
pub mod watch;

pub use config::CachedConfig;
pub use echoes::{Echoes, StatusEchoes};
pub use index::Index;
pub use lean::Lean;
pub use lookups::{Hubs, Lookups};
pub use ownership::{Controlled, controlled_by};
pub use refs::RefIndex;
pub use secret::ManagedSecret;
pub use watch::{Change, Hub, Lists, Readiness, VERSION_PAGE};

/// Objects for the cache's unit tests: a ConfigMap stands in for any cached kind.
#[cfg(test)]
mod fixtures {
    use k8s_openapi::api::core::v1::ConfigMap;

    /// A ConfigMap in namespace `ns` with a name, generation and resourceVersion.
    pub fn config_map(name: &str, generation: i64, rv: &str) -> ConfigMap {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some(name.into());
        cm.metadata.namespace = Some("ns".into());
        cm.metadata.generation = Some(generation);
        cm.metadata.resource_version = Some(rv.into());
        cm
    }
}
