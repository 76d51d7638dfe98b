//! The webhook's serving certificate: loaded from files (cert-manager, a mounted Secret) or
//! provisioned by the operator itself (a CA and a serving certificate kept in a Secret shared by
//! every replica, and the webhook configurations' `caBundle` kept current). Either way the
//! certificate is reloaded when it changes, without a restart.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result, anyhow, bail};
use k8s_openapi::{
    ByteString,
    api::{
        admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration},
        core::v1::Secret,
    },
};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::{
    crypto::ring::sign::any_supported_type,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use serde_json::json;
use tracing::{info, warn};

use crate::api::{MANAGED_BY_LABEL, MANAGED_BY_VALUE};

/// How long a provisioned serving certificate is valid, and when it is renewed.
const SERVING_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How often the certificate source is checked for a rotation: the Secret (an API read), or the
/// files (a local read, cheap enough to pick up a cert-manager rotation within seconds).
pub const RECHECK: Duration = Duration::from_secs(30);
pub const FILE_RECHECK: Duration = Duration::from_secs(5);

/// The serving certificate, swappable at run time.
#[derive(Debug, Default)]
pub struct ReloadingResolver {
    current: RwLock<Option<Arc<CertifiedKey>>>,
    /// The PEM it was built from, to tell a rotation from a re-read.
    pem: RwLock<Option<(String, String)>>,
}

impl ReloadingResolver {
    /// Installs a certificate chain and key (PEM) when they differ from the current ones.
    /// Returns whether anything changed.
    pub fn install(&self, cert_pem: &str, key_pem: &str) -> Result<bool> {
        if self
            .pem
            .read()
            .expect("lock")
            .as_ref()
            .is_some_and(|(c, k)| c == cert_pem && k == key_pem)
        {
            return Ok(false);
        }
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| anyhow!("webhook certificate is not valid PEM: {e}"))?;
        if certs.is_empty() {
            bail!("webhook certificate file holds no certificate");
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| anyhow!("webhook key is not valid PEM: {e}"))?;
        let signing_key =
            any_supported_type(&key).map_err(|e| anyhow!("unsupported webhook key: {e}"))?;
        let certified = CertifiedKey::new(certs, signing_key);
        // A certificate and key read while a rotation replaces them may not belong together:
        // serving them would fail every handshake. Keep the current pair; the next check reads
        // the new one whole.
        certified.keys_match().map_err(|e| {
            anyhow!("the webhook key does not match its certificate (read mid-rotation?): {e}")
        })?;
        *self.current.write().expect("lock") = Some(Arc::new(certified));
        *self.pem.write().expect("lock") = Some((cert_pem.to_string(), key_pem.to_string()));
        Ok(true)
    }

    pub fn is_loaded(&self) -> bool {
        self.current.read().expect("lock").is_some()
    }
}

impl ResolvesServerCert for ReloadingResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().expect("lock").clone()
    }
}

/// Where the serving certificate comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// `tls.crt` and `tls.key` in a directory (cert-manager or any mounted Secret).
    Files { dir: PathBuf },
    /// Provisioned by the operator into Secret `secret` of `namespace`, for `hosts` (DNS names or
    /// IP addresses); the `caBundle` of the named webhook configurations is kept current.
    SelfManaged {
        namespace: String,
        secret: String,
        hosts: Vec<String>,
        configurations: Vec<String>,
    },
}

/// First and longest wait between attempts to load the certificate at start.
const INITIAL_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// Loads the certificate (retrying with backoff until it succeeds), then keeps it current:
/// every `RECHECK` (`FILE_RECHECK` for files), and at once whenever a webhook configuration it maintains changes (e.g. a
/// `helm upgrade` that resets its caBundle).
pub async fn run(client: Client, source: Source, resolver: Arc<ReloadingResolver>) -> Result<()> {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    // A transient API error at start must not leave the replica without a certificate: retry
    // with backoff until one is loaded (readiness stays false meanwhile, and liveness fails once
    // the replica has been unready for too long, so a replica that cannot recover is restarted).
    let mut delay = INITIAL_RETRY;
    let mut attempts = 0u32;
    while let Err(e) = sync(&client, &source, &resolver).await {
        attempts += 1;
        warn!(error = %format!("{e:#}"), attempts, retry_in = ?delay, "loading the webhook serving certificate failed; retrying");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_RETRY);
    }
    let (names, recheck) = match &source {
        Source::SelfManaged { configurations, .. } => (configurations.clone(), RECHECK),
        Source::Files { .. } => (vec![], FILE_RECHECK),
    };
    let mut changes = futures::stream::select_all(names.iter().flat_map(|name| {
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        [
            watcher(
                Api::<ValidatingWebhookConfiguration>::all(client.clone()),
                config.clone(),
            )
            .default_backoff()
            .touched_objects()
            .map(|_| ())
            .boxed(),
            watcher(
                Api::<MutatingWebhookConfiguration>::all(client.clone()),
                config,
            )
            .default_backoff()
            .touched_objects()
            .map(|_| ())
            .boxed(),
        ]
    }));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(recheck) => {}
            Some(()) = changes.next() => {}
        }
        if let Err(e) = sync(&client, &source, &resolver).await {
            warn!(error = %format!("{e:#}"), "webhook certificate check failed; keeping the current certificate");
        }
    }
}

async fn sync(client: &Client, source: &Source, resolver: &ReloadingResolver) -> Result<()> {
    match source {
        Source::Files { dir } => {
            let cert = tokio::fs::read_to_string(dir.join("tls.crt"))
                .await
                .with_context(|| format!("reading {}/tls.crt", dir.display()))?;
            let key = tokio::fs::read_to_string(dir.join("tls.key"))
                .await
                .with_context(|| format!("reading {}/tls.key", dir.display()))?;
            if resolver.install(&cert, &key)? {
                info!(dir = %dir.display(), "webhook serving certificate loaded");
            }
        }
        Source::SelfManaged {
            namespace,
            secret,
            hosts,
            configurations,
        } => {
            let bundle = ensure_secret(client, namespace, secret, hosts).await?;
            if resolver.install(&bundle.cert, &bundle.key)? {
                info!(secret = %secret, "webhook serving certificate loaded");
            }
            for name in configurations {
                sync_ca_bundle(client, name, bundle.ca.as_bytes()).await?;
            }
        }
    }
    Ok(())
}

/// The PEM contents of the webhook's TLS Secret.
#[derive(Clone, Debug)]
pub struct Bundle {
    pub ca: String,
    pub ca_key: String,
    pub cert: String,
    pub key: String,
}

impl Bundle {
    fn from_secret(secret: &Secret) -> Option<Bundle> {
        let data = secret.data.as_ref()?;
        let text = |k: &str| {
            data.get(k)
                .and_then(|v| String::from_utf8(v.0.clone()).ok())
        };
        Some(Bundle {
            ca: text("ca.crt")?,
            ca_key: text("ca.key")?,
            cert: text("tls.crt")?,
            key: text("tls.key")?,
        })
    }

    fn to_data(&self) -> BTreeMap<String, ByteString> {
        [
            ("ca.crt", &self.ca),
            ("ca.key", &self.ca_key),
            ("tls.crt", &self.cert),
            ("tls.key", &self.key),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
        .collect()
    }
}

/// Reads the Secret, provisioning or renewing it when needed. Replicas race safely: writes use
/// create / resourceVersion-guarded replace, and the loser re-reads.
async fn ensure_secret(
    client: &Client,
    namespace: &str,
    name: &str,
    hosts: &[String],
) -> Result<Bundle> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    for _ in 0..3 {
        let existing = api.get_opt(name).await?;
        let current = existing.as_ref().and_then(Bundle::from_secret);
        if let Some(bundle) = &current
            && still_good(bundle, hosts)
        {
            return Ok(bundle.clone());
        }
        // Renew the serving certificate with the same CA when the CA is usable, else start over.
        let bundle = match current.as_ref().and_then(|b| reissue(b, hosts).ok()) {
            Some(b) => b,
            None => generate(hosts)?,
        };
        let mut secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(namespace.to_string()),
                labels: Some([(MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string())].into()),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            data: Some(bundle.to_data()),
            ..Default::default()
        };
        let written = match existing {
            None => api.create(&PostParams::default(), &secret).await,
            Some(old) => {
                secret.metadata.resource_version = old.resource_version();
                api.replace(name, &PostParams::default(), &secret).await
            }
        };
        match written {
            Ok(_) => {
                info!(secret = %name, ?hosts, "provisioned the webhook serving certificate");
                return Ok(bundle);
            }
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    bail!("could not provision Secret {namespace}/{name}: it kept changing under us")
}

fn still_good(bundle: &Bundle, hosts: &[String]) -> bool {
    let Ok((not_after, sans)) = inspect(&bundle.cert) else {
        return false;
    };
    let mut wanted: Vec<String> = hosts.to_vec();
    wanted.sort();
    let fresh = not_after
        .duration_since(SystemTime::now())
        .is_ok_and(|left| left > RENEW_BEFORE);
    fresh && sans == wanted
}

/// The expiry and sorted SANs (DNS names and IPs as text) of a PEM certificate.
fn inspect(cert_pem: &str) -> Result<(SystemTime, Vec<String>)> {
    use x509_parser::{extensions::GeneralName, pem::parse_x509_pem};
    let (_, pem) =
        parse_x509_pem(cert_pem.as_bytes()).map_err(|e| anyhow!("not a PEM certificate: {e}"))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| anyhow!("not an X.509 certificate: {e}"))?;
    let not_after = cert.validity().not_after.timestamp();
    let expiry = SystemTime::UNIX_EPOCH + Duration::from_secs(not_after.max(0) as u64);
    let mut sans: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_string()),
                    GeneralName::IPAddress(bytes) => match bytes.len() {
                        4 => Some(
                            std::net::IpAddr::from(<[u8; 4]>::try_from(*bytes).ok()?).to_string(),
                        ),
                        16 => Some(
                            std::net::IpAddr::from(<[u8; 16]>::try_from(*bytes).ok()?).to_string(),
                        ),
                        _ => None,
                    },
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    sans.sort();
    Ok((expiry, sans))
}

fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + lifetime;
}

fn ca_params() -> CertificateParams {
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "tooljet-operator webhook CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca
}

/// A new CA and a serving certificate for `hosts`.
pub fn generate(hosts: &[String]) -> Result<Bundle> {
    let ca_key = KeyPair::generate()?;
    let mut ca = ca_params();
    validity(&mut ca, CA_VALIDITY);
    let ca_cert = ca.self_signed(&ca_key)?;
    let (cert, key) = serving(hosts, &Issuer::new(ca, &ca_key))?;
    Ok(Bundle {
        ca: ca_cert.pem(),
        ca_key: ca_key.serialize_pem(),
        cert,
        key,
    })
}

/// A new serving certificate from the existing CA (the caBundle stays valid).
fn reissue(bundle: &Bundle, hosts: &[String]) -> Result<Bundle> {
    let ca_key = KeyPair::from_pem(&bundle.ca_key)?;
    let (ca_expiry, _) = inspect(&bundle.ca)?;
    if ca_expiry
        .duration_since(SystemTime::now())
        .map_or(true, |left| left < SERVING_VALIDITY + RENEW_BEFORE)
    {
        bail!("the CA expires too soon to sign a new certificate");
    }
    let issuer = Issuer::from_ca_cert_pem(&bundle.ca, &ca_key)?;
    let (cert, key) = serving(hosts, &issuer)?;
    Ok(Bundle {
        cert,
        key,
        ..bundle.clone()
    })
}

fn serving(hosts: &[String], issuer: &Issuer<'_, &KeyPair>) -> Result<(String, String)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(
        DnType::CommonName,
        hosts
            .first()
            .map(String::as_str)
            .unwrap_or("tooljet-operator"),
    );
    for host in hosts {
        params
            .subject_alt_names
            .push(match host.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(host.clone().try_into()?),
            });
    }
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    validity(&mut params, SERVING_VALIDITY);
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Sets `caBundle` on every webhook of the validating and mutating configurations named `name`
/// (whichever exist), when it differs.
async fn sync_ca_bundle(client: &Client, name: &str, ca: &[u8]) -> Result<()> {
    let ca = ByteString(ca.to_vec());
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    if let Some(cfg) = validating.get_opt(name).await? {
        let configs = cfg.webhooks.iter().flatten().map(|w| &w.client_config);
        patch_stale(&validating, name, configs, &ca).await?;
    }
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    if let Some(cfg) = mutating.get_opt(name).await? {
        let configs = cfg.webhooks.iter().flatten().map(|w| &w.client_config);
        patch_stale(&mutating, name, configs, &ca).await?;
    }
    Ok(())
}

/// JSON-patches the `caBundle` of each webhook (by index) whose client config lacks `ca`.
async fn patch_stale<'a, K>(
    api: &Api<K>,
    name: &str,
    configs: impl Iterator<Item = &'a k8s_openapi::api::admissionregistration::v1::WebhookClientConfig>,
    ca: &ByteString,
) -> Result<()>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let stale: Vec<usize> = configs
        .enumerate()
        .filter(|(_, c)| c.ca_bundle.as_ref() != Some(ca))
        .map(|(i, _)| i)
        .collect();
    if !stale.is_empty() {
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Json::<()>(ca_patch(&stale, ca)?),
        )
        .await?;
        info!(configuration = %name, kind = %K::kind(&()), "caBundle updated");
    }
    Ok(())
}

fn ca_patch(indexes: &[usize], ca: &ByteString) -> Result<json_patch::Patch> {
    let ops: Vec<serde_json::Value> = indexes
        .iter()
        .map(|i| json!({ "op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": ca }))
        .collect();
    Ok(serde_json::from_value(serde_json::Value::Array(ops))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts() -> Vec<String> {
        vec![
            "tooljet-operator-webhook.tooljet-system.svc".into(),
            "127.0.0.1".into(),
        ]
    }

    #[test]
    fn a_generated_bundle_loads_and_covers_its_hosts() {
        let b = generate(&hosts()).unwrap();
        assert!(still_good(&b, &hosts()));
        assert!(
            !still_good(&b, &["other.svc".to_string()]),
            "a host change needs a new certificate"
        );
        let resolver = ReloadingResolver::default();
        assert!(resolver.install(&b.cert, &b.key).unwrap());
        assert!(
            !resolver.install(&b.cert, &b.key).unwrap(),
            "the same certificate is not reinstalled"
        );
        assert!(resolver.is_loaded());
    }

    #[test]
    fn reissue_keeps_the_ca() {
        let b = generate(&hosts()).unwrap();
        let renewed = reissue(&b, &["new.svc".to_string()]).unwrap();
        assert_eq!(renewed.ca, b.ca);
        assert_ne!(renewed.cert, b.cert);
        assert!(still_good(&renewed, &["new.svc".to_string()]));
    }

    #[test]
    fn a_key_of_another_certificate_is_rejected_and_the_current_pair_kept() {
        let (a, b) = (generate(&hosts()).unwrap(), generate(&hosts()).unwrap());
        let resolver = ReloadingResolver::default();
        assert!(resolver.install(&a.cert, &a.key).unwrap());
        let mixed = resolver.install(&b.cert, &a.key).unwrap_err();
        assert!(mixed.to_string().contains("does not match"), "{mixed:#}");
        assert!(
            !resolver.install(&a.cert, &a.key).unwrap(),
            "the matching pair stays installed"
        );
    }

    #[test]
    fn garbage_is_rejected_not_installed() {
        let resolver = ReloadingResolver::default();
        assert!(resolver.install("not pem", "nope").is_err());
        assert!(!resolver.is_loaded());
    }
}
