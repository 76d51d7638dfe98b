//! The dashboard as a person reaches it: the real binary serving on loopback, a plain HTTP/1.1
//! client for its routes, and Chromium (Debian's `chromium` and `chromium-driver`) driven over
//! WebDriver for what a person sees.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::Duration,
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A running `kubectl-tooljet dashboard`, stopped when dropped.
pub struct Dashboard {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// `127.0.0.1:PORT`.
    pub host: String,
    /// The URL it printed (with the token on a laptop).
    pub url: String,
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the dashboard with `args` (e.g. `-n NS --as dana`) on a free port.
pub fn dashboard(args: &[&str]) -> Dashboard {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kubectl-tooljet"))
        .args(["dashboard", "--no-open"])
        .args(args)
        .env("KUBECONFIG", &testenv::shared().kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the plugin binary runs");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("the dashboard prints its URL");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .to_string();
    let host = url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .to_string();
    let scheme = url.split("://").next().unwrap();
    Dashboard {
        child,
        base: format!("{scheme}://{host}"),
        host,
        url,
    }
}

/// One HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A request to `host` (`127.0.0.1:PORT`) with exactly these headers (plus Content-Length and
/// Connection: close).
pub async fn request(
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .expect("the dashboard answers within 30 s")
        .unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: dechunk(body),
    }
}

/// The body of a chunked answer, joined (others unchanged).
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((size, after)) = rest.split_once("\r\n") else {
            return body.to_string();
        };
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            return body.to_string();
        };
        if n == 0 {
            return out;
        }
        if after.len() < n {
            return body.to_string();
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
}

/// A viewer of a laptop dashboard, with a cookie jar as a browser keeps one (the token's cookie
/// from the URL, the CSRF cookie from the first page).
pub struct Viewer {
    pub host: String,
    jar: std::sync::Mutex<std::collections::BTreeMap<String, String>>,
}

impl Viewer {
    /// Follows the token URL once, as a browser does, and keeps the cookie.
    pub async fn of(d: &Dashboard) -> Viewer {
        let path = &d.url[d.base.len()..];
        let first = request(&d.host, "GET", path, &[("Host", &d.host)], "").await;
        assert_eq!(first.status, 303, "the token URL redirects: {first:?}");
        let viewer = Viewer {
            host: d.host.clone(),
            jar: Default::default(),
        };
        viewer.keep(&first);
        assert!(!viewer.cookies().is_empty(), "the token URL sets a cookie");
        viewer
    }

    /// The cookies a response sets, kept for the next requests.
    pub fn keep(&self, answer: &Answer) {
        let mut jar = self.jar.lock().unwrap();
        for (k, v) in &answer.headers {
            if !k.eq_ignore_ascii_case("set-cookie") {
                continue;
            }
            if let Some((name, value)) = v.split(';').next().and_then(|c| c.split_once('=')) {
                jar.insert(name.trim().to_string(), value.to_string());
            }
        }
    }

    /// The `Cookie` header this viewer sends.
    pub fn cookies(&self) -> String {
        let jar = self.jar.lock().unwrap();
        jar.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub async fn get(&self, path: &str) -> Answer {
        let cookies = self.cookies();
        let answer = request(
            &self.host,
            "GET",
            path,
            &[("Host", &self.host), ("Cookie", &cookies)],
            "",
        )
        .await;
        self.keep(&answer);
        answer
    }

    /// A form post from the dashboard's own page (its Origin, the page's CSRF token).
    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> Answer {
        let origin = format!("http://{}", self.host);
        let body: Vec<String> = form
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        let cookies = self.cookies();
        let answer = request(
            &self.host,
            "POST",
            path,
            &[
                ("Host", &self.host),
                ("Cookie", &cookies),
                ("Origin", &origin),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            &body.join("&"),
        )
        .await;
        self.keep(&answer);
        answer
    }

    /// The CSRF token of this viewer's pages (from a page with a form).
    pub async fn csrf(&self, path: &str) -> String {
        let page = self.get(path).await;
        csrf_of(&page.body)
    }
}

pub fn csrf_of(html: &str) -> String {
    html.split(r#"name="csrf" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no CSRF field in the page: {html}"))
        .to_string()
}

pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Chromium, headless, under chromedriver on a free port; stopped when dropped.
pub struct Browser {
    driver: Child,
    pub client: fantoccini::Client,
}

impl Browser {
    pub async fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "chromedriver runs (Debian's chromium and chromium-driver: `cargo xtask test` installs them)",
            );
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900",
                         "--disable-dev-shm-usage"],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let mut last = None;
        for _ in 0..100 {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match fantoccini::ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(client) => return Browser { driver, client },
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver did not accept a session: {last:?}");
    }

    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
