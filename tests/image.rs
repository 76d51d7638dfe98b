//! The operator's OCI image, built as `cargo xtask image` builds it: reproducible, configured as
//! the chart expects (user 65532, entrypoint, platform, labels), and its root filesystem alone runs
//! the operator against the local control plane (ready, serving the webhook).
//!
//! The unpacked root filesystem is entered as a container runtime would, without privileges: user,
//! mount and pid namespaces (`unshare`), the host's /dev/{null,zero,random,urandom} bind-mounted
//! and /proc mounted into it, then chrooted into the image's files as uid 65532 (a nested user
//! namespace): nothing of the host's filesystem is visible to the operator. Where user namespaces are disabled the
//! test says so and runs the image's binary with the image's CA bundle from outside (a weaker
//! check: the host's filesystem stays visible).

mod support;

use std::{
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use kube::{
    Api,
    api::{DynamicObject, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use support::admission::{WAIT, ar, msg, wait_ok};
use testenv::image::{self, ENTRYPOINT, PLATFORM, USER};
use tooljet_operator::webhook::config::{self, Endpoint};

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

fn crane(args: &[&str]) -> String {
    let out = Command::new(testenv::Binary::Crane.require().unwrap())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "crane {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The entrypoint run inside the unpacked root filesystem, killed on drop.
struct InImage {
    child: Child,
    log: PathBuf,
    isolated: bool,
}

impl InImage {
    /// The uid the operator runs as in its own user namespace (`/proc/PID/uid_map` read from
    /// outside: `<uid inside> <uid here> <count>`).
    fn uid_inside(&self) -> Option<u32> {
        let pid = self.child.id();
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
        let operator: u32 = children.split_whitespace().next()?.parse().ok()?;
        let map = std::fs::read_to_string(format!("/proc/{operator}/uid_map")).ok()?;
        map.split_whitespace().next()?.parse().ok()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for InImage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a container runtime does, without privileges: a user namespace mapping the caller to
/// root, with its own mount and pid namespaces, in which the host's /dev/{null,zero,random,
/// urandom} are bind-mounted into the root filesystem and /proc is mounted; then a nested user
/// namespace mapping that root to 65532 (the image's user) chroots into the root filesystem and
/// runs the command.
const RUNTIME: &str = r#"set -e
rootfs="$1"; shift
for dev in null zero random urandom; do mount --bind "/dev/$dev" "$rootfs/dev/$dev"; done
mount -t proc proc "$rootfs/proc"
exec unshare --user --map-user=65532 --map-group=65532 --root="$rootfs" --wd=/ "$@"
"#;

fn in_namespaces(rootfs: &Path) -> Command {
    for dir in ["dev", "proc"] {
        std::fs::create_dir_all(rootfs.join(dir)).unwrap();
    }
    for dev in ["null", "zero", "random", "urandom"] {
        std::fs::write(rootfs.join("dev").join(dev), "").unwrap();
    }
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--user",
        "--map-root-user",
        "--mount",
        "--pid",
        "--fork",
        "--kill-child=SIGKILL",
        "sh",
        "-c",
        RUNTIME,
        "runtime",
    ])
    .arg(rootfs)
    .arg(ENTRYPOINT);
    cmd
}

/// Whether unprivileged user namespaces work here (for the runtime above).
fn user_namespaces_work(rootfs: &Path) -> bool {
    in_namespaces(rootfs)
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run_in_image(rootfs: &Path, args: &[&str], log: &Path) -> InImage {
    let isolated = user_namespaces_work(rootfs);
    let mut cmd = if isolated {
        in_namespaces(rootfs)
    } else {
        eprintln!(
            "NOTE: unprivileged user namespaces are not available here: running the image's \
             binary from outside its root filesystem, with the image's CA bundle"
        );
        Command::new(rootfs.join(ENTRYPOINT.trim_start_matches('/')))
    };
    let kubeconfig = if isolated {
        "/tmp/kubeconfig".to_string()
    } else {
        rootfs.join("tmp/kubeconfig").display().to_string()
    };
    let ca = if isolated {
        image::CA_BUNDLE.to_string()
    } else {
        rootfs
            .join(image::CA_BUNDLE.trim_start_matches('/'))
            .display()
            .to_string()
    };
    let file = std::fs::File::create(log).unwrap();
    // The image's environment only, as a container runtime gives it.
    cmd.args(args)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("SSL_CERT_FILE", ca)
        .env("HOME", "/home/nonroot")
        .env("KUBECONFIG", kubeconfig)
        .env("POD_NAME", "image-test")
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info,tooljet_operator=debug")
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    InImage {
        child: cmd.spawn().expect("the image's entrypoint starts"),
        log: log.to_path_buf(),
        isolated,
    }
}

#[tokio::test]
async fn the_image_is_reproducible_and_its_root_filesystem_runs_the_operator() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = target_dir().join("image");
    let first = image::build(root, &out).expect("the image builds");
    let second = image::build(root, &out).expect("the image builds again");
    assert_eq!(
        first.digest, second.digest,
        "two builds from the same tree gave different digests"
    );
    assert!(first.digest.starts_with("sha256:"), "{}", first.digest);

    // Pushed to a loopback registry, the image is valid and configured as the chart expects.
    let shared = testenv::shared();
    let registry = image::Registry::start(&shared.dir.join("registry.log")).unwrap();
    let repository = format!("{}/tooljet-operator", registry.addr);
    let pushed = image::push(&first, &repository).unwrap();
    assert!(pushed.ends_with(&first.digest), "{pushed}");
    let reference = format!("{repository}@{}", first.digest);
    crane(&["validate", "--remote", &reference]);
    let manifest: Value = serde_json::from_str(&crane(&["manifest", &reference])).unwrap();
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 2);
    let config: Value = serde_json::from_str(&crane(&["config", &reference])).unwrap();
    assert_eq!(config["config"]["User"], USER);
    assert_eq!(config["config"]["Entrypoint"], json!([ENTRYPOINT]));
    assert_eq!(
        format!(
            "{}/{}",
            config["os"].as_str().unwrap(),
            config["architecture"].as_str().unwrap()
        ),
        PLATFORM
    );
    let labels = &config["config"]["Labels"];
    assert_eq!(labels["org.opencontainers.image.source"], image::SOURCE);
    assert_eq!(
        labels["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(labels["org.opencontainers.image.revision"], first.revision);

    // The root filesystem: the binary, the nonroot user, /tmp, the CA bundle, nothing else.
    let rootfs = shared.dir.join("rootfs");
    image::unpack(&reference, &rootfs).unwrap();
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    assert!(passwd.contains("nonroot:x:65532:65532:"), "{passwd}");
    let group = std::fs::read_to_string(rootfs.join("etc/group")).unwrap();
    assert!(group.contains("nonroot:x:65532:"), "{group}");
    let tmp = std::fs::metadata(rootfs.join("tmp")).unwrap();
    assert_eq!(tmp.permissions().mode() & 0o7777, 0o1777);
    let ca =
        std::fs::read_to_string(rootfs.join(image::CA_BUNDLE.trim_start_matches('/'))).unwrap();
    assert!(
        ca.matches("BEGIN CERTIFICATE").count() > 10,
        "a thin CA bundle"
    );
    let mut top: Vec<String> = std::fs::read_dir(&rootfs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, ["etc", "home", "root", "tmp", "usr"]);
    // The kubectl plugin beside the operator, for the chart's opt-in dashboard.
    let plugin = rootfs.join(image::PLUGIN.trim_start_matches('/'));
    let help = std::process::Command::new(&plugin)
        .args(["dashboard", "--help"])
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", plugin.display()));
    assert!(help.status.success(), "{help:?}");
    assert!(String::from_utf8_lossy(&help.stdout).contains("--forward-token"));

    // Its entrypoint, inside it, against the control plane: ready and serving the webhook.
    let client = support::client().await;
    support::install_crds(&client).await;
    support::kubectl(&["create", "namespace", "tooljet-system"]).unwrap();
    let webhook_port = support::free_port();
    let webhook_url = format!("https://127.0.0.1:{webhook_port}");
    let endpoint = Endpoint::Url(webhook_url.clone());
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &config::validating(&endpoint, None))
        .await
        .unwrap();
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &config::mutating(&endpoint, None))
        .await
        .unwrap();
    let flat = support::kubectl(&["config", "view", "--raw", "--flatten", "--minify"]).unwrap();
    std::fs::write(rootfs.join("tmp/kubeconfig"), flat).unwrap();
    let health = format!("127.0.0.1:{}", support::free_port());
    let webhook_addr = format!("127.0.0.1:{webhook_port}");
    let operator = run_in_image(
        &rootfs,
        &[
            "--namespace",
            "tooljet-system",
            "--webhook-addr",
            &webhook_addr,
            "--webhook-host",
            "127.0.0.1",
            "--health-addr",
            &health,
        ],
        &shared.dir.join("operator-in-image.log"),
    );
    let ready = tokio::time::timeout(
        Duration::from_secs(90),
        wait_ok(&health, "/readyz", Duration::from_secs(90)),
    )
    .await;
    assert!(
        ready.is_ok(),
        "the operator in the image never became ready:\n{}",
        operator.log_text()
    );
    if operator.isolated {
        assert_eq!(operator.uid_inside(), Some(65532), "the operator's uid");
    }
    support::eventually(WAIT, "the webhook's caBundle", || {
        let api = Api::<ValidatingWebhookConfiguration>::all(client.clone());
        async move {
            let c = api.get(config::CONFIGURATION_NAME).await.ok()?;
            c.webhooks?
                .first()?
                .client_config
                .ca_bundle
                .as_ref()
                .filter(|ca| !ca.0.is_empty())
                .map(|_| ())
        }
    })
    .await;
    let ns = support::namespace(&client, "image").await;
    let apply = PatchParams::apply("image-test").force();
    let apps: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar("ToolJetApp"));
    apps.patch(
        "crm",
        &apply,
        &Patch::Apply(
            json!({ "apiVersion": "tooljet.io/v1alpha1", "kind": "ToolJetApp",
            "metadata": { "name": "crm" }, "spec": {} }),
        ),
    )
    .await
    .unwrap();
    let versions: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar("AppVersion"));
    let denial = support::eventually(WAIT, "the webhook's verdict", || {
        let versions = versions.clone();
        async move {
            let body = json!({ "apiVersion": "tooljet.io/v1alpha1", "kind": "AppVersion",
                "metadata": { "name": "v-new" },
                "spec": { "app": "crm", "versionName": "v-new", "environment": "staging" } });
            match versions
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(body).unwrap(),
                )
                .await
            {
                Ok(_) => panic!("a version created straight into staging was admitted"),
                // Until the webhook answers, the apiserver reports a call failure (fail closed).
                Err(e) => Some(msg(e)).filter(|m| m.contains("denied the request")),
            }
        }
    })
    .await;
    assert!(
        denial.contains("versions are created only in development"),
        "{denial}"
    );
    // The operator also reconciles from inside the image: the app gets its status.
    support::eventually(WAIT, "the app's status", || {
        let apps = apps.clone();
        async move {
            let app = apps.get("crm").await.ok()?;
            app.data.get("status")?.get("conditions").map(|_| ())
        }
    })
    .await;
    let log = operator.log_text();
    assert!(!log.contains("panicked"), "{log}");
    drop(operator);
    drop(registry);
}
