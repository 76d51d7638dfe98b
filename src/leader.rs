//! Leader election on a `coordination.k8s.io` Lease. Only the leader reconciles; every replica
//! keeps its caches and serves the webhook. Expiry is judged on this replica's own clock from
//! when it last saw the lease record change (no trust in other replicas' clocks), as client-go does.
//!
//! Fencing: the leader stops reconciling as soon as it has not renewed for `renew_deadline`
//! (shorter than `lease_duration`, after which another replica may take over), counted from when
//! its last successful renewal was sent. The fence is a deadline checked by every write, not a flag
//! the election loop must remember to clear: a renewal request that hangs (an apiserver that is
//! stopped or partitioned away answers nothing, and the client has no read timeout) cannot keep a
//! replica leading. If the election task itself dies, the process exits rather than reconciling
//! blind.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use futures::Stream;
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ObjectMeta, PostParams},
};
use tokio::sync::broadcast;
use tracing::{info, warn};

/// Timing of the election.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl LeaseSettings {
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        LeaseSettings {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Whether this replica may reconcile now.
pub struct Leadership {
    leader: AtomicBool,
    /// Elected: until when (on this replica's clock) the last successful renewal lets it write.
    fence: Mutex<Option<Instant>>,
    acquired: broadcast::Sender<()>,
    /// Without election (a single replica), this replica always leads.
    elected: bool,
}

impl Leadership {
    /// Always the leader: no election (one replica).
    pub fn always() -> Arc<Leadership> {
        Arc::new(Leadership {
            leader: AtomicBool::new(true),
            fence: Mutex::new(None),
            acquired: broadcast::channel(4).0,
            elected: false,
        })
    }

    /// Starts an election; not the leader until the lease is held.
    pub fn elect(client: Client, settings: LeaseSettings) -> Arc<Leadership> {
        let leadership = Arc::new(Leadership {
            leader: AtomicBool::new(false),
            fence: Mutex::new(None),
            acquired: broadcast::channel(4).0,
            elected: true,
        });
        let task = leadership.clone();
        tokio::spawn(async move {
            let outcome = tokio::spawn(campaign(client, settings, task.clone())).await;
            // The election must never end: without it this replica cannot know whether it leads.
            task.leader.store(false, Ordering::SeqCst);
            tracing::error!(
                ?outcome,
                "leader election task ended; exiting rather than reconciling blind"
            );
            std::process::exit(1);
        });
        leadership
    }

    /// Whether this replica leads now: elected, and within the renew deadline of its last
    /// successful renewal. Passing the deadline ends the leadership here and now (logged once),
    /// so that the next renewal counts as a new acquisition and reconciles everything again.
    pub fn is_leader(&self) -> bool {
        if !self.leader.load(Ordering::SeqCst) {
            return false;
        }
        if self.elected && self.remaining().is_zero() {
            self.set(false);
            return false;
        }
        true
    }

    /// How long the last renewal still lets this replica write (zero when it does not lead).
    fn remaining(&self) -> Duration {
        self.fence
            .lock()
            .expect("lock")
            .map_or(Duration::ZERO, |until| {
                until.saturating_duration_since(Instant::now())
            })
    }

    /// A renewal sent at `sent` succeeded: this replica leads until `sent + renew_deadline`.
    fn renewed(&self, sent: Instant, renew_deadline: Duration) {
        *self.fence.lock().expect("lock") = Some(sent + renew_deadline);
        self.set(true);
    }

    /// Yields each time this replica becomes the leader.
    pub fn acquisitions(&self) -> impl Stream<Item = ()> + Send + 'static {
        let rx = self.acquired.subscribe();
        futures::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Ok(()) | Err(broadcast::error::RecvError::Lagged(_)) => Some(((), rx)),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        })
    }

    fn set(&self, leader: bool) {
        if !leader {
            *self.fence.lock().expect("lock") = None;
        }
        let was = self.leader.swap(leader, Ordering::SeqCst);
        if leader && !was {
            info!("became the leader; reconciling");
            let _ = self.acquired.send(());
        } else if !leader && was {
            warn!("lost the leadership; reconciling stops");
        }
    }
}

/// What this replica last saw of the lease: the record and when (on its own clock) it changed.
struct Observed {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    seen_change_at: Instant,
}

async fn campaign(client: Client, settings: LeaseSettings, leadership: Arc<Leadership>) {
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    let mut observed: Option<Observed> = None;
    loop {
        let sent = Instant::now();
        // A round may not outlive the leadership it renews (nor, when following, the renew
        // deadline): a request that hangs is abandoned, and the fence has ended the leadership.
        let budget = if leadership.is_leader() {
            leadership.remaining()
        } else {
            settings.renew_deadline
        }
        .max(settings.retry_period);
        let round =
            tokio::time::timeout(budget, try_acquire_or_renew(&api, &settings, &mut observed));
        match round.await {
            Ok(Ok(true)) => leadership.renewed(sent, settings.renew_deadline),
            Ok(Ok(false)) => leadership.set(false),
            // Leading or not is the fence's to say: it ends at the renew deadline.
            Ok(Err(e)) => {
                warn!(error = %e, "lease update failed");
                leadership.is_leader();
            }
            Err(_) => {
                warn!(after = ?budget, "lease update timed out");
                leadership.is_leader();
            }
        }
        tokio::time::sleep(settings.retry_period).await;
    }
}

fn lease_spec(settings: &LeaseSettings, transitions: i32, acquire: Option<MicroTime>) -> LeaseSpec {
    let now = MicroTime(Timestamp::now());
    LeaseSpec {
        holder_identity: Some(settings.identity.clone()),
        lease_duration_seconds: Some(settings.lease_duration.as_secs() as i32),
        acquire_time: Some(acquire.unwrap_or_else(|| now.clone())),
        renew_time: Some(now),
        lease_transitions: Some(transitions),
        ..Default::default()
    }
}

/// One round: returns whether this replica holds the lease afterwards.
async fn try_acquire_or_renew(
    api: &Api<Lease>,
    settings: &LeaseSettings,
    observed: &mut Option<Observed>,
) -> Result<bool, kube::Error> {
    let Some(mut lease) = api.get_opt(&settings.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(settings.name.clone()),
                ..Default::default()
            },
            spec: Some(lease_spec(settings, 0, None)),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let changed = observed
        .as_ref()
        .is_none_or(|o| o.holder != spec.holder_identity || o.renew_time != spec.renew_time);
    if changed {
        *observed = Some(Observed {
            holder: spec.holder_identity.clone(),
            renew_time: spec.renew_time.clone(),
            seen_change_at: Instant::now(),
        });
    }
    let ours = spec.holder_identity.as_deref() == Some(settings.identity.as_str());
    let duration = spec
        .lease_duration_seconds
        .map(|s| Duration::from_secs(s.max(1) as u64))
        .unwrap_or(settings.lease_duration);
    let expired = spec.holder_identity.as_deref().is_none_or(str::is_empty)
        || observed
            .as_ref()
            .is_some_and(|o| o.seen_change_at.elapsed() > duration);
    if !ours && !expired {
        return Ok(false);
    }
    let transitions = spec.lease_transitions.unwrap_or(0) + if ours { 0 } else { 1 };
    let acquire = if ours {
        spec.acquire_time.clone()
    } else {
        None
    };
    lease.spec = Some(lease_spec(settings, transitions, acquire));
    // The resourceVersion makes this a compare-and-swap: two replicas cannot both win.
    match api
        .replace(&settings.name, &PostParams::default(), &lease)
        .await
    {
        Ok(updated) => {
            if !ours {
                info!(lease = %updated.name_any(), identity = %settings.identity, transitions, "acquired the lease");
            }
            Ok(true)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elected() -> Leadership {
        Leadership {
            leader: AtomicBool::new(false),
            fence: Mutex::new(None),
            acquired: broadcast::channel(4).0,
            elected: true,
        }
    }

    #[test]
    fn leadership_ends_at_the_renew_deadline_even_if_the_election_loop_is_stuck() {
        let leadership = elected();
        let mut acquisitions = leadership.acquired.subscribe();
        leadership.renewed(Instant::now(), Duration::from_secs(10));
        assert!(leadership.is_leader());
        assert!(acquisitions.try_recv().is_ok(), "an acquisition");
        // A renewal sent 11 s ago with a 10 s deadline (the next one never came back).
        leadership.renewed(
            Instant::now() - Duration::from_secs(11),
            Duration::from_secs(10),
        );
        assert!(!leadership.is_leader(), "fenced at the deadline");
        // The next successful renewal is a new acquisition: everything is reconciled again.
        leadership.renewed(Instant::now(), Duration::from_secs(10));
        assert!(leadership.is_leader());
        assert!(acquisitions.try_recv().is_ok(), "a second acquisition");
    }

    #[test]
    fn a_replica_without_election_always_leads() {
        assert!(Leadership::always().is_leader());
    }
}
