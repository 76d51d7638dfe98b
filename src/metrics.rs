//! Prometheus metrics. Labels carry kinds, reasons and results, never object contents.
//!
//! Every label value of the admission metrics comes from a closed set (the enums below): the
//! webhook port answers whoever reaches it, and a label copied from a request would let any caller
//! create series without bound.

use std::{fmt::Write as _, time::Duration};

use kube::core::admission::Operation;
use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder, text::encode},
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::{Metric, Registry},
};

use crate::api::GROUP;

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
    /// never decided.
    AdmissionResult {
        Allowed => "allowed",
        Denied => "denied",
        Invalid => "invalid",
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
    pub admission_requests: Family<AdmissionLabels, Counter>,
    pub admission_duration: Family<WebhookLabels, Histogram>,
    pub access_reviews: Family<AccessLabels, Counter>,
}

impl Default for Metrics {
    /// Every family registered, and the series of the closed label sets started at zero.
    fn default() -> Self {
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
            registry,
        };
        metrics.start_access_series();
        metrics.start_admission_series();
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

/// Registers `metric` as `name` with `help`, and returns it (a handle on the registered one).
fn register<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

impl Metrics {
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
                    for result in [AdmissionResult::Allowed, AdmissionResult::Denied] {
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
            ["allowed", "denied", "invalid"]
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
}
