//! Who owns a Secret: judged by its controller ownerReference's UID, alike for a Secret read from
//! the API and a cached [`ManagedSecret`]; and which Secret is a stage's configuration.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use super::{config::CachedConfig, secret::ManagedSecret};

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

/// Whether `secret` is the configuration of (namespace `ns`, app `scope` or the workspace,
/// `environment`) (pure): its controller ownerReference is `owner`, by UID, and `owner` is a live
/// EnvironmentConfig of exactly that key. `owner` is the cached config of the reference's name.
/// The label and the name prove nothing; nor does an ownerReference to a config of another key
/// (a reference is only a uid anyone can copy, so the key must match too).
pub fn is_stage_config<S: Controlled>(
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
