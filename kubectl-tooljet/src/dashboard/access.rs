//! Who may reach the dashboard, and whose credentials its API calls carry.
//!
//! [`Guard`] keeps other local processes and web pages out: the Host header must be one the
//! server answers to (a page on another site that rebinds its DNS name to 127.0.0.1 sends its
//! own name), a laptop dashboard needs the random token of its printed URL (exchanged for an
//! HttpOnly, SameSite=Strict cookie named after its port, so two dashboards on one machine keep
//! theirs), and every write must come from the page's own origin and carry the CSRF token of
//! the viewer's CSRF cookie (double submit: any replica checks it, and it survives a viewer's
//! token being refreshed by their proxy).
//!
//! [`Access`] gives each request a [`Cluster`] acting as the person: the kubeconfig's (laptop),
//! or one built from the viewer's own bearer token (`--forward-token`).

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http::{HeaderMap, Method, header};
use kube::{Client, Config, config::AuthInfo};
use sha2::{Digest, Sha256};

use super::Options;
use tooljet_operator::materialize::hex;

use crate::{
    cluster::Cluster,
    error::{Error, Result},
};

/// The laptop dashboard's cookie (holds the URL's token), suffixed with its port.
pub const TOKEN_COOKIE: &str = "tooljet_dashboard";
/// The in-cluster dashboard's cookie (holds a token the viewer pasted on the sign-in page).
pub const SESSION_COOKIE: &str = "tooljet_dashboard_session";
/// The CSRF cookie whose value every form carries (suffixed with the port on a laptop).
pub const CSRF_COOKIE: &str = "tooljet_csrf";

/// 32 random bytes, hex-encoded (as the operator makes its hash key).
pub fn random_token() -> Result<String> {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::Api("no random bytes for the dashboard's token".into()))?;
    Ok(hex(&bytes))
}

/// Compares secrets without an early exit on the first differing byte.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Why a request is turned away, with the status and the words the person sees.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// 400: the Host header names another site.
    ForeignHost(String),
    /// 401: no token (laptop) or no credential (in the cluster).
    NoToken,
    /// 403: a write from another origin, or without the page's CSRF token.
    ForeignOrigin,
}

impl Refusal {
    pub fn status(&self) -> u16 {
        match self {
            Refusal::ForeignHost(_) => 400,
            Refusal::NoToken => 401,
            Refusal::ForeignOrigin => 403,
        }
    }

    pub fn message(&self) -> String {
        match self {
            Refusal::ForeignHost(h) => format!(
                "this dashboard does not answer to the host {h:?}; open the address kubectl tooljet dashboard printed"
            ),
            Refusal::NoToken => "this dashboard needs the link kubectl tooljet dashboard printed (it carries a token); open that link".into(),
            Refusal::ForeignOrigin => "a change must be made from this dashboard's own pages; reload the page and try again".into(),
        }
    }
}

/// The checks every request passes before a handler runs.
pub struct Guard {
    /// The laptop dashboard's URL token (none with --forward-token).
    token: Option<String>,
    /// The cookies' names: the token's (laptop) and the CSRF one.
    token_cookie: String,
    csrf_cookie: String,
    /// Host header values accepted (none: any, for --forward-token without --allowed-host).
    hosts: Option<Vec<String>>,
    /// The URL to open first.
    first: String,
    /// Cookies are `Secure`: served over TLS, or in the cluster (HTTPS at the viewer's browser,
    /// whether here or at the proxy).
    secure: bool,
}

impl Guard {
    pub fn new(addr: SocketAddr, options: &Options, tls: bool) -> Result<Guard> {
        let port = addr.port();
        let scheme = if tls { "https" } else { "http" };
        // The address as a URL host: the loopback name a browser resolves, or the literal.
        let own = match addr.ip() {
            ip if ip.is_unspecified() || ip == std::net::Ipv4Addr::LOCALHOST => {
                format!("127.0.0.1:{port}")
            }
            std::net::IpAddr::V6(ip) => format!("[{ip}]:{port}"),
            ip => format!("{ip}:{port}"),
        };
        if options.forward_token {
            let hosts = (!options.allowed_hosts.is_empty()).then(|| options.allowed_hosts.clone());
            return Ok(Guard {
                token: None,
                token_cookie: SESSION_COOKIE.into(),
                csrf_cookie: CSRF_COOKIE.into(),
                hosts,
                first: format!("{scheme}://{own}/"),
                secure: true,
            });
        }
        let token = random_token()?;
        let mut hosts = vec![own.clone(), format!("localhost:{port}")];
        if own != format!("127.0.0.1:{port}") && addr.ip().is_loopback() {
            hosts.push(format!("127.0.0.1:{port}"));
        }
        Ok(Guard {
            first: format!("{scheme}://{own}/?token={token}"),
            token: Some(token),
            token_cookie: format!("{TOKEN_COOKIE}_{port}"),
            csrf_cookie: format!("{CSRF_COOKIE}_{port}"),
            hosts: Some(hosts),
            secure: tls,
        })
    }

    /// Whether viewers bring their own tokens (--forward-token) rather than the URL's.
    pub fn forwarding(&self) -> bool {
        self.token.is_none()
    }

    /// The URL to open first: with the token on a laptop.
    pub fn first_url(&self) -> &str {
        &self.first
    }

    /// The Host header, if it is one this server answers to.
    pub fn host<'a>(&self, headers: &'a HeaderMap) -> std::result::Result<&'a str, Refusal> {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        match &self.hosts {
            Some(allowed) if !allowed.iter().any(|a| a.eq_ignore_ascii_case(host)) => {
                Err(Refusal::ForeignHost(host.to_string()))
            }
            _ => Ok(host),
        }
    }

    /// Whether the URL's `token` query parameter is this dashboard's token (laptop only).
    pub fn url_token_matches(&self, query: Option<&str>) -> bool {
        let (Some(token), Some(query)) = (&self.token, query) else {
            return false;
        };
        query
            .split('&')
            .filter_map(|kv| kv.strip_prefix("token="))
            .any(|t| same_secret(t, token))
    }

    /// The cookie that carries the token after the first visit.
    pub fn token_cookie(&self) -> Option<String> {
        self.token
            .as_ref()
            .map(|t| self.cookie(&self.token_cookie, t))
    }

    /// A pasted token's cookie (in the cluster), or its removal (`None`).
    pub fn session_cookie(&self, token: Option<&str>) -> String {
        match token {
            Some(t) => self.cookie(SESSION_COOKIE, t),
            None => format!("{}; Max-Age=0", self.cookie(SESSION_COOKIE, "")),
        }
    }

    /// The viewer's CSRF token (their cookie's), or a new one with the cookie that sets it.
    pub fn csrf(&self, headers: &HeaderMap) -> Result<(String, Option<String>)> {
        match cookie(headers, &self.csrf_cookie) {
            Some(c) if c.len() == 64 && c.bytes().all(|b| b.is_ascii_hexdigit()) => Ok((c, None)),
            _ => {
                let fresh = random_token()?;
                let set = self.cookie(&self.csrf_cookie, &fresh);
                Ok((fresh, Some(set)))
            }
        }
    }

    /// A `Set-Cookie` value: HttpOnly, SameSite=Strict, `Secure` over TLS.
    pub fn cookie(&self, name: &str, value: &str) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict{secure}")
    }

    /// The credential this request proves: the laptop token's cookie, or (in the cluster) the
    /// bearer token from the proxy's header or the sign-in cookie.
    pub fn credential(&self, headers: &HeaderMap) -> std::result::Result<String, Refusal> {
        match &self.token {
            Some(token) => match cookie(headers, &self.token_cookie) {
                Some(c) if same_secret(&c, token) => Ok(c),
                _ => Err(Refusal::NoToken),
            },
            None => bearer(headers)
                .or_else(|| cookie(headers, SESSION_COOKIE))
                .filter(|t| !t.is_empty())
                .ok_or(Refusal::NoToken),
        }
    }

    /// A write must name this page's origin (browsers send `Origin` on every POST).
    pub fn check_origin(
        &self,
        method: &Method,
        headers: &HeaderMap,
        host: &str,
    ) -> std::result::Result<(), Refusal> {
        if matches!(*method, Method::GET | Method::HEAD) {
            return Ok(());
        }
        let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
        let own = [format!("http://{host}"), format!("https://{host}")];
        match origin {
            Some(o) if own.iter().any(|x| x.eq_ignore_ascii_case(o)) => Ok(()),
            _ => Err(Refusal::ForeignOrigin),
        }
    }
}

/// A cookie's value from the request's `Cookie` headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

/// Clients built from viewers' tokens are kept this long (a connection pool each).
const CLIENT_TTL: Duration = Duration::from_secs(300);
const MAX_CLIENTS: usize = 256;

/// A cluster handle acting as one viewer, and who the apiserver says the viewer is.
pub struct Acting {
    pub cluster: Cluster,
    pub user: Option<String>,
}

impl std::ops::Deref for Acting {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.cluster
    }
}

impl std::ops::DerefMut for Acting {
    fn deref_mut(&mut self) -> &mut Cluster {
        &mut self.cluster
    }
}

/// A forwarded token's client and identity, kept for a while.
pub struct Session {
    client: Client,
    user: Option<String>,
    at: Instant,
}

/// Whose credentials the dashboard's API calls carry.
pub enum Access {
    /// The person's kubeconfig (the laptop dashboard).
    Local {
        cluster: Cluster,
        user: Option<String>,
    },
    /// Each viewer's bearer token, on a kubeconfig (or in-cluster) config stripped of its own
    /// credentials.
    Forwarding {
        config: Box<Config>,
        clients: Mutex<HashMap<String, Session>>,
    },
}

impl Access {
    pub async fn local(cluster: Cluster) -> Access {
        let user = crate::lifecycle::whoami(&cluster).await;
        Access::Local { cluster, user }
    }

    /// `config` without any credential of its own: only the viewers' tokens are ever sent.
    pub fn forwarding(mut config: Config) -> Access {
        config.auth_info = AuthInfo::default();
        Access::Forwarding {
            config: Box::new(config),
            clients: Mutex::new(HashMap::new()),
        }
    }

    pub fn local_user(&self) -> Option<&str> {
        match self {
            Access::Local { user, .. } => user.as_deref(),
            Access::Forwarding { .. } => None,
        }
    }

    /// A cluster handle for `namespace` acting as the viewer whose `credential` this is. A
    /// forwarded token's client is kept (for its connection pool), with the identity the
    /// apiserver gave it, only once the apiserver has accepted the token, so unknown tokens never
    /// crowd out real viewers.
    pub async fn cluster(&self, credential: &str, namespace: &str) -> Result<Acting> {
        let (client, user) = match self {
            Access::Local { cluster, user } => (cluster.client.clone(), user.clone()),
            Access::Forwarding { config, clients } => {
                let key = hex(&Sha256::digest(credential.as_bytes()));
                let cached = {
                    let mut clients = clients.lock().expect("client cache lock");
                    clients.retain(|_, s| s.at.elapsed() < CLIENT_TTL);
                    clients
                        .get(&key)
                        .map(|s| (s.client.clone(), s.user.clone()))
                };
                match cached {
                    Some(found) => found,
                    None => {
                        let client = client_for(config, credential)?;
                        let probe = Cluster {
                            client: client.clone(),
                            namespace: namespace.to_string(),
                            all_namespaces: false,
                        };
                        let user = crate::lifecycle::identify(&probe).await?;
                        let mut clients = clients.lock().expect("client cache lock");
                        if clients.len() >= MAX_CLIENTS
                            && let Some(oldest) = clients
                                .iter()
                                .min_by_key(|(_, s)| s.at)
                                .map(|(k, _)| k.clone())
                        {
                            clients.remove(&oldest);
                        }
                        let session = Session {
                            client: client.clone(),
                            user: user.clone(),
                            at: Instant::now(),
                        };
                        clients.insert(key, session);
                        (client, user)
                    }
                }
            }
        };
        Ok(Acting {
            cluster: Cluster {
                client,
                namespace: namespace.to_string(),
                all_namespaces: false,
            },
            user,
        })
    }
}

/// A client sending only `token` (on the apiserver address and CA of `config`).
fn client_for(config: &Config, token: &str) -> Result<Client> {
    let mut config = config.clone();
    config.auth_info = AuthInfo {
        token: Some(token.to_string().into()),
        ..AuthInfo::default()
    };
    Client::try_from(config).map_err(|e| Error::Api(format!("building the API client: {e}")))
}

/// The TLS server configuration from PEM files, which are read again when they change (a
/// cert-manager renewal rewrites the mounted Secret; the server keeps running).
pub fn tls_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>> {
    let resolver = ReloadingCert::new(cert, key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Usage(format!("the dashboard's TLS configuration: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A certificate and key from files, reloaded when either file's modification time changes.
#[derive(Debug)]
struct ReloadingCert {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    current: Mutex<(
        Option<std::time::SystemTime>,
        Arc<rustls::sign::CertifiedKey>,
    )>,
}

impl ReloadingCert {
    fn new(cert: &Path, key: &Path) -> Result<ReloadingCert> {
        let loaded = load_certified(cert, key)?;
        Ok(ReloadingCert {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: Mutex::new((stamp(cert, key), Arc::new(loaded))),
        })
    }
}

/// The later of the two files' modification times (a Secret volume swaps both at once).
fn stamp(cert: &Path, key: &Path) -> Option<std::time::SystemTime> {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    m(cert).max(m(key))
}

fn load_certified(cert: &Path, key: &Path) -> Result<rustls::sign::CertifiedKey> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| Error::Usage(format!("reading {}: {e}", p.display())))
    };
    let certs = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| {
            Error::Usage(format!(
                "{}: not a PEM certificate chain: {e}",
                cert.display()
            ))
        })?;
    let key_der = PrivateKeyDer::from_pem_slice(&read(key)?)
        .map_err(|e| Error::Usage(format!("{}: not a PEM private key: {e}", key.display())))?;
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(certs, key_der, &provider)
        .map_err(|e| Error::Usage(format!("the dashboard's TLS certificate and key: {e}")))
}

impl rustls::server::ResolvesServerCert for ReloadingCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.current()
    }
}

impl ReloadingCert {
    /// The pair to serve: the files' current one if they changed and load, else the last.
    fn current(&self) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let mut current = self.current.lock().ok()?;
        let now = stamp(&self.cert, &self.key);
        if now != current.0 {
            // A half-written pair fails to load: the previous one serves until both are there.
            if let Ok(fresh) = load_certified(&self.cert, &self.key) {
                *current = (now, Arc::new(fresh));
            }
        }
        Some(current.1.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(forward: bool) -> Options {
        Options {
            port: 0,
            address: "127.0.0.1".parse().unwrap(),
            no_open: true,
            forward_token: forward,
            allowed_hosts: vec![],
            tls_cert: None,
            tls_key: None,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn guard(addr: &str, forward: bool, tls: bool) -> Guard {
        Guard::new(addr.parse().unwrap(), &options(forward), tls).unwrap()
    }

    #[test]
    fn a_laptop_dashboard_answers_only_to_its_loopback_host() {
        let g = guard("127.0.0.1:4321", false, false);
        assert_eq!(
            g.host(&headers(&[("host", "127.0.0.1:4321")])),
            Ok("127.0.0.1:4321")
        );
        assert_eq!(
            g.host(&headers(&[("host", "localhost:4321")])),
            Ok("localhost:4321")
        );
        assert_eq!(
            g.host(&headers(&[("host", "evil.example:4321")])),
            Err(Refusal::ForeignHost("evil.example:4321".into()))
        );
        assert!(g.host(&headers(&[])).is_err());
        let v6 = guard("[::1]:4321", false, false);
        assert!(
            v6.first_url().starts_with("http://[::1]:4321/?token="),
            "{}",
            v6.first_url()
        );
        assert!(v6.host(&headers(&[("host", "[::1]:4321")])).is_ok());
    }

    #[test]
    fn the_token_is_needed_once_in_the_url_then_in_the_cookie_of_this_port() {
        let g = guard("127.0.0.1:4321", false, false);
        let token = g.first_url().split("token=").nth(1).unwrap().to_string();
        assert_eq!(token.len(), 64);
        assert!(g.url_token_matches(Some(&format!("a=1&token={token}"))));
        assert!(!g.url_token_matches(Some("token=0000")));
        assert!(!g.url_token_matches(None));
        let cookie = format!("other=1; {TOKEN_COOKIE}_4321={token}");
        assert_eq!(
            g.credential(&headers(&[("cookie", &cookie)])),
            Ok(token.clone())
        );
        // Another dashboard's cookie (another port) is not this one's.
        let other = format!("{TOKEN_COOKIE}_5555={token}");
        assert_eq!(
            g.credential(&headers(&[("cookie", &other)])),
            Err(Refusal::NoToken)
        );
        let set = g.token_cookie().unwrap();
        assert!(set.starts_with("tooljet_dashboard_4321="), "{set}");
        assert!(
            set.contains("HttpOnly; SameSite=Strict") && !set.contains("Secure"),
            "{set}"
        );
    }

    #[test]
    fn the_csrf_token_is_the_viewers_cookie_or_a_new_one() {
        let g = guard("127.0.0.1:4321", false, false);
        let (fresh, set) = g.csrf(&headers(&[])).unwrap();
        let set = set.expect("a new viewer gets a CSRF cookie");
        assert!(
            set.starts_with(&format!("{CSRF_COOKIE}_4321={fresh};")),
            "{set}"
        );
        let cookie = format!("{CSRF_COOKIE}_4321={fresh}");
        assert_eq!(
            g.csrf(&headers(&[("cookie", &cookie)])).unwrap(),
            (fresh, None)
        );
        let (_, again) = g
            .csrf(&headers(&[("cookie", "tooljet_csrf_4321=short")]))
            .unwrap();
        assert!(again.is_some(), "a malformed CSRF cookie is replaced");
    }

    #[test]
    fn writes_must_come_from_the_pages_own_origin() {
        let g = guard("127.0.0.1:4321", false, false);
        let host = "127.0.0.1:4321";
        assert!(g.check_origin(&Method::GET, &headers(&[]), host).is_ok());
        assert!(
            g.check_origin(
                &Method::POST,
                &headers(&[("origin", "http://127.0.0.1:4321")]),
                host
            )
            .is_ok()
        );
        assert_eq!(
            g.check_origin(
                &Method::POST,
                &headers(&[("origin", "http://evil.example")]),
                host
            ),
            Err(Refusal::ForeignOrigin)
        );
        assert_eq!(
            g.check_origin(&Method::POST, &headers(&[("origin", "null")]), host),
            Err(Refusal::ForeignOrigin)
        );
        assert_eq!(
            g.check_origin(&Method::POST, &headers(&[]), host),
            Err(Refusal::ForeignOrigin)
        );
    }

    #[test]
    fn a_renewed_certificate_is_served_without_a_restart_and_a_half_written_one_is_not() {
        let dir = std::env::temp_dir().join(format!("dashboard-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        let write = |name: &str, at: std::time::SystemTime| {
            let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
            std::fs::write(&cert, c.cert.pem()).unwrap();
            std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
            for p in [&cert, &key] {
                std::fs::File::options()
                    .write(true)
                    .open(p)
                    .unwrap()
                    .set_modified(at)
                    .unwrap();
            }
            c.cert.der().to_vec()
        };
        let t0 = std::time::SystemTime::now();
        let first = write("a.example", t0);
        let r = ReloadingCert::new(&cert, &key).unwrap();
        assert_eq!(r.current().unwrap().cert[0].as_ref(), first.as_slice());
        let second = write("b.example", t0 + Duration::from_secs(60));
        assert_eq!(r.current().unwrap().cert[0].as_ref(), second.as_slice());
        std::fs::write(&key, "not yet").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&key)
            .unwrap()
            .set_modified(t0 + Duration::from_secs(120))
            .unwrap();
        assert_eq!(r.current().unwrap().cert[0].as_ref(), second.as_slice());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn in_the_cluster_the_viewers_own_token_is_the_credential() {
        let g = guard("0.0.0.0:8080", true, false);
        assert_eq!(
            g.credential(&headers(&[("authorization", "Bearer abc")])),
            Ok("abc".into())
        );
        let cookie = format!("{SESSION_COOKIE}=def");
        assert_eq!(
            g.credential(&headers(&[("cookie", &cookie)])),
            Ok("def".into())
        );
        assert_eq!(g.credential(&headers(&[])), Err(Refusal::NoToken));
        // HTTPS at the viewer's browser (here or at the proxy): cookies are Secure.
        assert!(g.session_cookie(Some("x")).ends_with("; Secure"));
        assert!(g.session_cookie(None).ends_with("Max-Age=0"));
        assert_eq!(g.first_url(), "http://127.0.0.1:8080/");
        // Any host unless --allowed-host names some.
        assert!(g.host(&headers(&[("host", "tooljet.example")])).is_ok());
    }
}
