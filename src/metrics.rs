//! Prometheus metrics. Labels carry kinds, reasons and results, never object contents.
//!
//! Every label value of the admission metrics comes from a closed set (the enums below): the
//! webhook port answers whoever reaches it, and a label copied from a request would let any caller
//! create series without bound.
//!
//! The delivery metrics (lead time, time in a stage, deliveries, verifications, automatic
//! rollbacks, time to restore) also carry names: the namespace, the app and the stage
//! (`environment`), never anything else of the objects. The namespace and the stage are kept as
//! they are; the app is named only for the first [`MAX_APP_SERIES`] distinct (namespace, app)
//! pairs the process records, every later app of a namespace shares the app label [`OTHER_APP`].

use std::{
    collections::HashSet,
    fmt::Write as _,
    sync::{Mutex, PoisonError},
    time::Duration,
};

use kube::core::admission::Operation;
use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Metric, Registry},
};

use crate::api::{GROUP, LifecycleEvent};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: &'static str,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub controller: &'static str,
    pub object: &'static str,
}

/// An enum whose variants are the only values a label can take, encoded as the given text.
macro_rules! closed_label {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
        pub enum $name {
            $($variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                encoder.write_str(self.as_str())
            }
        }
    };
}

closed_label! {
    /// Which admission webhook answered.
    Webhook {
        Validate => "validate",
        Mutate => "mutate",
    }
}

closed_label! {
    /// The kind under review: one of ours, or `other` for anything else (and for a body that
    /// could not be decoded).
    AdmissionKind {
        AppVersion => "AppVersion",
        ToolJetApp => "ToolJetApp",
        EnvironmentConfig => "EnvironmentConfig",
        Other => "other",
    }
}

closed_label! {
    /// The operation under review; `other` when the body could not be decoded.
    AdmissionOperation {
        Create => "CREATE",
        Update => "UPDATE",
        Delete => "DELETE",
        Connect => "CONNECT",
        Other => "other",
    }
}

closed_label! {
    /// What the webhook answered: `invalid` is a body that is not an AdmissionReview (HTTP 4xx),
    /// never decided; `timeout`, a review refused because it was not decided before the
    /// apiserver stops waiting (its checks' reads were too slow).
    AdmissionResult {
        Allowed => "allowed",
        Denied => "denied",
        Invalid => "invalid",
        Timeout => "timeout",
    }
}

impl AdmissionKind {
    /// The label for a request's kind. Only our group's kinds are named: an `AppVersion` of
    /// another group is a different kind.
    pub fn of(group: &str, kind: &str) -> AdmissionKind {
        if group != GROUP {
            return AdmissionKind::Other;
        }
        match kind {
            "AppVersion" => AdmissionKind::AppVersion,
            "ToolJetApp" => AdmissionKind::ToolJetApp,
            "EnvironmentConfig" => AdmissionKind::EnvironmentConfig,
            _ => AdmissionKind::Other,
        }
    }
}

impl From<&Operation> for AdmissionOperation {
    fn from(operation: &Operation) -> AdmissionOperation {
        match operation {
            Operation::Create => AdmissionOperation::Create,
            Operation::Update => AdmissionOperation::Update,
            Operation::Delete => AdmissionOperation::Delete,
            Operation::Connect => AdmissionOperation::Connect,
        }
    }
}

closed_label! {
    /// How the webhook learnt whether a requester holds an access: the apiserver's answer to a
    /// SubjectAccessReview, or an allowing answer remembered (see `webhook::access`).
    AccessAnswer {
        Allowed => "allowed",
        Denied => "denied",
        Remembered => "remembered",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AccessLabels {
    pub answer: AccessAnswer,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionLabels {
    pub webhook: Webhook,
    pub kind: AdmissionKind,
    pub operation: AdmissionOperation,
    pub result: AdmissionResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    pub webhook: Webhook,
}

/// How many distinct (namespace, app) pairs the delivery metrics name; the app of every later
/// pair is recorded as [`OTHER_APP`], so the series stay bounded however many apps come and go.
pub const MAX_APP_SERIES: usize = 1000;

/// The app label of the apps past the first [`MAX_APP_SERIES`] (not a valid object name, so it
/// cannot be mistaken for an app).
pub const OTHER_APP: &str = "_other";

closed_label! {
    /// How a version became the released one: a release, a rollback to an older version by a
    /// person, or an automatic rollback by the operator.
    DeliveryKind {
        Release => "release",
        Rollback => "rollback",
        AutomaticRollback => "automatic_rollback",
    }
}

closed_label! {
    /// The outcome of a version's verification in a stage.
    VerificationResult {
        Verified => "verified",
        Failed => "failed",
    }
}

/// The labels of a delivery metric about one app: its namespace and its (bounded) name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppLabels {
    pub namespace: String,
    pub app: String,
}

/// The labels of a delivery metric about one stage of an app.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub namespace: String,
    pub app: String,
    pub environment: String,
}

/// The labels of a delivery: the app and how the version was delivered.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    pub namespace: String,
    pub app: String,
    pub kind: DeliveryKind,
}

/// The labels of a verification: the app, the stage and the outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerificationLabels {
    pub namespace: String,
    pub app: String,
    pub environment: String,
    pub result: VerificationResult,
}

/// The labels of a Notification's delivery attempt: the event type and the result (`delivered`,
/// or why it failed: `status`, `timeout`, `transport`, `invalid_url`). No URL, no name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NotificationLabels {
    pub event: &'static str,
    pub result: &'static str,
}

/// Every metric the operator exports.
pub struct Metrics {
    registry: Registry,
    pub reconciles: Family<ControllerLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Family<ControllerLabels, Histogram>,
    pub writes: Family<WriteLabels, Counter>,
    pub materializations: Counter,
    pub secret_reads: Counter,
    pub promotions: Counter,
    pub releases: Counter,
    delivery: Delivery,
    pub admission_requests: Family<AdmissionLabels, Counter>,
    pub admission_duration: Family<WebhookLabels, Histogram>,
    pub access_reviews: Family<AccessLabels, Counter>,
    pub notifications: Family<NotificationLabels, Counter>,
    heap: Option<HeapGauges>,
}

/// What the process's allocator holds, as it reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heap {
    /// Bytes in live allocations.
    pub allocated: u64,
    /// Bytes in the resident pages the allocator maps: live allocations, freed memory not yet
    /// handed back to the system, and its own metadata. The process's RSS less this is code,
    /// stacks and what is not allocated through it.
    pub resident: u64,
}

/// How the binary reads its allocator's figures (`None` when it cannot).
pub type HeapReader = fn() -> Option<Heap>;

/// The heap gauges, set from `read` when `/metrics` is rendered.
struct HeapGauges {
    read: HeapReader,
    allocated: Gauge,
    resident: Gauge,
}

/// The delivery metrics. Private: they are recorded through [`Metrics`]' methods, which bound
/// the app label.
struct Delivery {
    lead_times: Family<AppLabels, Histogram>,
    stage_times: Family<StageLabels, Histogram>,
    deliveries: Family<DeliveryLabels, Counter>,
    verifications: Family<VerificationLabels, Counter>,
    automatic_rollbacks: Family<AppLabels, Counter>,
    restore_times: Family<AppLabels, Histogram>,
    /// The (namespace, app) pairs they name, at most [`MAX_APP_SERIES`].
    named_apps: Mutex<HashSet<(String, String)>>,
}

impl Delivery {
    /// Registers the families in `r`, in this order.
    fn register(r: &mut Registry) -> Delivery {
        Delivery {
            lead_times: register(
                r,
                "lead_time_seconds",
                "Time from a version's creation to its release, by app",
                Family::new_with_constructor(delivery_histogram),
            ),
            stage_times: register(
                r,
                "stage_time_seconds",
                "Time a version stayed in a stage before it was promoted out of it",
                Family::new_with_constructor(delivery_histogram),
            ),
            deliveries: register(
                r,
                "deliveries",
                "Versions released, by kind (release, rollback, automatic_rollback)",
                Family::default(),
            ),
            verifications: register(
                r,
                "verifications",
                "Verifications of a version in a stage, by result (verified, failed)",
                Family::default(),
            ),
            automatic_rollbacks: register(
                r,
                "automatic_rollbacks",
                "Automatic rollbacks (a change-failure signal)",
                Family::default(),
            ),
            restore_times: register(
                r,
                "time_to_restore_seconds",
                "Time from the start of a release that failed verification to the verification of the rollback that replaced it",
                Family::new_with_constructor(restore_histogram),
            ),
            named_apps: Mutex::default(),
        }
    }
}

impl Default for Metrics {
    /// Every family registered, and the series of the closed label sets started at zero; no
    /// heap figures.
    fn default() -> Self {
        Metrics::with_heap(None)
    }
}

impl Metrics {
    /// [`Metrics::default`], and the heap figures `heap` reads (the binary's allocator), set
    /// each time `/metrics` is rendered.
    pub fn with_heap(heap: Option<HeapReader>) -> Self {
        let mut registry = Registry::with_prefix("tooljet_operator");
        let r = &mut registry;
        // Fields are initialised in the order written, so the families are registered (and
        // rendered) in this order; the registry moves in last.
        let metrics = Metrics {
            reconciles: register(r, "reconciles", "Reconciliations run", Family::default()),
            reconcile_errors: register(
                r,
                "reconcile_errors",
                "Reconciliations that failed, by reason",
                Family::default(),
            ),
            reconcile_duration: register(
                r,
                "reconcile_duration_seconds",
                "Time to reconcile one object",
                Family::new_with_constructor(reconcile_histogram),
            ),
            writes: register(
                r,
                "writes",
                "Writes to the Kubernetes API, by object",
                Family::default(),
            ),
            materializations: register(
                r,
                "materializations",
                "Materialised Secrets written (created, updated or restored)",
                Counter::default(),
            ),
            secret_reads: register(
                r,
                "referenced_secret_reads",
                "Secrets referenced by an EnvironmentConfig read from the API (not cached at their latest resourceVersion)",
                Counter::default(),
            ),
            promotions: register(r, "promotions", "Promotions observed", Counter::default()),
            releases: register(
                r,
                "releases",
                "Releases and rollbacks observed",
                Counter::default(),
            ),
            delivery: Delivery::register(r),
            admission_requests: register(
                r,
                "admission_requests",
                "Admission reviews answered, by result",
                Family::default(),
            ),
            admission_duration: register(
                r,
                "admission_duration_seconds",
                "Server-side time to decide an admission review",
                Family::new_with_constructor(admission_histogram),
            ),
            access_reviews: register(
                r,
                "access_reviews",
                "Accesses the webhook checked: asked of the apiserver (allowed, denied) or remembered",
                Family::default(),
            ),
            notifications: register(
                r,
                "notifications",
                "Notification delivery attempts, by event type and result",
                Family::default(),
            ),
            heap: heap.map(|read| HeapGauges {
                read,
                allocated: register(
                    r,
                    "heap_allocated_bytes",
                    "Bytes in live allocations, as the allocator reports them",
                    Gauge::default(),
                ),
                resident: register(
                    r,
                    "heap_resident_bytes",
                    "Bytes in the resident pages the allocator maps (live, freed not yet returned, its metadata)",
                    Gauge::default(),
                ),
            }),
            registry,
        };
        metrics.start_access_series();
        metrics.start_admission_series();
        metrics.start_notification_series();
        metrics
    }
}

/// The buckets of a reconcile's duration (seconds).
fn reconcile_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    ])
}

/// The buckets of an admission decision's duration (seconds).
fn admission_histogram() -> Histogram {
    Histogram::new([
        0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
    ])
}

/// The buckets of a lead time and of a time in a stage (seconds): a minute to a month.
fn delivery_histogram() -> Histogram {
    const HOUR: f64 = 3600.0;
    const DAY: f64 = 24.0 * HOUR;
    Histogram::new([
        60.0,
        300.0,
        900.0,
        HOUR,
        4.0 * HOUR,
        DAY,
        3.0 * DAY,
        7.0 * DAY,
        30.0 * DAY,
    ])
}

/// The buckets of a time to restore (seconds): ten seconds to four hours.
fn restore_histogram() -> Histogram {
    Histogram::new([
        10.0,
        30.0,
        60.0,
        120.0,
        300.0,
        600.0,
        1800.0,
        3600.0,
        4.0 * 3600.0,
    ])
}

/// Registers `metric` as `name` with `help`, and returns it (a handle on the registered one).
fn register<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

impl Metrics {
    /// Starts the delivered series of every event type at zero.
    fn start_notification_series(&self) {
        for event in LifecycleEvent::ALL {
            let _ = self.notifications.get_or_create(&NotificationLabels {
                event: event.name(),
                result: "delivered",
            });
        }
    }

    /// Starts the series of every access answer at zero.
    fn start_access_series(&self) {
        for &answer in AccessAnswer::ALL {
            let _ = self.access_reviews.get_or_create(&AccessLabels { answer });
        }
    }

    /// Starts at zero, for each webhook, its duration series, the request series of every
    /// decision on our apps and versions, and the series of undecodable bodies.
    fn start_admission_series(&self) {
        for &webhook in Webhook::ALL {
            let _ = self
                .admission_duration
                .get_or_create(&WebhookLabels { webhook });
            for kind in [AdmissionKind::AppVersion, AdmissionKind::ToolJetApp] {
                for operation in [
                    AdmissionOperation::Create,
                    AdmissionOperation::Update,
                    AdmissionOperation::Delete,
                ] {
                    for result in [
                        AdmissionResult::Allowed,
                        AdmissionResult::Denied,
                        AdmissionResult::Timeout,
                    ] {
                        let _ = self.admission_requests.get_or_create(&AdmissionLabels {
                            webhook,
                            kind,
                            operation,
                            result,
                        });
                    }
                }
            }
            // Undecodable bodies have one series per webhook, so an alert on them sees it at 0.
            let _ = self
                .admission_requests
                .get_or_create(&AdmissionLabels::invalid(webhook));
        }
    }
}

impl AdmissionLabels {
    /// The labels of a body that is not an AdmissionReview: nothing in it is trusted.
    pub fn invalid(webhook: Webhook) -> AdmissionLabels {
        AdmissionLabels {
            webhook,
            kind: AdmissionKind::Other,
            operation: AdmissionOperation::Other,
            result: AdmissionResult::Invalid,
        }
    }
}

impl Metrics {
    /// Starts every controller's series at zero (`controllers`, and the error series of `step`,
    /// the one every reconcile takes), so dashboards and alerts see the families before the first
    /// event.
    pub fn prime(&self, controllers: &[&'static str], step: &'static str) {
        for &controller in controllers {
            let _ = self
                .reconciles
                .get_or_create(&ControllerLabels { controller });
            let _ = self
                .reconcile_duration
                .get_or_create(&ControllerLabels { controller });
            let _ = self.reconcile_errors.get_or_create(&ErrorLabels {
                controller,
                reason: step.into(),
            });
            for object in ["secret", "status"] {
                let _ = self
                    .writes
                    .get_or_create(&WriteLabels { controller, object });
            }
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        if let Some(gauges) = &self.heap
            && let Some(heap) = (gauges.read)()
        {
            gauges
                .allocated
                .set(i64::try_from(heap.allocated).unwrap_or(i64::MAX));
            gauges
                .resident
                .set(i64::try_from(heap.resident).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// Counts one reconcile pass of `controller` when the returned guard drops: every pass,
    /// whether it converged, returned early or failed.
    pub fn reconcile(self: &std::sync::Arc<Self>, controller: &'static str) -> ReconcileGuard {
        ReconcileGuard {
            metrics: self.clone(),
            controller,
            started: std::time::Instant::now(),
        }
    }

    pub fn reconciled(&self, controller: &'static str, took: Duration) {
        self.reconciles
            .get_or_create(&ControllerLabels { controller })
            .inc();
        self.reconcile_duration
            .get_or_create(&ControllerLabels { controller })
            .observe(took.as_secs_f64());
    }

    pub fn failed(&self, controller: &'static str, reason: &str) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels {
                controller,
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn access_review(&self, answer: AccessAnswer) {
        self.access_reviews
            .get_or_create(&AccessLabels { answer })
            .inc();
    }

    pub fn wrote(&self, controller: &'static str, object: &'static str) {
        self.writes
            .get_or_create(&WriteLabels { controller, object })
            .inc();
    }
}

/// The delivery metrics. Each takes the namespace and name of the app (and the stage's name),
/// never anything else of the objects; the app label is bounded (see [`MAX_APP_SERIES`]).
impl Metrics {
    /// The app label of `app` in `namespace`: its name if the pair is already named or fewer
    /// than [`MAX_APP_SERIES`] pairs are, [`OTHER_APP`] otherwise.
    fn app_label(&self, namespace: &str, app: &str) -> String {
        // A panic elsewhere while holding the lock leaves the set whole: keep using it.
        let mut named = self
            .delivery
            .named_apps
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let pair = (namespace.to_string(), app.to_string());
        if named.contains(&pair) {
            return pair.1;
        }
        if named.len() < MAX_APP_SERIES {
            named.insert(pair.clone());
            return pair.1;
        }
        OTHER_APP.to_string()
    }

    fn app_labels(&self, namespace: &str, app: &str) -> AppLabels {
        AppLabels {
            namespace: namespace.to_string(),
            app: self.app_label(namespace, app),
        }
    }

    /// Records a release's lead time: `seconds` from the version's creation to its release
    /// (`tooljet_operator_lead_time_seconds`).
    pub fn lead_time(&self, namespace: &str, app: &str, seconds: f64) {
        self.delivery
            .lead_times
            .get_or_create(&self.app_labels(namespace, app))
            .observe(seconds);
    }

    /// Records that a version stayed `seconds` in the stage `environment` before it was
    /// promoted out of it (`tooljet_operator_stage_time_seconds`).
    pub fn stage_time(&self, namespace: &str, app: &str, environment: &str, seconds: f64) {
        self.delivery
            .stage_times
            .get_or_create(&StageLabels {
                namespace: namespace.to_string(),
                app: self.app_label(namespace, app),
                environment: environment.to_string(),
            })
            .observe(seconds);
    }

    /// Counts one attempt to deliver a Notification's `event` (`tooljet_operator_notifications_total`).
    pub fn notified(&self, event: &'static str, result: &'static str) {
        self.notifications
            .get_or_create(&NotificationLabels { event, result })
            .inc();
    }

    /// Counts one delivery of `kind` (`tooljet_operator_deliveries_total`). Independent of
    /// [`Metrics::automatic_rollback`]: an automatic rollback shows in both families only when
    /// the caller calls both.
    pub fn delivered(&self, namespace: &str, app: &str, kind: DeliveryKind) {
        self.delivery
            .deliveries
            .get_or_create(&DeliveryLabels {
                namespace: namespace.to_string(),
                app: self.app_label(namespace, app),
                kind,
            })
            .inc();
    }

    /// Counts one verification of a version in the stage `environment`, `verified` when `ok`,
    /// `failed` otherwise (`tooljet_operator_verifications_total`).
    pub fn verified(&self, namespace: &str, app: &str, environment: &str, ok: bool) {
        let result = if ok {
            VerificationResult::Verified
        } else {
            VerificationResult::Failed
        };
        self.delivery
            .verifications
            .get_or_create(&VerificationLabels {
                namespace: namespace.to_string(),
                app: self.app_label(namespace, app),
                environment: environment.to_string(),
                result,
            })
            .inc();
    }

    /// Counts one automatic rollback (`tooljet_operator_automatic_rollbacks_total`), a
    /// change-failure signal. Independent of [`Metrics::delivered`].
    pub fn automatic_rollback(&self, namespace: &str, app: &str) {
        self.delivery
            .automatic_rollbacks
            .get_or_create(&self.app_labels(namespace, app))
            .inc();
    }

    /// Records a time to restore: `seconds` from the start of a release that failed
    /// verification to the verification of the rollback that replaced it
    /// (`tooljet_operator_time_to_restore_seconds`).
    pub fn restored(&self, namespace: &str, app: &str, seconds: f64) {
        self.delivery
            .restore_times
            .get_or_create(&self.app_labels(namespace, app))
            .observe(seconds);
    }
}

/// Counts a reconcile pass and its duration when dropped (see [`Metrics::reconcile`]).
pub struct ReconcileGuard {
    metrics: std::sync::Arc<Metrics>,
    controller: &'static str,
    started: std::time::Instant,
}

impl Drop for ReconcileGuard {
    fn drop(&mut self) {
        self.metrics
            .reconciled(self.controller, self.started.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heap_is_read_when_rendered_and_only_when_a_reader_is_given() {
        fn heap() -> Option<Heap> {
            Some(Heap {
                allocated: 41 << 20,
                resident: 57 << 20,
            })
        }
        let text = Metrics::with_heap(Some(heap)).render();
        assert!(
            text.contains("tooljet_operator_heap_allocated_bytes 42991616\n"),
            "{text}"
        );
        assert!(
            text.contains("tooljet_operator_heap_resident_bytes 59768832\n"),
            "{text}"
        );
        assert!(!Metrics::default().render().contains("heap_"));
        // A reader that cannot read leaves the gauges as they were (zero), never fails.
        let text = Metrics::with_heap(Some(|| None)).render();
        assert!(
            text.contains("tooljet_operator_heap_allocated_bytes 0\n"),
            "{text}"
        );
    }

    #[test]
    fn renders_every_family() {
        let m = Metrics::default();
        m.reconciled("environmentconfig", Duration::from_millis(3));
        m.failed("appversion", "Kube");
        m.wrote("environmentconfig", "secret");
        m.materializations.inc();
        m.admission_requests
            .get_or_create(&AdmissionLabels {
                webhook: Webhook::Validate,
                kind: AdmissionKind::AppVersion,
                operation: AdmissionOperation::Update,
                result: AdmissionResult::Denied,
            })
            .inc();
        m.admission_duration
            .get_or_create(&WebhookLabels {
                webhook: Webhook::Validate,
            })
            .observe(0.0004);
        let text = m.render();
        for family in [
            "tooljet_operator_reconciles_total",
            "tooljet_operator_reconcile_errors_total",
            "tooljet_operator_reconcile_duration_seconds_bucket",
            "tooljet_operator_writes_total",
            "tooljet_operator_materializations_total",
            "tooljet_operator_promotions_total",
            "tooljet_operator_releases_total",
            "tooljet_operator_admission_requests_total",
            "tooljet_operator_admission_duration_seconds_bucket",
            "tooljet_operator_notifications_total{event=\"FreezeEnded\",result=\"delivered\"} 0",
        ] {
            assert!(text.contains(family), "{family} missing from:\n{text}");
        }
    }

    #[test]
    fn only_our_groups_kinds_are_named() {
        assert_eq!(
            AdmissionKind::of("tooljet.io", "AppVersion"),
            AdmissionKind::AppVersion
        );
        assert_eq!(
            AdmissionKind::of("tooljet.io", "ToolJetApp"),
            AdmissionKind::ToolJetApp
        );
        assert_eq!(
            AdmissionKind::of("tooljet.io", "EnvironmentConfig"),
            AdmissionKind::EnvironmentConfig
        );
        for (group, kind) in [
            ("", "Pod"),
            ("apps", "AppVersion"),
            ("tooljet.io", "appversion"),
            ("tooljet.io", "Canary-7f3a"),
            ("tooljet.io", ""),
        ] {
            assert_eq!(
                AdmissionKind::of(group, kind),
                AdmissionKind::Other,
                "{group}/{kind}"
            );
        }
    }

    #[test]
    fn every_operation_has_its_label() {
        for (operation, label) in [
            (Operation::Create, "CREATE"),
            (Operation::Update, "UPDATE"),
            (Operation::Delete, "DELETE"),
            (Operation::Connect, "CONNECT"),
        ] {
            assert_eq!(AdmissionOperation::from(&operation).as_str(), label);
        }
    }

    #[test]
    fn admission_label_values_are_the_closed_sets() {
        assert_eq!(
            Webhook::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>(),
            ["validate", "mutate"]
        );
        assert_eq!(
            AdmissionKind::ALL
                .iter()
                .map(|v| v.as_str())
                .collect::<Vec<_>>(),
            ["AppVersion", "ToolJetApp", "EnvironmentConfig", "other"]
        );
        assert_eq!(
            AdmissionOperation::ALL
                .iter()
                .map(|v| v.as_str())
                .collect::<Vec<_>>(),
            ["CREATE", "UPDATE", "DELETE", "CONNECT", "other"]
        );
        assert_eq!(
            AdmissionResult::ALL
                .iter()
                .map(|v| v.as_str())
                .collect::<Vec<_>>(),
            ["allowed", "denied", "invalid", "timeout"]
        );
    }

    #[test]
    fn admission_labels_render_as_their_text() {
        let m = Metrics::default();
        m.admission_requests
            .get_or_create(&AdmissionLabels {
                webhook: Webhook::Mutate,
                kind: AdmissionKind::EnvironmentConfig,
                operation: AdmissionOperation::Connect,
                result: AdmissionResult::Allowed,
            })
            .inc();
        let text = m.render();
        assert!(
            text.contains(
                "tooljet_operator_admission_requests_total{webhook=\"mutate\",kind=\"EnvironmentConfig\",operation=\"CONNECT\",result=\"allowed\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "tooljet_operator_admission_requests_total{webhook=\"validate\",kind=\"other\",operation=\"other\",result=\"invalid\"} 0"
            ),
            "{text}"
        );
    }

    /// The series of the delivery families in `text`, each as its name and its labels (`le`
    /// left out).
    fn delivery_series(text: &str) -> Vec<(String, Vec<(String, String)>)> {
        const FAMILIES: [&str; 6] = [
            "tooljet_operator_lead_time_seconds",
            "tooljet_operator_stage_time_seconds",
            "tooljet_operator_deliveries_total",
            "tooljet_operator_verifications_total",
            "tooljet_operator_automatic_rollbacks_total",
            "tooljet_operator_time_to_restore_seconds",
        ];
        text.lines()
            .filter(|line| FAMILIES.iter().any(|f| line.starts_with(f)))
            .map(|line| {
                let (name, rest) = line.split_once('{').expect("labelled series");
                let (labels, _) = rest.split_once('}').expect("closed label set");
                let labels = labels
                    .split(',')
                    .map(|pair| {
                        let (key, value) = pair.split_once('=').expect("key=value");
                        (key.to_string(), value.trim_matches('"').to_string())
                    })
                    .filter(|(key, _)| key != "le")
                    .collect();
                (name.to_string(), labels)
            })
            .collect()
    }

    #[test]
    fn renders_every_delivery_family_with_its_labels() {
        let m = Metrics::default();
        m.lead_time("acme", "crm", 7200.0);
        m.stage_time("acme", "crm", "staging", 600.0);
        m.delivered("acme", "crm", DeliveryKind::Release);
        m.delivered("acme", "crm", DeliveryKind::Rollback);
        m.delivered("acme", "crm", DeliveryKind::AutomaticRollback);
        m.verified("acme", "crm", "production", true);
        m.verified("acme", "crm", "production", false);
        m.automatic_rollback("acme", "crm");
        m.restored("acme", "crm", 90.0);
        let text = m.render();
        for series in [
            "tooljet_operator_lead_time_seconds_count{namespace=\"acme\",app=\"crm\"} 1",
            "tooljet_operator_lead_time_seconds_bucket{le=\"14400.0\",namespace=\"acme\",app=\"crm\"} 1",
            "tooljet_operator_stage_time_seconds_count{namespace=\"acme\",app=\"crm\",environment=\"staging\"} 1",
            "tooljet_operator_deliveries_total{namespace=\"acme\",app=\"crm\",kind=\"release\"} 1",
            "tooljet_operator_deliveries_total{namespace=\"acme\",app=\"crm\",kind=\"rollback\"} 1",
            "tooljet_operator_deliveries_total{namespace=\"acme\",app=\"crm\",kind=\"automatic_rollback\"} 1",
            "tooljet_operator_verifications_total{namespace=\"acme\",app=\"crm\",environment=\"production\",result=\"verified\"} 1",
            "tooljet_operator_verifications_total{namespace=\"acme\",app=\"crm\",environment=\"production\",result=\"failed\"} 1",
            "tooljet_operator_automatic_rollbacks_total{namespace=\"acme\",app=\"crm\"} 1",
            "tooljet_operator_time_to_restore_seconds_count{namespace=\"acme\",app=\"crm\"} 1",
            "tooljet_operator_time_to_restore_seconds_bucket{le=\"60.0\",namespace=\"acme\",app=\"crm\"} 0",
            "tooljet_operator_time_to_restore_seconds_bucket{le=\"120.0\",namespace=\"acme\",app=\"crm\"} 1",
        ] {
            assert!(text.contains(series), "{series} missing from:\n{text}");
        }
        // The releases counter is untouched by the delivery metrics.
        assert!(text.contains("tooljet_operator_releases_total 0"), "{text}");
    }

    #[test]
    fn delivery_labels_take_only_the_values_given() {
        let m = Metrics::default();
        m.lead_time("acme", "crm", 60.0);
        m.stage_time("acme", "crm", "development", 1.0);
        m.stage_time("beta", "hr", "staging", 1.0);
        m.delivered("beta", "hr", DeliveryKind::Rollback);
        m.verified("acme", "crm", "production", false);
        m.automatic_rollback("beta", "hr");
        m.restored("acme", "crm", 5.0);
        let series = delivery_series(&m.render());
        assert!(!series.is_empty());
        for (name, labels) in series {
            let keys: Vec<&str> = labels.iter().map(|(k, _)| k.as_str()).collect();
            assert!(
                keys.starts_with(&["namespace", "app"]),
                "{name}: {labels:?}"
            );
            for (key, value) in &labels {
                let allowed: &[&str] = match key.as_str() {
                    "namespace" => &["acme", "beta"],
                    "app" => &["crm", "hr"],
                    "environment" => &["development", "staging", "production"],
                    "kind" => &["rollback"],
                    "result" => &["failed"],
                    _ => &[],
                };
                assert!(allowed.contains(&value.as_str()), "{name}: {key}={value}");
            }
        }
    }

    #[test]
    fn apps_past_the_limit_share_the_other_label() {
        let m = Metrics::default();
        for i in 0..MAX_APP_SERIES {
            m.delivered("acme", &format!("app-{i}"), DeliveryKind::Release);
        }
        // The 1001st pair, by app or by namespace, is not named; the pairs already named still are.
        m.delivered("acme", "app-late", DeliveryKind::Release);
        m.verified("beta", "app-0", "production", false);
        m.automatic_rollback("acme", "app-0");
        let text = m.render();
        assert!(!text.contains("app-late"), "{text}");
        assert!(
            text.contains(
                "tooljet_operator_deliveries_total{namespace=\"acme\",app=\"_other\",kind=\"release\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "tooljet_operator_verifications_total{namespace=\"beta\",app=\"_other\",environment=\"production\",result=\"failed\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "tooljet_operator_automatic_rollbacks_total{namespace=\"acme\",app=\"app-0\"} 1"
            ),
            "{text}"
        );
        let apps: HashSet<String> = delivery_series(&text)
            .into_iter()
            .flat_map(|(_, labels)| labels)
            .filter(|(key, _)| key == "app")
            .map(|(_, value)| value)
            .collect();
        assert_eq!(apps.len(), MAX_APP_SERIES + 1);
        assert!(apps.contains(OTHER_APP));
    }

    #[test]
    fn delivery_label_values_are_the_closed_sets() {
        assert_eq!(
            DeliveryKind::ALL
                .iter()
                .map(|v| v.as_str())
                .collect::<Vec<_>>(),
            ["release", "rollback", "automatic_rollback"]
        );
        assert_eq!(
            VerificationResult::ALL
                .iter()
                .map(|v| v.as_str())
                .collect::<Vec<_>>(),
            ["verified", "failed"]
        );
    }
}
