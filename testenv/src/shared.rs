//! One control plane per test binary, started on first use, torn down at exit.
//!
//! The processes are spawned from a keeper thread that lives as long as the process, with
//! `PR_SET_PDEATHSIG`, so the kernel kills them however the test binary ends (normal exit, panic,
//! abort, SIGKILL). On a normal exit an `atexit` hook also removes the state directory; directories
//! left by killed test binaries are swept by the next start.

use std::{
    fs,
    path::PathBuf,
    sync::{Mutex, OnceLock, mpsc},
    thread,
};

use crate::cluster::{ControlPlane, Mode, Options, alive};

/// What tests need to reach the shared control plane.
#[derive(Debug, Clone)]
pub struct Shared {
    pub kubeconfig: PathBuf,
    pub server: String,
    pub dir: PathBuf,
    /// Whether kube-scheduler, KWOK and simulated nodes run (see [`shared_with_pods`]).
    pub pods: bool,
}

static SHARED: OnceLock<Result<Shared, String>> = OnceLock::new();
static PIDS: Mutex<Vec<i32>> = Mutex::new(Vec::new());
static DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

/// The control plane of this test binary, started on first call. Panics with the exact command to
/// run when the binaries are missing or the control plane cannot start.
pub fn shared() -> &'static Shared {
    match SHARED.get_or_init(|| start_shared(Options::default())) {
        Ok(s) => s,
        Err(e) => panic!("local control plane unavailable: {e}"),
    }
}

/// The control plane of this test binary with pods: kube-scheduler, KWOK and simulated nodes (see
/// [`Options::pods`]). Every test of a binary that needs pods calls this before anything else
/// reaches the control plane; panics if [`shared`] already started it without pods.
pub fn shared_with_pods() -> &'static Shared {
    let shared = match SHARED.get_or_init(|| start_shared(Options::with_pods())) {
        Ok(s) => s,
        Err(e) => panic!("local control plane unavailable: {e}"),
    };
    assert!(
        shared.pods,
        "this test binary's control plane was started without pods: call \
         testenv::shared_with_pods() first in every test of the binary"
    );
    shared
}

fn start_shared(options: Options) -> Result<Shared, String> {
    let root = std::env::temp_dir().join("tooljet-testenv");
    sweep_stale(&root);
    let dir = root.join(std::process::id().to_string());
    let (tx, rx) = mpsc::channel();
    let keeper_dir = dir.clone();
    thread::Builder::new()
        .name("testenv-keeper".into())
        .spawn(move || {
            match ControlPlane::start_with(&keeper_dir, Mode::Attached, options) {
                Ok(cp) => {
                    *PIDS.lock().unwrap() = cp.children.iter().map(|c| c.id() as i32).collect();
                    *DIR.lock().unwrap() = Some(cp.dir.clone());
                    // SAFETY: registering a plain extern "C" function.
                    unsafe { libc::atexit(teardown) };
                    let shared = Shared {
                        kubeconfig: cp.kubeconfig.clone(),
                        server: cp.server.clone(),
                        dir: cp.dir.clone(),
                        pods: cp.options.pods,
                    };
                    let _ = tx.send(Ok(shared));
                    // Children die with this thread: keep it (and the Child handles) forever.
                    let _keep = cp;
                    loop {
                        thread::park();
                    }
                }
                Err(e) => {
                    let _ = fs::remove_dir_all(&keeper_dir);
                    let _ = tx.send(Err(format!("{e:#}")));
                }
            }
        })
        .map_err(|e| e.to_string())?;
    rx.recv().map_err(|e| e.to_string())?
}

extern "C" fn teardown() {
    if let Ok(pids) = PIDS.lock() {
        for &pid in pids.iter() {
            // SAFETY: our own children.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
    }
    // TOOLJET_TESTENV_KEEP=1 keeps the state directory (logs of every process) for a post-mortem.
    if std::env::var_os("TOOLJET_TESTENV_KEEP").is_some() {
        return;
    }
    if let Ok(dir) = DIR.lock()
        && let Some(dir) = dir.as_ref()
    {
        let _ = fs::remove_dir_all(dir);
    }
}

/// Removes state directories of test binaries that are no longer running.
fn sweep_stale(root: &std::path::Path) {
    if std::env::var_os("TOOLJET_TESTENV_KEEP").is_some() {
        return;
    }
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
            .is_none_or(|pid| !alive(pid));
        if stale {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}
