//! A real, local Kubernetes control plane for tests, demos and benchmarks.
//!
//! etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, helm, KWOK and crane are
//! built from the Go module proxy at pinned versions into a cache outside the repository
//! ([`binaries`]), then started on loopback with TLS, RBAC and a generated PKI ([`cluster`]);
//! optionally with kube-scheduler and KWOK's simulated nodes, so Deployments get pods
//! ([`Options`]). Integration tests share one control plane per test binary through [`shared`]
//! (or [`shared_with_pods`]).

pub mod binaries;
pub mod cluster;
pub mod definitions;
pub mod image;
pub mod peers;
mod pki;
mod shared;

pub use binaries::{Binary, KUBERNETES_VERSION, cache_dir};
pub use cluster::{ControlPlane, Mode, Options, kubectl, local_dir};
pub use shared::{Shared, shared, shared_with_pods};
