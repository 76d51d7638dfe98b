//! The typed results (written to `target/bench/results.json`), the targets they are judged by,
//! and the table printed and written into `docs/benchmarks.md`.

use std::{collections::BTreeMap, path::Path};

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use crate::{
    admission::{Admission, VALIDATING_APPVERSIONS, WebhookCost},
    cpu::PhaseCpu,
    floors::Floor,
    idle::Idle,
    latency::{Spaced, Summary},
    prom::Quantile,
    rss::{PhaseRss, Spread},
};

/// The targets of issue 12.
pub mod target {
    /// Convergence over the contract floor, at N=1000 and N=5000.
    pub const CONVERGENCE_OVER_CONTRACT_FLOOR: f64 = 1.25;
    /// Steady RSS growth per managed object from N=1000 to N=5000 (bytes; 3 KB).
    pub const GROWTH_BYTES_PER_OBJECT: f64 = 3000.0;
    /// Config change and Secret rotation p99 (ms), strictly below.
    pub const CHANGE_P99_MS: f64 = 50.0;
    /// Validating-webhook calls on first-stage edits.
    pub const VALIDATING_CALLS_ON_EDIT: f64 = 0.0;
    /// Client-side p99 the webhooks add to a first-stage edit (ms), strictly below.
    pub const EDIT_ADDED_P99_MS: f64 = 2.0;
    /// Apiserver-side p99 of each AppVersion webhook on a promotion (ms), strictly below.
    pub const PROMOTION_WEBHOOK_P99_MS: f64 = 10.0;
    /// Secret rotation until the rollout's Deployment has a new pod template (ms), strictly below.
    pub const RESTART_P99_MS: f64 = 100.0;
    /// Peak RSS of the leader at N=1000 (MiB), through every phase.
    pub const RSS_PEAK_MIB: f64 = 64.0;
    /// Apiserver-side p99 of each AppVersion webhook on a first edit, or an edit by another user
    /// (ms), strictly below.
    pub const OTHER_EDIT_WEBHOOK_P99_MS: f64 = 10.0;
    /// Writes in the idle window after a restart.
    pub const IDLE_WRITES: f64 = 0.0;
    /// Operator CPU seconds in the idle window after a restart, strictly below.
    pub const IDLE_CPU_SECONDS: f64 = 1.0;
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kubernetes: String,
}

impl Machine {
    pub fn this() -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let mem_kib = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0);
        Machine {
            cpu,
            cores: crate::cpu::cores(),
            memory_gib: (mem_kib as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            kubernetes: testenv::KUBERNETES_VERSION.to_string(),
        }
    }
}

/// Which scale point: `--small`, `--apps` (every phase) or `--large`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Small,
    Main,
    Large,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Convergence {
    pub seconds: f64,
    pub over_contract_floor: f64,
    pub over_secret_floor: f64,
    pub cpu: PhaseCpu,
    /// Requests the apiserver served while converging, by `VERB resource[/subresource]`.
    pub requests: BTreeMap<String, u64>,
    pub rss_peak_mib: f64,
    /// 5 s after the operator went quiet.
    pub rss_steady_mib: f64,
    /// Its allocator's figures at the same moment (`/metrics`); absent from older results.
    #[serde(default)]
    pub heap_steady: Option<HeapMib>,
}

/// What the operator's allocator reported (`tooljet_operator_heap_*_bytes`), in MiB: live
/// allocations, and the resident pages it maps (live, freed not yet returned, metadata).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct HeapMib {
    pub allocated: f64,
    pub resident: f64,
}

impl HeapMib {
    /// Read from a scrape of `/metrics`; `None` if the operator exports no heap figures.
    pub fn of(scrape: &crate::prom::Scrape) -> Option<HeapMib> {
        let mib = |name: &str| {
            scrape
                .has(name)
                .then(|| scrape.sum(name, |_| true) / (1024.0 * 1024.0))
        };
        Some(HeapMib {
            allocated: mib("tooljet_operator_heap_allocated_bytes")?,
            resident: mib("tooljet_operator_heap_resident_bytes")?,
        })
    }

    pub fn describe(heap: Option<HeapMib>) -> String {
        match heap {
            Some(h) => format!(
                "heap {:.1} MiB live, {:.1} MiB resident",
                h.allocated, h.resident
            ),
            None => "heap not reported".into(),
        }
    }
}

/// One repetition of a point: its floors (the fastest of the swept concurrencies) and the
/// operator's convergence.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Repetition {
    /// Timed from the leader's election (its first renewal of the Lease handed to it).
    pub convergence: Convergence,
    /// The same, from the Lease's hand-over (adds the election round, at most 2 s).
    pub from_hand_over_seconds: f64,
    /// The leader's RSS while converging (sampled every 250 ms).
    pub rss: PhaseRss,
    /// The standby's.
    pub standby_rss: PhaseRss,
    pub apply_seconds: f64,
    pub secret_floor: Floor,
    pub contract_floor: Floor,
}

/// Median and range over a point's repetitions.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Spreads {
    pub convergence_seconds: Spread,
    pub over_contract_floor: Spread,
    pub over_secret_floor: Spread,
    pub contract_floor_seconds: Spread,
    pub secret_floor_seconds: Spread,
    pub rss_peak_mib: Spread,
    pub rss_median_mib: Spread,
    pub rss_steady_mib: Spread,
    pub operator_cpu_seconds: Spread,
}

/// Mean bytes of a status (JSON), as the contract floor wrote it and as the operator did.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct StatusBytes {
    pub floor: f64,
    pub operator: Option<f64>,
}

/// One scale point, on a fresh control plane.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ScalePoint {
    pub role: Role,
    pub apps: usize,
    pub environment_configs: usize,
    pub app_versions: usize,
    pub tooljet_apps: usize,
    /// Secrets the operator writes (materialised and resolved).
    pub secrets: usize,
    /// Objects the operator reconciles or writes.
    pub managed_objects: usize,
    pub apply_seconds: f64,
    pub secret_floor: Floor,
    pub contract_floor: Floor,
    /// The median repetition's convergence.
    pub convergence: Convergence,
    pub status_bytes: BTreeMap<String, StatusBytes>,
    /// Serialized bytes of all the AppVersion definitions.
    #[serde(default)]
    pub definition_bytes: u64,
    /// Median and range over the repetitions (absent in results of earlier runs).
    #[serde(default)]
    pub spreads: Option<Spreads>,
    #[serde(default)]
    pub repetitions: Vec<Repetition>,
    /// The chart's memory limit for the operator.
    #[serde(default)]
    pub memory_limit: String,
    /// The leader's (and the serving standby's) RSS per phase after the convergence (main point).
    #[serde(default)]
    pub rss_phases: BTreeMap<String, PhaseRss>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Changes {
    pub config: Spaced,
    pub rotation: Spaced,
    /// Rotation until the rollout's Deployment has a new pod template.
    #[serde(default)]
    pub restart: Option<Spaced>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Results {
    pub date: String,
    pub machine: Machine,
    pub concurrency: usize,
    /// Whether the sizes are the reference ones (only those go into docs/benchmarks.md).
    pub reference: bool,
    pub points: Vec<ScalePoint>,
    pub changes: Option<Changes>,
    pub idle: Option<Idle>,
    pub admission: Option<Admission>,
    /// The peers at the main point (`--no-peers` leaves them out).
    #[serde(default)]
    pub peers: Option<crate::peers::Peers>,
    /// The point that failed and why, when the run stopped there: the figures before it are
    /// kept (the file is written after every point), and such a run is never a reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incomplete: Option<String>,
}

/// A measure, its result, its target and whether it was met (by how much it was missed).
struct Row {
    measure: String,
    result: String,
    target: String,
    verdict: String,
}

fn info(measure: String, result: String) -> Row {
    Row {
        measure,
        result,
        target: String::new(),
        verdict: String::new(),
    }
}

/// `met`, or by how much `value` exceeds the bound `target` (`strict`: must stay below it).
fn judge_at_most(value: f64, target: f64, strict: bool, unit: &str) -> String {
    if value.is_nan() {
        return "not measured".into();
    }
    let met = if strict {
        value < target
    } else {
        value <= target
    };
    if met {
        return "met".into();
    }
    let by = value - target;
    if by <= 0.0 {
        return "missed (must stay below the bound)".into();
    }
    let by = format!("{}{unit}", fmt_num(by));
    if target > 0.0 {
        format!("missed by {by} ({:.1}x the target)", value / target)
    } else {
        format!("missed by {by}")
    }
}

fn fmt_num(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if v.abs() >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn quantile(q: &Option<Quantile>) -> String {
    match q {
        None => "-".into(),
        Some(q) => match q.bucket_upper_ms {
            Some(upper) => format!(
                "~{} (bucket {}-{})",
                fmt_num(q.estimate_ms),
                fmt_num(q.bucket_lower_ms),
                fmt_num(upper)
            ),
            None => format!("> {}", fmt_num(q.bucket_lower_ms)),
        },
    }
}

/// A p99 from buckets against a bound: certain when the whole bucket is on one side.
fn judge_quantile(q: &Option<Quantile>, target: f64) -> String {
    match q {
        None => "not measured".into(),
        Some(q) => match q.bucket_upper_ms {
            Some(upper) if upper < target => "met".into(),
            _ if q.bucket_lower_ms >= target => {
                judge_at_most(q.bucket_lower_ms, target, true, " ms")
            }
            _ => format!(
                "undetermined (the bucket {}-{} ms holds the bound)",
                fmt_num(q.bucket_lower_ms),
                q.bucket_upper_ms.map(fmt_num).unwrap_or("+Inf".into())
            ),
        },
    }
}

fn latency(s: &Summary) -> String {
    format!(
        "{} / {} / {} ms (n = {})",
        fmt_num(s.p50_ms),
        fmt_num(s.p95_ms),
        fmt_num(s.p99_ms),
        s.n
    )
}

fn cost(c: &WebhookCost) -> String {
    format!(
        "{} / {} ms, mean {} ms ({} calls)",
        quantile(&c.p50),
        quantile(&c.p99),
        c.mean_ms.map(fmt_num).unwrap_or("-".into()),
        c.calls
    )
}

/// The requests of the floor beside the operator's, per `VERB resource`, where they differ
/// (reads of what the floor already knows and watches are the operator's own).
fn compare_requests(floor: &BTreeMap<String, u64>, operator: &BTreeMap<String, u64>) -> String {
    let mut keys: Vec<&String> = floor.keys().chain(operator.keys()).collect();
    keys.sort();
    keys.dedup();
    let each: Vec<String> = keys
        .into_iter()
        .filter(|k| !k.starts_with("WATCH"))
        .map(|k| {
            let (f, o) = (
                floor.get(k).copied().unwrap_or(0),
                operator.get(k).copied().unwrap_or(0),
            );
            format!("{k} {f} / {o}")
        })
        .collect();
    if each.is_empty() {
        "not recorded".into()
    } else {
        each.join(", ")
    }
}

/// The verbs whose counts grow with the objects: a read or a write per object. LISTs and WATCHes
/// are the caches' start-up, a few whatever the size.
const PER_OBJECT_VERBS: [&str; 6] = ["GET", "POST", "PUT", "PATCH", "APPLY", "DELETE"];

/// Requests of a kind that either side may make beside its work: the apiserver's counts are
/// cluster-wide, and the control plane's own components read Secrets now and then (the floor's
/// window counted 2-4 `GET secrets` of its own).
const REQUEST_NOISE: i64 = 5;

/// "equal" when the operator made the floor's per-object requests, each count within
/// [`REQUEST_NOISE`]; otherwise each difference, operator minus floor
/// (`APPLY environmentconfigs/status +81`).
fn judge_requests(floor: &BTreeMap<String, u64>, operator: &BTreeMap<String, u64>) -> String {
    if floor.is_empty() || operator.is_empty() {
        return "not recorded".into();
    }
    let per_object = |k: &&String| {
        PER_OBJECT_VERBS
            .iter()
            .any(|v| k.split(' ').next() == Some(*v))
    };
    let mut keys: Vec<&String> = floor
        .keys()
        .chain(operator.keys())
        .filter(per_object)
        .collect();
    keys.sort();
    keys.dedup();
    let differences: Vec<String> = keys
        .into_iter()
        .filter_map(|k| {
            let f = floor.get(k).copied().unwrap_or(0) as i64;
            let o = operator.get(k).copied().unwrap_or(0) as i64;
            ((o - f).abs() > REQUEST_NOISE).then(|| format!("{k} {:+}", o - f))
        })
        .collect();
    if differences.is_empty() {
        format!("equal (each within {REQUEST_NOISE})")
    } else {
        format!("**differs**: {}", differences.join(", "))
    }
}

fn growth(from: &ScalePoint, to: &ScalePoint) -> f64 {
    (to.convergence.rss_steady_mib - from.convergence.rss_steady_mib) * 1024.0 * 1024.0
        / (to.managed_objects as f64 - from.managed_objects as f64)
}

impl Results {
    fn point(&self, role: Role) -> Option<&ScalePoint> {
        self.points.iter().find(|p| p.role == role)
    }

    fn rows(&self) -> Vec<Row> {
        let mut rows = vec![];
        for p in &self.points {
            let n = p.apps;
            let c = &p.convergence;
            let reps = p.repetitions.len().max(1);
            let (secs, ratio, ratio_secret, cf, sf) = match &p.spreads {
                Some(sp) => (
                    sp.convergence_seconds.show(2),
                    sp.over_contract_floor,
                    sp.over_secret_floor.show(2),
                    sp.contract_floor_seconds.show(2),
                    sp.secret_floor_seconds.show(2),
                ),
                None => (
                    format!("{:.2}", c.seconds),
                    Spread::of([c.over_contract_floor]),
                    format!("{:.2}", c.over_secret_floor),
                    format!("{:.2}", p.contract_floor.seconds),
                    format!("{:.2}", p.secret_floor.seconds),
                ),
            };
            rows.push(info(
                format!(
                    "convergence, N={n} ({} Secrets, {} statuses, {:.0} MiB of definitions), {reps} run(s)",
                    p.secrets,
                    p.environment_configs + p.app_versions + p.tooljet_apps,
                    p.definition_bytes as f64 / 1048576.0
                ),
                format!(
                    "{secs} s; Secret floor {sf} s, contract floor {cf} s ({} writes, concurrency {})",
                    p.contract_floor.writes, p.contract_floor.concurrency
                ),
            ));
            let result = format!("{}x (over the Secret floor {ratio_secret}x)", ratio.show(2));
            let t = target::CONVERGENCE_OVER_CONTRACT_FLOOR;
            rows.push(if p.role == Role::Small {
                info(format!("convergence / contract floor, N={n}"), result)
            } else {
                Row {
                    measure: format!("convergence / contract floor, N={n} (median)"),
                    result,
                    target: format!("<= {t}x"),
                    verdict: judge_at_most(ratio.median, t, false, "x"),
                }
            });
            if p.role != Role::Small {
                rows.push(info(
                    format!("CPU s in convergence, N={n} (median run)"),
                    c.cpu.describe(),
                ));
                rows.push(info(
                    format!("CPU s in the contract floor, N={n} (median run)"),
                    p.contract_floor.cpu.describe(),
                ));
                rows.push(info(
                    format!("CPU s in the Secret floor, N={n} (median run)"),
                    p.secret_floor.cpu.describe(),
                ));
                rows.push(Row {
                    measure: format!("requests, contract floor / operator, N={n} (median run)"),
                    result: compare_requests(&p.contract_floor.requests, &c.requests),
                    target: "GETs and writes equal".into(),
                    verdict: judge_requests(&p.contract_floor.requests, &c.requests),
                });
            }
            let rss = match &p.spreads {
                Some(sp) => format!(
                    "{} / {} / {} MiB",
                    sp.rss_peak_mib.show(1),
                    sp.rss_median_mib.show(1),
                    sp.rss_steady_mib.show(1)
                ),
                None => format!("{:.1} / - / {:.1} MiB", c.rss_peak_mib, c.rss_steady_mib),
            };
            let peak = p
                .spreads
                .as_ref()
                .map_or(c.rss_peak_mib, |sp| sp.rss_peak_mib.median);
            let measure = format!("leader RSS peak / median / steady while converging, N={n}");
            rows.push(if p.role == Role::Main {
                Row {
                    measure,
                    result: rss,
                    target: format!("peak <= {} MiB", target::RSS_PEAK_MIB),
                    verdict: judge_at_most(peak, target::RSS_PEAK_MIB, false, " MiB"),
                }
            } else {
                info(measure, rss)
            });
            if let Some(heap) = c.heap_steady {
                rows.push(info(
                    format!("leader heap when steady after converging (last run), N={n}"),
                    HeapMib::describe(Some(heap)),
                ));
            }
            for (phase, r) in &p.rss_phases {
                let row = format!(
                    "{:.1} / {:.1} MiB ({} samples)",
                    r.peak_mib, r.median_mib, r.samples
                );
                rows.push(if p.role == Role::Main {
                    Row {
                        measure: format!("RSS peak / median, {phase}, N={n}"),
                        result: row,
                        target: format!("peak <= {} MiB", target::RSS_PEAK_MIB),
                        verdict: judge_at_most(r.peak_mib, target::RSS_PEAK_MIB, false, " MiB"),
                    }
                } else {
                    info(format!("RSS peak / median, {phase}, N={n}"), row)
                });
            }
        }
        if let (Some(small), Some(main)) = (self.point(Role::Small), self.point(Role::Main)) {
            rows.push(info(
                format!(
                    "steady RSS per managed object, N={} -> {}",
                    small.apps, main.apps
                ),
                format!("{:.0} bytes", growth(small, main)),
            ));
        }
        if let Some(main) = self.point(Role::Main) {
            let t = target::GROWTH_BYTES_PER_OBJECT;
            let measure = "steady RSS per managed object, N=1000 -> 5000".to_string();
            rows.push(match self.point(Role::Large) {
                Some(large) => {
                    let g = growth(main, large);
                    Row {
                        measure: format!(
                            "steady RSS per managed object, N={} -> {}",
                            main.apps, large.apps
                        ),
                        result: format!("{g:.0} bytes"),
                        target: format!("<= {t:.0} bytes"),
                        verdict: judge_at_most(g, t, false, " bytes"),
                    }
                }
                None => Row {
                    measure,
                    result: "not run (add --large 5000)".into(),
                    target: format!("<= {t:.0} bytes"),
                    verdict: "not run".into(),
                },
            });
            if !main.status_bytes.is_empty() {
                let each: Vec<String> = main
                    .status_bytes
                    .iter()
                    .map(|(kind, b)| {
                        format!(
                            "{kind} {:.0} / {}",
                            b.floor,
                            b.operator.map(|o| format!("{o:.0}")).unwrap_or("-".into())
                        )
                    })
                    .collect();
                rows.push(info(
                    format!("status bytes, contract floor / operator, N={}", main.apps),
                    each.join(", "),
                ));
            }
        }
        if let Some(ch) = &self.changes {
            let t = target::CHANGE_P99_MS;
            for (what, s) in [
                ("config change", &ch.config),
                ("Secret rotation", &ch.rotation),
            ] {
                rows.push(Row {
                    measure: format!("{what} latency p50 / p95 / p99"),
                    result: latency(&s.latency),
                    target: format!("p99 < {t} ms"),
                    verdict: judge_at_most(s.latency.p99_ms, t, true, " ms"),
                });
                rows.push(info(
                    format!("CPU s in {} {what}s (quiet-spaced)", s.latency.n),
                    s.cpu.describe(),
                ));
            }
            if let Some(r) = &ch.restart {
                let t = target::RESTART_P99_MS;
                rows.push(Row {
                    measure: "Secret rotation -> workload restart stamped p50 / p95 / p99".into(),
                    result: latency(&r.latency),
                    target: format!("p99 < {t} ms"),
                    verdict: judge_at_most(r.latency.p99_ms, t, true, " ms"),
                });
            }
        }
        if let Some(idle) = &self.idle {
            let by: Vec<String> = idle
                .writes_by_request
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            rows.push(Row {
                measure: format!("writes in {} s after a restart (converged)", idle.seconds),
                result: if by.is_empty() {
                    "0".into()
                } else {
                    format!("{} ({})", idle.writes, by.join(", "))
                },
                target: "0".into(),
                verdict: judge_at_most(idle.writes as f64, target::IDLE_WRITES, false, " writes"),
            });
            rows.push(Row {
                measure: format!("operator CPU in {} s after a restart", idle.seconds),
                result: format!("{:.2} s", idle.operator_cpu_seconds),
                target: format!("< {} s", target::IDLE_CPU_SECONDS),
                verdict: judge_at_most(
                    idle.operator_cpu_seconds,
                    target::IDLE_CPU_SECONDS,
                    true,
                    " s",
                ),
            });
            rows.push(info(
                format!("CPU s in {} s after a restart", idle.seconds),
                idle.cpu.describe(),
            ));
            if let Some(heap) = idle.heap {
                rows.push(info(
                    format!("leader heap {} s after a restart", idle.seconds),
                    HeapMib::describe(Some(heap)),
                ));
            }
        }
        if let Some(a) = &self.admission {
            rows.push(Row {
                measure: format!(
                    "{VALIDATING_APPVERSIONS} calls on {} first-stage edits",
                    a.edit_with.latency.n
                ),
                result: if a.edited_versions_stamped {
                    a.validating_calls_on_edits.to_string()
                } else {
                    format!(
                        "{} (the edited versions carry no stage record)",
                        a.validating_calls_on_edits
                    )
                },
                target: "0".into(),
                verdict: judge_at_most(
                    a.validating_calls_on_edits as f64,
                    target::VALIDATING_CALLS_ON_EDIT,
                    false,
                    " calls",
                ),
            });
            rows.push(info(
                "first-stage edit p50 / p99, with / without webhooks (client)".into(),
                format!(
                    "{} / {} ms; {} / {} ms",
                    fmt_num(a.edit_with.latency.p50_ms),
                    fmt_num(a.edit_with.latency.p99_ms),
                    fmt_num(a.edit_without.latency.p50_ms),
                    fmt_num(a.edit_without.latency.p99_ms)
                ),
            ));
            rows.push(Row {
                measure: "webhooks' added p50 / p99 on a first-stage edit (client)".into(),
                result: format!(
                    "{} / {} ms",
                    fmt_num(a.added_p50_ms),
                    fmt_num(a.added_p99_ms)
                ),
                target: format!("p99 < {} ms", target::EDIT_ADDED_P99_MS),
                verdict: judge_at_most(a.added_p99_ms, target::EDIT_ADDED_P99_MS, true, " ms"),
            });
            for c in &a.edit_webhooks {
                rows.push(info(
                    format!(
                        "first-stage edit, {} {}, apiserver p50 / p99",
                        c.name, c.operation
                    ),
                    cost(c),
                ));
            }
            for c in a
                .promotion_webhooks
                .iter()
                .filter(|c| c.name.starts_with("appversions."))
            {
                rows.push(Row {
                    measure: format!("promotion, {} {}, apiserver p50 / p99", c.name, c.operation),
                    result: cost(c),
                    target: format!("p99 < {} ms", target::PROMOTION_WEBHOOK_P99_MS),
                    verdict: judge_quantile(&c.p99, target::PROMOTION_WEBHOOK_P99_MS),
                });
            }
            if a.promotion_cost(VALIDATING_APPVERSIONS).is_none() {
                rows.push(Row {
                    measure: format!(
                        "promotion, {VALIDATING_APPVERSIONS} UPDATE, apiserver p50 / p99"
                    ),
                    result: "no call seen".into(),
                    target: format!("p99 < {} ms", target::PROMOTION_WEBHOOK_P99_MS),
                    verdict: "not measured".into(),
                });
            }
            rows.push(info(
                "promotion p50 / p95 / p99 (client)".into(),
                latency(&a.promotion.latency),
            ));
            if !a.promotion_access_reviews.is_empty() {
                let n = |answer: &str| a.promotion_access_reviews.get(answer).copied().unwrap_or(0);
                rows.push(info(
                    "accesses checked in the promotions".into(),
                    format!(
                        "{} SubjectAccessReviews asked ({} allowed, {} denied), {} answers reused \
                         (`--access-review-ttl`)",
                        n("allowed") + n("denied"),
                        n("allowed"),
                        n("denied"),
                        n("remembered")
                    ),
                ));
            }
            for (what, spaced, costs) in [
                (
                    "an edit by another user",
                    &a.other_user_edit,
                    &a.other_user_webhooks,
                ),
                (
                    "a first edit after creation",
                    &a.first_edit,
                    &a.first_edit_webhooks,
                ),
            ] {
                if spaced.latency.n == 0 {
                    continue;
                }
                rows.push(info(
                    format!("{what} p50 / p95 / p99 (client)"),
                    latency(&spaced.latency),
                ));
                for c in costs.iter().filter(|c| c.name.starts_with("appversions.")) {
                    rows.push(Row {
                        measure: format!("{what}, {} {}, apiserver p50 / p99", c.name, c.operation),
                        result: cost(c),
                        target: format!("p99 < {} ms", target::OTHER_EDIT_WEBHOOK_P99_MS),
                        verdict: judge_quantile(&c.p99, target::OTHER_EDIT_WEBHOOK_P99_MS),
                    });
                }
            }
            for (what, costs) in [
                ("first-stage edit", &a.edit_operator),
                ("promotion", &a.promotion_operator),
            ] {
                let each: Vec<String> = costs
                    .iter()
                    .map(|c| format!("{} {}", c.name, cost(c)))
                    .collect();
                if !each.is_empty() {
                    rows.push(info(
                        format!("{what}, operator's decision p50 / p99"),
                        each.join("; "),
                    ));
                }
            }
        }
        rows
    }

    /// The table (Markdown).
    pub fn table(&self) -> String {
        let mut t = String::new();
        if let Some(why) = &self.incomplete {
            t += &format!("Incomplete run: {why}\n\n");
        }
        t += "| measure | result | target | verdict |\n|---|---|---|---|\n";
        for r in self.rows() {
            t += &format!(
                "| {} | {} | {} | {} |\n",
                r.measure, r.result, r.target, r.verdict
            );
        }
        for [measure, result, target, verdict] in self.peers.iter().flat_map(|p| p.rows()) {
            t += &format!("| {measure} | {result} | {target} | {verdict} |\n");
        }
        t
    }

    /// Rewrites the results section of `md` (between the markers) with this run's table.
    pub fn write_markdown(&self, md: &Path) -> Result<()> {
        let doc = std::fs::read_to_string(md)?;
        let (begin, end) = ("<!-- results:begin -->", "<!-- results:end -->");
        let (Some(a), Some(b)) = (doc.find(begin), doc.find(end)) else {
            bail!("{} has no {begin} ... {end} section", md.display());
        };
        let m = &self.machine;
        let block = format!(
            "{begin}\nMeasured {} on {} ({} cores, {} GiB), Kubernetes {}, concurrency {}.\n\n{}{end}",
            self.date,
            m.cpu,
            m.cores,
            m.memory_gib,
            m.kubernetes,
            self.concurrency,
            self.table()
        );
        std::fs::write(
            md,
            format!("{}{}{}", &doc[..a], block, &doc[b + end.len()..]),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_counts_are_judged_on_reads_and_writes_only() {
        let counts = |pairs: &[(&str, u64)]| -> BTreeMap<String, u64> {
            pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
        };
        let floor = counts(&[("GET secrets", 3000), ("POST secrets", 5000)]);
        let operator = counts(&[
            ("GET secrets", 3000),
            ("POST secrets", 5000),
            ("LIST secrets", 1),
            ("WATCH secrets", 2),
        ]);
        assert_eq!(judge_requests(&floor, &operator), "equal (each within 5)");
        let operator = counts(&[
            ("GET secrets", 3004),
            ("POST secrets", 5000),
            ("APPLY environmentconfigs/status", 79),
            ("GET secrets 404", 6),
        ]);
        assert_eq!(
            judge_requests(&floor, &operator),
            "**differs**: APPLY environmentconfigs/status +79, GET secrets 404 +6"
        );
        assert_eq!(judge_requests(&BTreeMap::new(), &operator), "not recorded");
    }

    #[test]
    fn a_missed_bound_says_by_how_much() {
        assert_eq!(judge_at_most(1.0, 1.25, false, "x"), "met");
        assert_eq!(
            judge_at_most(5.0, 1.25, false, "x"),
            "missed by 3.75x (4.0x the target)"
        );
        assert_eq!(
            judge_at_most(3.0, 0.0, false, " writes"),
            "missed by 3 writes"
        );
        assert_eq!(
            judge_at_most(50.0, 50.0, true, " ms"),
            "missed (must stay below the bound)"
        );
    }

    #[test]
    fn a_bucketed_p99_is_certain_only_when_the_bucket_is() {
        let q = |est, lo, hi| {
            Some(Quantile {
                estimate_ms: est,
                bucket_lower_ms: lo,
                bucket_upper_ms: hi,
            })
        };
        assert_eq!(judge_quantile(&q(3.0, 0.0, Some(5.0)), 10.0), "met");
        // A bucket that holds the bound decides nothing, whatever the estimate inside it.
        for estimate in [8.0, 12.0] {
            assert_eq!(
                judge_quantile(&q(estimate, 5.0, Some(25.0)), 10.0),
                "undetermined (the bucket 5-25 ms holds the bound)"
            );
        }
        assert!(judge_quantile(&q(30.0, 25.0, Some(100.0)), 10.0).starts_with("missed by 15 ms"));
        assert_eq!(judge_quantile(&None, 10.0), "not measured");
    }
}
