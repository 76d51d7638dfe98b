//! Release safety, the pure part: whether a Deployment's rollout is done, failed or still going
//! (the rules `kubectl rollout status` follows), and how a stage's verification advances from
//! what its workloads report. The app reconciler gathers the Deployments and writes the result.

use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use k8s_openapi::{api::apps::v1::Deployment, apimachinery::pkg::apis::meta::v1::Time};

use crate::api::{StageVerification, VerificationCause, VerificationPhase};
use crate::gate;

/// The Deployment condition reason that says its rollout stopped making progress.
pub const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";

/// One workload's rollout, as its Deployment reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkloadState {
    /// Its newest ReplicaSet is fully available and no old pod is left.
    Available,
    /// Still rolling out: why, in words.
    Waiting(String),
    /// Not restarted yet: in a stage that restarts one workload at a time, it waits for
    /// the named Deployment.
    Queued(String),
    /// Its rollout failed: the Deployment's own words, and when it said so.
    Failed { why: String, since: Option<Time> },
}

/// Where the Deployment's rollout stands: the checks of `kubectl rollout status`, in its order.
/// Nothing is judged before the deployment controller has seen the latest template (a stale
/// ProgressDeadlineExceeded from an earlier rollout does not fail a new one).
pub fn workload_state(d: &Deployment) -> WorkloadState {
    let generation = d.metadata.generation.unwrap_or(0);
    let Some(status) = &d.status else {
        return WorkloadState::Waiting(
            "the deployment controller has not reported on it yet".into(),
        );
    };
    if status.observed_generation.unwrap_or(0) < generation {
        return WorkloadState::Waiting(
            "the deployment controller has not seen its new pod template yet".into(),
        );
    }
    let progressing = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Progressing");
    if let Some(c) = progressing
        && c.reason.as_deref() == Some(PROGRESS_DEADLINE_EXCEEDED)
    {
        return WorkloadState::Failed {
            why: format!(
                "{PROGRESS_DEADLINE_EXCEEDED}: {}",
                c.message
                    .as_deref()
                    .unwrap_or("no progress within its deadline")
            ),
            since: c.last_update_time.clone(),
        };
    }
    let wanted = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    if updated < wanted {
        return WorkloadState::Waiting(format!("{updated} of {wanted} new pods created"));
    }
    if total > updated {
        return WorkloadState::Waiting(format!("{} old pods not yet replaced", total - updated));
    }
    if available < updated {
        return WorkloadState::Waiting(format!("{available} of {updated} new pods available"));
    }
    WorkloadState::Available
}

/// Starts a verification: what caused it, and the version concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Start {
    pub cause: VerificationCause,
    pub version: Option<String>,
}

/// The stage's verification after this pass (pure): a new one when `start` is given (or none
/// existed), else `previous` judged again. A Progressing or Failed verification follows its
/// workloads (a Failed one whose workloads later all became available is Verified: the stage
/// recovered); a Verified one stays so until something new starts. `workloads`: every workload
/// of the stage, by name, with its state (one waiting its turn is Waiting).
pub fn advance(
    stage: &str,
    previous: Option<&StageVerification>,
    start: Option<Start>,
    workloads: &[(String, WorkloadState)],
    timeout: Duration,
    now: DateTime<Utc>,
) -> StageVerification {
    // Stored times have whole seconds: a sub-second instant would differ from its stored copy
    // on every pass, and rewrite the status each time.
    let now = now.trunc_subsecs(0);
    let mut v = match (previous, start) {
        (Some(p), None) => p.clone(),
        (previous, start) => begin(stage, previous, start, now),
    };
    let available = workloads
        .iter()
        .filter(|(_, s)| *s == WorkloadState::Available)
        .count();
    v.progress = format!("{available}/{}", workloads.len());
    if v.phase == VerificationPhase::Verified {
        return v;
    }
    let elapsed = now
        .signed_duration_since(gate::to_chrono(v.started_at.0))
        .to_std()
        .unwrap_or_default();
    let workloads: Vec<(String, WorkloadState)> = workloads
        .iter()
        .map(|(name, s)| (name.clone(), since_start(s, &v.started_at)))
        .collect();
    let Some((phase, workload, message)) = judge(&v, &workloads, elapsed, timeout) else {
        return v;
    };
    if phase != v.phase {
        v.finished_at = (phase != VerificationPhase::Progressing).then(|| gate::to_time(now));
    }
    v.phase = phase;
    v.workload = workload;
    v.message = message;
    v
}

/// `state` as it bears on a verification started at `started`: a failure the Deployment reported
/// before then belongs to an earlier rollout (the deployment controller keeps a
/// ProgressDeadlineExceeded condition until the rollout after it completes, e.g. while it goes
/// back to an earlier ReplicaSet), so the workload is still waited for.
fn since_start(state: &WorkloadState, started: &Time) -> WorkloadState {
    match state {
        WorkloadState::Failed {
            why,
            since: Some(since),
        } if since.0 <= started.0 => WorkloadState::Waiting(format!(
            "its previous rollout failed ({why}); waiting for this one"
        )),
        other => other.clone(),
    }
}

/// A verification starting `now`: `start`'s, or, when nothing says what started it (a stage
/// seen for the first time), the previous one's cause, else a configuration change.
fn begin(
    stage: &str,
    previous: Option<&StageVerification>,
    start: Option<Start>,
    now: DateTime<Utc>,
) -> StageVerification {
    let start = start.unwrap_or(Start {
        cause: previous.map_or(VerificationCause::Configuration, |p| p.cause),
        version: previous.and_then(|p| p.version.clone()),
    });
    StageVerification {
        environment: stage.to_string(),
        cause: start.cause,
        version: start.version,
        phase: VerificationPhase::Progressing,
        started_at: gate::to_time(now),
        finished_at: None,
        workload: None,
        progress: String::new(),
        message: String::new(),
        revision: String::new(),
    }
}

/// The phase, the workload concerned and the message after `elapsed` of `v` (Progressing or
/// Failed), from its workloads; `None` leaves a failed verification as it failed while its
/// workloads are still not all available.
fn judge(
    v: &StageVerification,
    workloads: &[(String, WorkloadState)],
    elapsed: Duration,
    timeout: Duration,
) -> Option<(VerificationPhase, Option<String>, String)> {
    let failed = workloads.iter().find_map(|(name, s)| match s {
        WorkloadState::Failed { why, .. } => Some((name, why)),
        _ => None,
    });
    let (waiting, queued) = waited_for(workloads);
    Some(match (failed, waiting) {
        (Some((name, why)), _) => (
            VerificationPhase::Failed,
            Some(name.clone()),
            format!("Deployment {name}: {why}"),
        ),
        (None, Some(_)) if v.phase == VerificationPhase::Failed => return None,
        (None, Some((name, why))) if elapsed >= timeout => (
            VerificationPhase::Failed,
            Some(name.clone()),
            format!(
                "Deployment {name} was not available within the {} s timeout ({why})",
                timeout.as_secs()
            ),
        ),
        (None, Some((name, why))) => (
            VerificationPhase::Progressing,
            Some(name.clone()),
            format!("waiting for Deployment {name}: {why}{queued}"),
        ),
        (None, None) => (
            VerificationPhase::Verified,
            None,
            verified_message(
                workloads.len(),
                elapsed,
                v.phase == VerificationPhase::Failed,
            ),
        ),
    })
}

/// The workload being waited for (one rolling out, before those queued behind it) and why, and
/// the words naming the queued ones (empty when none is).
fn waited_for(workloads: &[(String, WorkloadState)]) -> (Option<(&String, String)>, String) {
    let rolling = workloads.iter().find_map(|(name, s)| match s {
        WorkloadState::Waiting(why) => Some((name, why.clone())),
        _ => None,
    });
    let queued: Vec<(&String, &String)> = workloads
        .iter()
        .filter_map(|(name, s)| match s {
            WorkloadState::Queued(behind) => Some((name, behind)),
            _ => None,
        })
        .collect();
    let waiting = rolling.or_else(|| {
        queued
            .first()
            .map(|(name, behind)| (*name, format!("queued behind Deployment {behind}")))
    });
    let words = match queued.as_slice() {
        [] => String::new(),
        names => format!(
            "; queued, one at a time: {}",
            names
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    (waiting, words)
}

fn verified_message(workloads: usize, elapsed: Duration, recovered: bool) -> String {
    let what = match workloads {
        0 => "no rollout workload to wait for".to_string(),
        1 => "its workload is available".to_string(),
        n => format!("all {n} workloads are available"),
    };
    if recovered {
        format!(
            "{what} ({} s after it started; it had failed)",
            elapsed.as_secs()
        )
    } else {
        format!("{what} ({} s after it started)", elapsed.as_secs())
    }
}

/// The time a verification took, once finished.
pub fn took(v: &StageVerification) -> Option<Duration> {
    let end = v.finished_at.as_ref()?;
    gate::to_chrono(end.0)
        .signed_duration_since(gate::to_chrono(v.started_at.0))
        .to_std()
        .ok()
}

/// When the Progressing verification `v` times out (to wake then).
pub fn deadline(v: &StageVerification, timeout: Duration) -> Option<DateTime<Utc>> {
    (v.phase == VerificationPhase::Progressing).then(|| {
        gate::to_chrono(v.started_at.0) + chrono::Duration::from_std(timeout).unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentSpec, DeploymentStatus};
    use serde_json::json;

    fn deployment(generation: i64, status: serde_json::Value) -> Deployment {
        Deployment {
            metadata: kube::api::ObjectMeta {
                generation: Some(generation),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(2),
                ..Default::default()
            }),
            status: Some(serde_json::from_value::<DeploymentStatus>(status).unwrap()),
        }
    }

    #[test]
    fn a_rollout_is_judged_as_kubectl_rollout_status_does() {
        let stale = deployment(
            3,
            json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}),
        );
        assert!(
            matches!(workload_state(&stale), WorkloadState::Waiting(w) if w.contains("not seen"))
        );
        let creating = deployment(
            3,
            json!({"observedGeneration": 3, "replicas": 3, "updatedReplicas": 1, "availableReplicas": 2}),
        );
        assert_eq!(
            workload_state(&creating),
            WorkloadState::Waiting("1 of 2 new pods created".into())
        );
        let old_left = deployment(
            3,
            json!({"observedGeneration": 3, "replicas": 3, "updatedReplicas": 2, "availableReplicas": 2}),
        );
        assert_eq!(
            workload_state(&old_left),
            WorkloadState::Waiting("1 old pods not yet replaced".into())
        );
        let unavailable = deployment(
            3,
            json!({"observedGeneration": 3, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 1}),
        );
        assert_eq!(
            workload_state(&unavailable),
            WorkloadState::Waiting("1 of 2 new pods available".into())
        );
        let done = deployment(
            3,
            json!({"observedGeneration": 3, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}),
        );
        assert_eq!(workload_state(&done), WorkloadState::Available);
        let mut failed = deployment(
            3,
            json!({"observedGeneration": 3, "replicas": 3, "updatedReplicas": 1, "availableReplicas": 2}),
        );
        failed.status.as_mut().unwrap().conditions = Some(vec![DeploymentCondition {
            type_: "Progressing".into(),
            status: "False".into(),
            reason: Some(PROGRESS_DEADLINE_EXCEEDED.into()),
            message: Some("ReplicaSet \"web-1\" has timed out progressing.".into()),
            ..Default::default()
        }]);
        assert_eq!(
            workload_state(&failed),
            WorkloadState::Failed {
                why: "ProgressDeadlineExceeded: ReplicaSet \"web-1\" has timed out progressing."
                    .into(),
                since: None,
            }
        );
        // The same condition left from before the template changed judges nothing.
        failed.metadata.generation = Some(4);
        assert!(matches!(workload_state(&failed), WorkloadState::Waiting(_)));
    }

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn release(version: &str) -> Option<Start> {
        Some(Start {
            cause: VerificationCause::Release,
            version: Some(version.into()),
        })
    }

    const TIMEOUT: Duration = Duration::from_secs(60);

    #[test]
    fn a_verification_follows_its_workloads_until_available_failed_or_timed_out() {
        let waiting = |w: &str| {
            (
                w.to_string(),
                WorkloadState::Waiting("1 of 2 new pods available".into()),
            )
        };
        let ok = |w: &str| (w.to_string(), WorkloadState::Available);
        let v = advance(
            "production",
            None,
            release("v2"),
            &[waiting("a"), ok("b")],
            TIMEOUT,
            at(0),
        );
        assert_eq!(v.phase, VerificationPhase::Progressing);
        assert_eq!(v.progress, "1/2");
        assert_eq!(v.workload.as_deref(), Some("a"));
        assert_eq!(v.version.as_deref(), Some("v2"));
        assert!(v.finished_at.is_none());

        let done = advance(
            "production",
            Some(&v),
            None,
            &[ok("a"), ok("b")],
            TIMEOUT,
            at(12),
        );
        assert_eq!(done.phase, VerificationPhase::Verified);
        assert_eq!(took(&done), Some(Duration::from_secs(12)));
        assert!(
            done.message.contains("all 2 workloads are available (12 s"),
            "{}",
            done.message
        );
        // Verified stays so until something new starts, whatever the workloads do later.
        let later = advance(
            "production",
            Some(&done),
            None,
            &[waiting("a"), ok("b")],
            TIMEOUT,
            at(99),
        );
        assert_eq!(later.phase, VerificationPhase::Verified);

        let timed_out = advance(
            "production",
            Some(&v),
            None,
            &[waiting("a"), ok("b")],
            TIMEOUT,
            at(60),
        );
        assert_eq!(timed_out.phase, VerificationPhase::Failed);
        assert!(
            timed_out
                .message
                .contains("Deployment a was not available within the 60 s timeout")
        );
        assert_eq!(deadline(&v, TIMEOUT), Some(at(60)));

        let failed = advance(
            "production",
            Some(&v),
            None,
            &[(
                "a".into(),
                WorkloadState::Failed {
                    why: "ProgressDeadlineExceeded: stuck".into(),
                    since: Some(gate::to_time(at(4))),
                },
            )],
            TIMEOUT,
            at(5),
        );
        assert_eq!(failed.phase, VerificationPhase::Failed);
        assert_eq!(failed.workload.as_deref(), Some("a"));
        assert_eq!(failed.finished_at, Some(gate::to_time(at(5))));
        // Still not available: still failed, the first failure's time kept.
        let still = advance(
            "production",
            Some(&failed),
            None,
            &[waiting("a")],
            TIMEOUT,
            at(300),
        );
        assert_eq!(still, with_progress(&failed, "0/1"));
        // Available after all: the stage recovered.
        let recovered = advance(
            "production",
            Some(&failed),
            None,
            &[ok("a")],
            TIMEOUT,
            at(400),
        );
        assert_eq!(recovered.phase, VerificationPhase::Verified);
        assert!(recovered.message.contains("it had failed"));

        // Something new starts over, whatever the previous outcome.
        let next = advance(
            "production",
            Some(&failed),
            release("v3"),
            &[waiting("a")],
            TIMEOUT,
            at(500),
        );
        assert_eq!(
            (next.phase, next.version.as_deref()),
            (VerificationPhase::Progressing, Some("v3"))
        );
        assert_eq!(next.started_at, gate::to_time(at(500)));
    }

    fn with_progress(v: &StageVerification, progress: &str) -> StageVerification {
        StageVerification {
            progress: progress.into(),
            ..v.clone()
        }
    }

    #[test]
    fn a_failure_reported_before_the_verification_started_is_an_earlier_rollouts() {
        let stale = WorkloadState::Failed {
            why: "ProgressDeadlineExceeded: ReplicaSet \"web-2\" has timed out progressing.".into(),
            since: Some(gate::to_time(at(0))),
        };
        let v = advance(
            "production",
            None,
            release("v1"),
            &[("web".into(), stale.clone())],
            TIMEOUT,
            at(0),
        );
        assert_eq!(v.phase, VerificationPhase::Progressing);
        assert!(
            v.message.contains("its previous rollout failed"),
            "{}",
            v.message
        );
        // Reported after it started: this rollout's failure.
        let fresh = WorkloadState::Failed {
            why: "ProgressDeadlineExceeded: ReplicaSet \"web-1\" has timed out progressing.".into(),
            since: Some(gate::to_time(at(11))),
        };
        let v = advance(
            "production",
            Some(&v),
            None,
            &[("web".into(), fresh)],
            TIMEOUT,
            at(12),
        );
        assert_eq!(v.phase, VerificationPhase::Failed);
    }

    #[test]
    fn a_stage_seen_first_is_verified_as_it_stands() {
        let v = advance(
            "staging",
            None,
            None,
            &[("a".into(), WorkloadState::Available)],
            TIMEOUT,
            at(0),
        );
        assert_eq!(
            (v.cause, v.phase),
            (
                VerificationCause::Configuration,
                VerificationPhase::Verified
            )
        );
    }
}
