//! The operator as a black box: its release binary started with its flags, its memory from
//! `/proc`, its `/metrics` on `--health-addr`, and a wait until it is quiet.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{cluster::OPERATOR_NS, cpu::Process, prom::Scrape};

/// The counters whose sum moves whenever the operator does something: every write it makes, and
/// every reconcile it finishes (a reconcile ends after its Events are published).
const ACTIVITY: [&str; 2] = [
    "tooljet_operator_writes_total",
    "tooljet_operator_reconciles_total",
];
/// Quiet: the activity counters have not moved for this long.
pub const QUIET_WINDOW: Duration = Duration::from_millis(200);
/// Give up waiting for quiet after this long (counted in the results).
const QUIET_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Operator {
    child: Child,
    /// `--health-addr`.
    pub health: String,
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a wait for quiet ended.
pub struct Quiet {
    pub waited: Duration,
    pub timed_out: bool,
}

impl Operator {
    pub fn start(
        bin: &Path,
        kubeconfig: &Path,
        concurrency: usize,
        extra: &[&str],
        log: &Path,
    ) -> Result<Operator> {
        let health = format!("127.0.0.1:{}", free_port()?);
        let file = std::fs::File::create(log)?;
        let child = Command::new(bin)
            .args([
                "--health-addr",
                &health,
                "--concurrency",
                &concurrency.to_string(),
                "--namespace",
                OPERATOR_NS,
            ])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()?;
        Ok(Operator { child, health })
    }

    /// A process with the chart's arguments and environment (`args`, `env`), its `/metrics` on
    /// `health`, credentials from `kubeconfig`, named `instance` (the lease holder identity).
    pub fn spawn(
        bin: &Path,
        kubeconfig: &Path,
        health: &str,
        instance: &str,
        args: &[String],
        env: &[(String, String)],
        log: &Path,
    ) -> Result<Operator> {
        let file = std::fs::File::create(log)?;
        let child = Command::new(bin)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", instance)
            .env("POD_NAMESPACE", OPERATOR_NS)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()?;
        Ok(Operator {
            child,
            health: health.to_string(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether `/readyz` answers 200.
    pub async fn ready(&self) -> bool {
        let Ok(mut s) = tokio::net::TcpStream::connect(&self.health).await else {
            return false;
        };
        if s.write_all(format!("GET /readyz HTTP/1.0\r\nHost: {}\r\n\r\n", self.health).as_bytes())
            .await
            .is_err()
        {
            return false;
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        out.starts_with("HTTP/1.1 200") || out.starts_with("HTTP/1.0 200")
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        while !self.ready().await {
            if started.elapsed() > timeout {
                bail!(
                    "the operator on {} was not ready within {timeout:?}",
                    self.health
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    pub fn process(&self) -> Process {
        Process {
            name: "operator".into(),
            pid: self.child.id(),
        }
    }

    /// A field of `/proc/<pid>/status` in KiB (`VmRSS:`, `VmHWM:`), 0 when unreadable.
    pub fn memory_kib(&self, field: &str) -> u64 {
        crate::rss::status_kib(self.child.id(), field).unwrap_or(0)
    }

    /// SIGTERM, then SIGKILL after 10 s.
    pub fn stop(&mut self) {
        terminate(&mut self.child);
    }

    /// One scrape of the operator's `/metrics`; `None` when it does not answer.
    pub async fn metrics(&self) -> Option<Scrape> {
        let mut s = tokio::net::TcpStream::connect(&self.health).await.ok()?;
        s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {}\r\n\r\n", self.health).as_bytes())
            .await
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        let body = out.split_once("\r\n\r\n")?.1;
        Some(Scrape::parse(body))
    }

    /// The sum of the activity counters; `None` when `/metrics` does not answer or has neither.
    pub async fn activity(&self) -> Option<f64> {
        let scrape = self.metrics().await?;
        ACTIVITY
            .iter()
            .any(|name| scrape.has(name))
            .then(|| ACTIVITY.iter().map(|name| scrape.sum(name, |_| true)).sum())
    }

    /// Waits until `/metrics` answers with the activity counters (the operator is up).
    pub async fn wait_metrics(&self, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        while self.activity().await.is_none() {
            if started.elapsed() > timeout {
                bail!(
                    "the operator's /metrics on {} did not show {} within {timeout:?}",
                    self.health,
                    ACTIVITY.join(" or ")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Waits until the operator's activity counters have not moved for [`QUIET_WINDOW`], so that
    /// a change's trailing writes (status, the versions' resolved Secrets, Events) are done
    /// before the next change.
    pub async fn wait_quiet(&self) -> Quiet {
        let started = Instant::now();
        let poll = Duration::from_millis(50);
        let mut last = self.activity().await;
        let mut since = Instant::now();
        loop {
            tokio::time::sleep(poll).await;
            let now = self.activity().await;
            if now != last || now.is_none() {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= QUIET_WINDOW {
                return Quiet {
                    waited: started.elapsed(),
                    timed_out: false,
                };
            }
            if started.elapsed() > QUIET_TIMEOUT {
                return Quiet {
                    waited: started.elapsed(),
                    timed_out: true,
                };
            }
        }
    }
}

/// SIGTERM to a child process, then SIGKILL if it is still running 10 s later.
pub fn terminate(child: &mut Child) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    for _ in 0..100 {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
