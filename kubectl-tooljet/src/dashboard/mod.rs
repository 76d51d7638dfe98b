//! `kubectl tooljet dashboard`: a web UI for the people ToolJet's guide puts in the loop (QA,
//! product managers), served by the plugin. It holds no privileges of its own: every read and
//! every action is an API call with the person's own credentials, so RBAC, the admission
//! webhook and the policies judge the person, and a refusal is shown in the cluster's words.
//!
//! - **On a laptop** (the default): the person's kubeconfig, on 127.0.0.1. A random token in the
//!   printed URL is exchanged for a cookie; the Host header must name the loopback address (no DNS
//!   rebinding); a write must come from the page's own origin and carry the page's CSRF token.
//! - **In the cluster** (`--forward-token`, the chart's opt-in Deployment): the viewer's bearer
//!   token (an OIDC proxy's `Authorization` header, or one pasted on the sign-in page) is
//!   forwarded on every call; the server never impersonates and reads no credentials of its own.
//!
//! It reads no Secret at all, so no secret value can reach a browser.

mod access;
mod html;
mod live;
mod routes;

use std::{net::SocketAddr, sync::Arc};

use crate::{
    cluster::{Cluster, ConnectionArgs, load_config},
    error::{Error, Result},
};

pub use access::{Access, Guard};

/// How `dashboard` serves.
#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// The port (default: a free one).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// The address to listen on. Anything but loopback exposes the dashboard to the network:
    /// use --forward-token there.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: std::net::IpAddr,
    /// Do not open a browser; just print the URL.
    #[arg(long)]
    pub no_open: bool,
    /// Serve many people: use each viewer's own bearer token (the `Authorization` header set by
    /// an authenticating proxy, or one pasted on the sign-in page) instead of the kubeconfig's
    /// credentials. The kubeconfig (or the in-cluster environment) gives only the apiserver's
    /// address and CA.
    #[arg(long)]
    pub forward_token: bool,
    /// With --forward-token: a Host header value to accept (repeatable; e.g. the Ingress host).
    /// Default: any host.
    #[arg(long = "allowed-host", value_name = "HOST[:PORT]")]
    pub allowed_hosts: Vec<String>,
    /// Serve HTTPS with this certificate (PEM) and --tls-key; cookies are then `Secure`.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
}

/// Whose credentials, and which namespace the pages start in.
async fn access(connection: &ConnectionArgs, options: &Options) -> Result<(Access, String)> {
    if !options.forward_token {
        let cluster = Cluster::connect(connection).await?;
        let namespace = cluster.namespace.clone();
        return Ok((Access::local(cluster).await, namespace));
    }
    if connection.as_user.is_some() || !connection.as_groups.is_empty() {
        return Err(Error::Usage(
            "--forward-token acts as each viewer and never impersonates; drop --as/--as-group"
                .into(),
        ));
    }
    // The apiserver's address and CA: the kubeconfig's, or the pod's (ca.crt and namespace
    // mounted at the usual place; the chart mounts no token).
    let config = match load_config(connection).await {
        Ok(c) => c,
        Err(from_kubeconfig) => kube::Config::incluster().map_err(|e| {
            Error::Api(format!(
                "{from_kubeconfig}; nor is this a pod with the apiserver's CA mounted: {e}"
            ))
        })?,
    };
    let namespace = connection
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    Ok((Access::forwarding(config), namespace))
}

/// Runs the dashboard until interrupted.
pub async fn run(connection: &ConnectionArgs, options: Options) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(options.address, options.port))
        .await
        .map_err(|e| {
            Error::Usage(format!(
                "cannot listen on {}:{}: {e}; choose another --port",
                options.address, options.port
            ))
        })?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Api(format!("reading the listening address: {e}")))?;
    let tls = match (&options.tls_cert, &options.tls_key) {
        (Some(cert), Some(key)) => Some(access::tls_config(cert, key)?),
        _ => None,
    };
    let guard = Guard::new(addr, &options, tls.is_some())?;
    let (access, namespace) = access(connection, &options).await?;
    let url = guard.first_url().to_string();
    if options.forward_token {
        println!("Serving the dashboard at {url} (each viewer's own token; Ctrl-C stops it)");
    } else {
        println!(
            "Serving the dashboard at {url} (acting as {}; Ctrl-C stops it)",
            access.local_user().unwrap_or("you")
        );
        if !options.no_open {
            open_browser(&url);
        }
    }
    let state = Arc::new(routes::Server {
        access,
        guard,
        default_namespace: namespace,
        all_namespaces: connection.all_namespaces,
    });
    routes::serve(listener, state, tls).await
}

/// Opens `url` in the person's browser, if the desktop has an opener; the URL is printed anyway.
/// The opener (and the browser it starts) get a file that only this user can read, which
/// redirects to the URL: a command line with the token would be readable by every local user in
/// /proc. The file is removed after a minute.
fn open_browser(url: &str) {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let file = dir.join(format!("tooljet-dashboard-{}.html", std::process::id()));
    let page = format!(
        "<!doctype html><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"0;url={0}\"><a href=\"{0}\">Open the dashboard</a>\n",
        html::esc(url)
    );
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&file)
        .and_then(|mut f| f.write_all(page.as_bytes()));
    if written.is_err() {
        return;
    }
    let _ = std::process::Command::new(opener)
        .arg(&file)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        let _ = std::fs::remove_file(file);
    });
}
