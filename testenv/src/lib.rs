//! A real, local Kubernetes control plane for tests, demos and benchmarks.
//!
//! etcd, kube-apiserver, kube-controller-manager, kubectl and helm are built from the Go module
//! proxy at pinned versions into a cache outside the repository ([`binaries`]), then started on
//! loopback with TLS, RBAC and a generated PKI ([`cluster`]). Integration tests share one control
//! plane per test binary through [`shared`].

pub mod binaries;
pub mod cluster;
mod pki;
mod shared;

pub use binaries::{Binary, KUBERNETES_VERSION, cache_dir};
pub use cluster::{ControlPlane, Mode, kubectl, local_dir};
pub use shared::{Shared, shared};
