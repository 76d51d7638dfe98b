//! What the operator keeps in memory of each Secret it manages (labelled
//! `app.kubernetes.io/managed-by: tooljet-operator`).
//!
//! Not the Secret, nor its `ObjectMeta`: its name, namespace and resourceVersion; of its
//! ownerReferences, what the controllers follow (kind, name, UID, controller flag: ownership is
//! judged by the owner's UID, [`crate::cache::ownership::controlled_by`]) and a digest of every field; the
//! values of the operator's own labels and of its content-hash annotation, as plain fields rather
//! than maps; a SHA-256 digest of its data, to tell an edit from the content the operator wrote;
//! and, for a stage configuration's Secret only, its constants and the names of its data
//! sources, packed into one allocation, because every version of the stage reads them
//! ([`crate::cache::stage::resolve`]): the data sources' options are read by ToolJet from the
//! Secret, never by the operator from its cache. A version's resolved Secret is read by nothing
//! but workloads.
//!
//! It is not a kube `Resource` (which must lend out a whole `ObjectMeta`, 360 bytes inline and
//! mostly empty); kube's store keys it through [`Lookup`], and the controllers are triggered by
//! its changes through `Controller::reconcile_on` ([`crate::cache::triggers::mapped`]).

use std::{borrow::Cow, collections::BTreeMap};

use k8s_openapi::{
    ByteString,
    api::core::v1::Secret,
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use kube::{
    ResourceExt,
    runtime::reflector::{Lookup, ObjectRef},
};
use sha2::{Digest, Sha256};

use crate::{
    api::{
        APP_LABEL, ENVIRONMENT_LABEL, GROUP, HASH_ANNOTATION, INPUTS_ANNOTATION, KIND_LABEL,
        MANAGED_BY_LABEL, MANAGED_BY_VALUE, SecretKind,
    },
    materialize::{DATASOURCES_KEY, FORMAT, HashKey, data_source_names, hex},
};

/// A managed Secret as cached. Built from the Secret ([`ManagedSecret::from`]); read through its
/// methods.
#[derive(Clone, Debug, PartialEq)]
pub struct ManagedSecret {
    name: Box<str>,
    namespace: Box<str>,
    resource_version: Option<Box<str>>,
    /// Its ownerReferences, as [`Owner`]s.
    owners: Box<[Owner]>,
    /// A digest of its ownerReferences as they are, every field ([`owners_digest`]): what
    /// [`ManagedSecret::carries`] compares.
    owners_digest: [u8; 16],
    /// `app.kubernetes.io/managed-by` is `tooljet-operator`.
    managed_by: bool,
    /// `tooljet.io/kind`, when one the operator writes: any other value reads as absent.
    kind: Option<SecretKind>,
    environment: Option<Box<str>>,
    app: Option<Box<str>>,
    hash: Option<Box<str>>,
    digest: [u8; 32],
    /// The inputs annotation, decoded ([`inputs_annotation`]).
    inputs: Option<[u8; 32]>,
    /// A stage configuration's data, packed ([`pack`]), its data source document reduced to
    /// the names ([`crate::materialize::data_source_names`]).
    layer: Option<Box<[u8]>>,
}

/// One ownerReference of a cached Secret: what the controllers follow it by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// The owner's kind, when it is one of the operator's (group `tooljet.io`) that owns Secrets.
    pub kind: Option<OwnerKind>,
    pub name: Box<str>,
    pub uid: Box<str>,
    /// `controller: true`.
    pub controller: bool,
}

/// The operator's kinds that own Secrets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerKind {
    EnvironmentConfig,
    AppVersion,
}

impl From<&OwnerReference> for Owner {
    fn from(o: &OwnerReference) -> Owner {
        let ours = o.api_version.split('/').next() == Some(GROUP);
        let kind = match o.kind.as_str() {
            "EnvironmentConfig" if ours => Some(OwnerKind::EnvironmentConfig),
            "AppVersion" if ours => Some(OwnerKind::AppVersion),
            _ => None,
        };
        Owner {
            kind,
            name: o.name.as_str().into(),
            uid: o.uid.as_str().into(),
            controller: o.controller == Some(true),
        }
    }
}

impl From<Secret> for ManagedSecret {
    fn from(secret: Secret) -> ManagedSecret {
        let Secret { metadata, data, .. } = secret;
        let label = |key: &str| {
            metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(key))
                .map(String::as_str)
        };
        let annotation = |key: &str| metadata.annotations.as_ref().and_then(|a| a.get(key));
        let kind = label(KIND_LABEL).and_then(SecretKind::of_label);
        let layer = (kind == Some(SecretKind::Stage)).then(|| {
            let sources = data
                .as_ref()
                .and_then(|d| d.get(DATASOURCES_KEY))
                .map(|d| data_source_names(&d.0));
            pack(data.iter().flatten().map(|(k, v)| {
                let value = match &sources {
                    Some(names) if k == DATASOURCES_KEY => names.as_slice(),
                    _ => v.0.as_slice(),
                };
                (k.as_str(), value)
            }))
        });
        let owner_references = metadata.owner_references.as_deref().unwrap_or_default();
        ManagedSecret {
            name: metadata.name.as_deref().unwrap_or_default().into(),
            namespace: metadata.namespace.as_deref().unwrap_or_default().into(),
            resource_version: metadata.resource_version.as_deref().map(Into::into),
            owners: owner_references.iter().map(Owner::from).collect(),
            owners_digest: owners_digest(owner_references),
            managed_by: label(MANAGED_BY_LABEL) == Some(MANAGED_BY_VALUE),
            environment: label(ENVIRONMENT_LABEL).map(Into::into),
            app: label(APP_LABEL).map(Into::into),
            hash: annotation(HASH_ANNOTATION).map(|v| v.as_str().into()),
            inputs: annotation(INPUTS_ANNOTATION).and_then(|v| unhex(v)),
            kind,
            digest: digest(data.as_ref()),
            layer,
        }
    }
}

impl ManagedSecret {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn resource_version(&self) -> Option<&str> {
        self.resource_version.as_deref()
    }

    /// Its ownerReferences, in order.
    pub fn owners(&self) -> &[Owner] {
        &self.owners
    }

    /// The value of one of the operator's labels (`tooljet.io/kind`, `tooljet.io/environment`,
    /// `tooljet.io/app`, `app.kubernetes.io/managed-by`); `None` for any other key. The kind and
    /// managed-by labels read as absent unless they hold a value the operator writes.
    pub fn label(&self, key: &str) -> Option<&str> {
        match key {
            KIND_LABEL => self.kind.map(SecretKind::label),
            ENVIRONMENT_LABEL => self.environment.as_deref(),
            APP_LABEL => self.app.as_deref(),
            MANAGED_BY_LABEL => self.managed_by.then_some(MANAGED_BY_VALUE),
            _ => None,
        }
    }

    /// The content-hash annotation.
    pub fn hash(&self) -> Option<&str> {
        self.hash.as_deref()
    }

    /// Whether it holds exactly `desired`'s data, labels (the operator's; others may be added),
    /// content hash and ownerReferences.
    pub fn holds(&self, desired: &Secret) -> bool {
        self.digest == digest(desired.data.as_ref()) && self.carries(&desired.metadata)
    }

    /// Whether it carries `desired`'s labels (the operator's; others may be added), content-hash
    /// annotation and ownerReferences, whatever its data.
    pub fn carries(&self, desired: &ObjectMeta) -> bool {
        let empty = BTreeMap::new();
        desired
            .labels
            .as_ref()
            .unwrap_or(&empty)
            .iter()
            .all(|(k, v)| self.label(k) == Some(v.as_str()))
            && self.hash()
                == desired
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(HASH_ANNOTATION))
                    .map(String::as_str)
            && self.owners_digest
                == owners_digest(desired.owner_references.as_deref().unwrap_or_default())
    }

    /// Whether this Secret, as it is (data and content hash), was made from `inputs`: its inputs
    /// annotation is the HMAC [`inputs_annotation`] computes for them. Only the holder of the
    /// installation's key can write a matching one, and any edit of the data or the hash
    /// annotation breaks it.
    pub fn made_from(&self, key: &HashKey, inputs: &Inputs) -> bool {
        self.inputs
            .is_some_and(|recorded| recorded == inputs_mac(key, &self.digest, self.hash(), inputs))
    }

    /// The data of a stage configuration's Secret, its data source document reduced to the
    /// data sources' names; `None` for any other Secret.
    pub fn layer(&self) -> Option<BTreeMap<String, Vec<u8>>> {
        self.layer.as_deref().map(unpack)
    }
}

/// How kube's store keys a cached Secret: by namespace and name. The key carries neither the
/// resourceVersion nor a UID (kube's default copies both into every key; neither is part of its
/// identity, and nothing here reads them from a key).
impl Lookup for ManagedSecret {
    type DynamicType = ();

    fn kind(_: &()) -> Cow<'_, str> {
        "Secret".into()
    }

    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }

    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }

    fn plural(_: &()) -> Cow<'_, str> {
        "secrets".into()
    }

    fn name(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.name))
    }

    fn namespace(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.namespace))
    }

    fn resource_version(&self) -> Option<Cow<'_, str>> {
        self.resource_version.as_deref().map(Cow::Borrowed)
    }

    fn uid(&self) -> Option<Cow<'_, str>> {
        None
    }

    fn to_object_ref(&self, _: ()) -> ObjectRef<Self> {
        ObjectRef::new(&self.name).within(&self.namespace)
    }
}

/// A digest of ownerReferences, every field of each, in order (SHA-256, first 16 bytes).
fn owners_digest(owners: &[OwnerReference]) -> [u8; 16] {
    let mut hasher = Sha256::new();
    let flag = |f: Option<bool>| match f {
        None => 0u8,
        Some(false) => 1,
        Some(true) => 2,
    };
    for o in owners {
        for field in [&o.api_version, &o.kind, &o.name, &o.uid] {
            framed(&mut hasher, field.as_bytes());
        }
        hasher.update([flag(o.controller), flag(o.block_owner_deletion)]);
    }
    let full: [u8; 32] = hasher.finalize().into();
    full[..16].try_into().expect("16 of 32 bytes")
}

/// What a stage configuration's Secret is made from, besides [`crate::materialize::FORMAT`].
pub struct Inputs<'a> {
    /// The EnvironmentConfig's UID and generation.
    pub owner_uid: &'a str,
    pub generation: i64,
    /// Every Secret it references, by name, at the resourceVersion whose data was used.
    pub secrets: Vec<(&'a str, u64)>,
}

/// The value of [`INPUTS_ANNOTATION`] for `secret` (its data and content-hash annotation as
/// they will be written) made from `inputs`: HMAC-SHA256, hex, with the installation's key.
pub fn inputs_annotation(key: &HashKey, secret: &Secret, inputs: &Inputs) -> String {
    let hash = secret
        .annotations()
        .get(HASH_ANNOTATION)
        .map(String::as_str);
    hex(&inputs_mac(
        key,
        &digest(secret.data.as_ref()),
        hash,
        inputs,
    ))
}

fn inputs_mac(key: &HashKey, digest: &[u8; 32], hash: Option<&str>, inputs: &Inputs) -> [u8; 32] {
    let (format, generation) = (FORMAT.to_be_bytes(), inputs.generation.to_be_bytes());
    let versions: Vec<[u8; 8]> = inputs
        .secrets
        .iter()
        .map(|(_, v)| v.to_be_bytes())
        .collect();
    let mut parts: Vec<&[u8]> = vec![
        INPUTS_ANNOTATION.as_bytes(),
        &format,
        inputs.owner_uid.as_bytes(),
        &generation,
        hash.unwrap_or_default().as_bytes(),
        digest,
    ];
    for ((name, _), version) in inputs.secrets.iter().zip(&versions) {
        parts.push(name.as_bytes());
        parts.push(version);
    }
    key.mac(parts)
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

/// Feeds `bytes` to `hasher` after their length, so that no two sequences of fields hash alike.
fn framed(hasher: &mut Sha256, bytes: &[u8]) {
    hasher.update((bytes.len() as u64).to_le_bytes());
    hasher.update(bytes);
}

/// SHA-256 of a Secret's data: every key and value, length-prefixed, in key order.
fn digest(data: Option<&BTreeMap<String, ByteString>>) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for (k, v) in data.into_iter().flatten() {
        framed(&mut hasher, k.as_bytes());
        framed(&mut hasher, &v.0);
    }
    hasher.finalize().into()
}

/// A Secret's data as one buffer: per entry, the key's and the value's lengths (u32, little
/// endian) and bytes, in the order given. (A Secret is at most 1 MiB.) A map of a few short
/// entries takes one small allocation instead of a tree node and two allocations per entry.
pub fn pack<'a, T>(entries: impl Iterator<Item = (&'a str, T)> + Clone) -> Box<[u8]>
where
    T: AsRef<[u8]>,
{
    let size = entries
        .clone()
        .map(|(k, v)| 8 + k.len() + v.as_ref().len())
        .sum();
    let mut out = Vec::with_capacity(size);
    for (k, v) in entries {
        let v = v.as_ref();
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        out.extend_from_slice(v);
    }
    out.into_boxed_slice()
}

/// The map [`pack`] packed.
pub fn unpack(mut packed: &[u8]) -> BTreeMap<String, Vec<u8>> {
    fn take<'a>(buf: &mut &'a [u8]) -> &'a [u8] {
        let (len, rest) = buf.split_at(4);
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        let (item, rest) = rest.split_at(len);
        *buf = rest;
        item
    }
    let mut data = BTreeMap::new();
    while !packed.is_empty() {
        let key = String::from_utf8_lossy(take(&mut packed)).into_owned();
        data.insert(key, take(&mut packed).to_vec());
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{RESOLVED_SECRET_KIND, STAGE_SECRET_KIND};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn secret(kind: &str) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some("tooljet.staging.crm".into()),
                namespace: Some("ns".into()),
                resource_version: Some("7".into()),
                uid: Some("secret-uid".into()),
                labels: Some(
                    [
                        (MANAGED_BY_LABEL, "tooljet-operator"),
                        (KIND_LABEL, kind),
                        (ENVIRONMENT_LABEL, "staging"),
                        (APP_LABEL, "crm"),
                    ]
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .into(),
                ),
                annotations: Some([(HASH_ANNOTATION.to_string(), "h1".to_string())].into()),
                owner_references: Some(vec![OwnerReference {
                    api_version: "tooljet.io/v1alpha1".into(),
                    kind: "EnvironmentConfig".into(),
                    name: "crm-staging".into(),
                    uid: "cfg-uid".into(),
                    controller: Some(true),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            data: Some(
                [("A", &b"1"[..]), ("B", b""), ("C\u{e9}", b"\x00\xff")]
                    .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
                    .into(),
            ),
            type_: Some("Opaque".into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_stage_secret_keeps_the_names_of_its_data_sources_not_their_options() {
        let mut stage = secret(STAGE_SECRET_KIND);
        let document = serde_json::json!({
            "db": { "kind": "postgresql", "options": { "host": "canary-7f3a9c.internal", "password": "{{secrets.DB}}" } },
            "api": { "kind": "restapi", "options": { "url": "https://canary-7f3a9c" } },
        });
        stage.data.as_mut().unwrap().insert(
            DATASOURCES_KEY.into(),
            ByteString(serde_json::to_vec(&document).unwrap()),
        );
        let cached = ManagedSecret::from(stage.clone());
        let layer = cached.layer().unwrap();
        assert_eq!(layer[DATASOURCES_KEY], br#"{"api":null,"db":null}"#);
        assert_eq!(layer["A"], b"1", "constants are kept whole");
        assert!(
            !format!("{cached:?}").contains("canary"),
            "no option is kept"
        );
        // The digest is of the whole data: an edit of an option is still told from ours.
        assert!(cached.holds(&stage));
        let mut edited = stage.clone();
        edited.data.as_mut().unwrap().insert(
            DATASOURCES_KEY.into(),
            ByteString(br#"{"api":{"kind":"restapi"},"db":{"kind":"mysql"}}"#.to_vec()),
        );
        assert!(!cached.holds(&edited));
        // A document that is not an object is kept as it is (nothing reads a name from it).
        let mut odd = stage;
        odd.data
            .as_mut()
            .unwrap()
            .insert(DATASOURCES_KEY.into(), ByteString(b"[1]".to_vec()));
        assert_eq!(
            ManagedSecret::from(odd).layer().unwrap()[DATASOURCES_KEY],
            b"[1]"
        );
    }

    #[test]
    fn a_stage_secret_keeps_its_data_and_a_resolved_one_only_a_digest() {
        let stage = secret(STAGE_SECRET_KIND);
        let cached = ManagedSecret::from(stage.clone());
        let data: BTreeMap<String, Vec<u8>> = stage
            .data
            .clone()
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        assert_eq!(cached.layer(), Some(data));
        assert_eq!(cached.label(KIND_LABEL), Some(STAGE_SECRET_KIND));
        assert_eq!(cached.label("app.kubernetes.io/name"), None);
        assert_eq!(cached.hash(), Some("h1"));
        assert_eq!(cached.name(), "tooljet.staging.crm");
        assert_eq!(cached.namespace(), "ns");
        assert_eq!(cached.resource_version(), Some("7"));
        assert_eq!(
            cached.owners(),
            [Owner {
                kind: Some(OwnerKind::EnvironmentConfig),
                name: "crm-staging".into(),
                uid: "cfg-uid".into(),
                controller: true,
            }]
        );
        // Keyed by namespace and name only.
        let key = Lookup::to_object_ref(&cached, ());
        assert_eq!(key, ObjectRef::new("tooljet.staging.crm").within("ns"));
        assert_eq!((key.extra.resource_version, key.extra.uid), (None, None));
        assert!(cached.holds(&stage));
        let resolved = ManagedSecret::from(secret("resolved-config"));
        assert_eq!(resolved.layer(), None);
        assert_eq!(resolved.label(KIND_LABEL), Some(RESOLVED_SECRET_KIND));
        assert_eq!(resolved.label(MANAGED_BY_LABEL), Some(MANAGED_BY_VALUE));
    }

    #[test]
    fn owners_are_followed_by_kind_only_in_the_operators_group() {
        let mut s = secret(RESOLVED_SECRET_KIND);
        let reference = |api_version: &str, kind: &str, controller| OwnerReference {
            api_version: api_version.into(),
            kind: kind.into(),
            name: "v1".into(),
            uid: "u".into(),
            controller,
            ..Default::default()
        };
        s.metadata.owner_references = Some(vec![
            reference("example.com/v1", "AppVersion", None),
            reference("tooljet.io/v1alpha1", "AppVersion", Some(false)),
            reference("tooljet.io/v1alpha1", "ToolJetApp", Some(true)),
        ]);
        let owners = ManagedSecret::from(s).owners().to_vec();
        let kinds: Vec<_> = owners.iter().map(|o| (o.kind, o.controller)).collect();
        assert_eq!(
            kinds,
            [
                (None, false),
                (Some(OwnerKind::AppVersion), false),
                (None, true)
            ]
        );
    }

    #[test]
    fn a_kind_or_manager_the_operator_never_writes_reads_as_absent() {
        let mut foreign = secret("environment-config-copy");
        foreign
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(MANAGED_BY_LABEL.into(), "someone-else".into());
        let cached = ManagedSecret::from(foreign.clone());
        assert_eq!(cached.label(KIND_LABEL), None);
        assert_eq!(cached.label(MANAGED_BY_LABEL), None);
        assert_eq!(cached.layer(), None, "not a stage Secret: no data kept");
        assert!(!cached.holds(&secret(STAGE_SECRET_KIND)));
        assert!(!cached.holds(&foreign), "its labels are not the operator's");
    }

    #[test]
    fn any_difference_in_data_labels_hash_or_owners_is_seen() {
        let desired = secret("resolved-config");
        let mut edited = desired.clone();
        edited
            .data
            .as_mut()
            .unwrap()
            .insert("A".into(), ByteString(b"2".to_vec()));
        assert!(!ManagedSecret::from(edited).holds(&desired));
        // The key and value boundaries count: "A"="1" is not "A1"="".
        let mut shifted = desired.clone();
        shifted.data = Some([("A1".to_string(), ByteString(vec![]))].into());
        let mut unshifted = desired.clone();
        unshifted.data = Some([("A".to_string(), ByteString(b"1".to_vec()))].into());
        assert!(!ManagedSecret::from(shifted).holds(&unshifted));
        let mut relabelled = desired.clone();
        relabelled.labels_mut().remove(APP_LABEL);
        assert!(!ManagedSecret::from(relabelled).holds(&desired));
        let mut rehashed = desired.clone();
        rehashed
            .annotations_mut()
            .insert(HASH_ANNOTATION.into(), "h2".into());
        assert!(!ManagedSecret::from(rehashed).holds(&desired));
        let mut disowned = desired.clone();
        disowned.metadata.owner_references = None;
        assert!(!ManagedSecret::from(disowned).holds(&desired));
        // Every field of an ownerReference counts, not only those the controllers follow.
        let mut unblocked = desired.clone();
        unblocked.owner_references_mut()[0].block_owner_deletion = Some(false);
        assert!(!ManagedSecret::from(unblocked).holds(&desired));
        let mut regrouped = desired.clone();
        regrouped.owner_references_mut()[0].api_version = "tooljet.io/v1".into();
        assert!(!ManagedSecret::from(regrouped).holds(&desired));
        // Labels the operator does not set may be added by others.
        let mut labelled = desired.clone();
        labelled
            .labels_mut()
            .insert("team".into(), "payments".into());
        assert!(ManagedSecret::from(labelled).holds(&desired));
    }

    #[test]
    fn the_inputs_annotation_holds_only_for_the_same_inputs_content_and_key() {
        let key = HashKey::new(&[3; HashKey::LEN]).unwrap();
        let secrets = [("creds", 41), ("stripe", 7)];
        let inputs = |uid, generation, secrets: &[(&'static str, u64)]| Inputs {
            owner_uid: uid,
            generation,
            secrets: secrets.to_vec(),
        };
        let mut written = secret(STAGE_SECRET_KIND);
        let value = inputs_annotation(&key, &written, &inputs("cfg-uid", 3, &secrets));
        written
            .annotations_mut()
            .insert(INPUTS_ANNOTATION.into(), value);
        let cached = ManagedSecret::from(written.clone());
        assert!(cached.made_from(&key, &inputs("cfg-uid", 3, &secrets)));

        // Other inputs: a rotation, another generation, another config, another Secret set.
        assert!(!cached.made_from(&key, &inputs("cfg-uid", 3, &[("creds", 42), ("stripe", 7)])));
        assert!(!cached.made_from(&key, &inputs("cfg-uid", 4, &secrets)));
        assert!(!cached.made_from(&key, &inputs("other-uid", 3, &secrets)));
        assert!(!cached.made_from(&key, &inputs("cfg-uid", 3, &secrets[..1])));
        // Another installation's key.
        let other = HashKey::new(&[4; HashKey::LEN]).unwrap();
        assert!(!cached.made_from(&other, &inputs("cfg-uid", 3, &secrets)));
        // An edit of the data or of the hash annotation, however the annotation is kept.
        let mut edited = written.clone();
        edited
            .data
            .as_mut()
            .unwrap()
            .insert("A".into(), ByteString(b"planted".to_vec()));
        assert!(!ManagedSecret::from(edited).made_from(&key, &inputs("cfg-uid", 3, &secrets)));
        let mut rehashed = written.clone();
        rehashed
            .annotations_mut()
            .insert(HASH_ANNOTATION.into(), "h2".into());
        assert!(!ManagedSecret::from(rehashed).made_from(&key, &inputs("cfg-uid", 3, &secrets)));
        // No annotation, or not one of ours.
        let mut forged = written.clone();
        forged
            .annotations_mut()
            .insert(INPUTS_ANNOTATION.into(), "00".repeat(32));
        assert!(!ManagedSecret::from(forged).made_from(&key, &inputs("cfg-uid", 3, &secrets)));
        assert!(
            !ManagedSecret::from(secret(STAGE_SECRET_KIND))
                .made_from(&key, &inputs("cfg-uid", 3, &secrets))
        );
    }
}
