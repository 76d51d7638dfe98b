//! Prometheus metrics. Labels carry kinds, reasons and results, never object contents.

use std::time::Duration;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionLabels {
    pub webhook: &'static str,
    pub kind: String,
    pub operation: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    pub webhook: &'static str,
}

/// Every metric the operator exports.
pub struct Metrics {
    registry: Registry,
    pub reconciles: Family<ControllerLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Family<ControllerLabels, Histogram>,
    pub writes: Family<WriteLabels, Counter>,
    pub materializations: Counter,
    pub promotions: Counter,
    pub releases: Counter,
    pub admission_requests: Family<AdmissionLabels, Counter>,
    pub admission_duration: Family<WebhookLabels, Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tooljet_operator");
        let reconciles = Family::<ControllerLabels, Counter>::default();
        registry.register("reconciles", "Reconciliations run", reconciles.clone());
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconciliations that failed, by reason",
            reconcile_errors.clone(),
        );
        let reconcile_duration =
            Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
                Histogram::new([
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ])
            });
        registry.register(
            "reconcile_duration_seconds",
            "Time to reconcile one object",
            reconcile_duration.clone(),
        );
        let writes = Family::<WriteLabels, Counter>::default();
        registry.register(
            "writes",
            "Writes to the Kubernetes API, by object",
            writes.clone(),
        );
        let materializations = Counter::default();
        registry.register(
            "materializations",
            "Materialised Secrets written (created, updated or restored)",
            materializations.clone(),
        );
        let promotions = Counter::default();
        registry.register("promotions", "Promotions observed", promotions.clone());
        let releases = Counter::default();
        registry.register(
            "releases",
            "Releases and rollbacks observed",
            releases.clone(),
        );
        let admission_requests = Family::<AdmissionLabels, Counter>::default();
        registry.register(
            "admission_requests",
            "Admission reviews answered, by result",
            admission_requests.clone(),
        );
        let admission_duration = Family::<WebhookLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                0.25, 1.0,
            ])
        });
        registry.register(
            "admission_duration_seconds",
            "Server-side time to decide an admission review",
            admission_duration.clone(),
        );
        // Every series with a known label set starts at zero, so dashboards and alerts see the
        // families before the first event.
        for controller in ["environmentconfig", "appversion", "tooljetapp"] {
            let _ = reconciles.get_or_create(&ControllerLabels { controller });
            let _ = reconcile_duration.get_or_create(&ControllerLabels { controller });
            for reason in ["ApiError", "ClientError"] {
                let _ = reconcile_errors.get_or_create(&ErrorLabels {
                    controller,
                    reason: reason.into(),
                });
            }
            for object in ["secret", "status"] {
                let _ = writes.get_or_create(&WriteLabels { controller, object });
            }
        }
        for webhook in ["validate", "mutate"] {
            let _ = admission_duration.get_or_create(&WebhookLabels { webhook });
            for kind in ["AppVersion", "ToolJetApp"] {
                for operation in ["CREATE", "UPDATE", "DELETE"] {
                    for result in ["allowed", "denied"] {
                        let _ = admission_requests.get_or_create(&AdmissionLabels {
                            webhook,
                            kind: kind.into(),
                            operation: operation.into(),
                            result,
                        });
                    }
                }
            }
        }
        Metrics {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            writes,
            materializations,
            promotions,
            releases,
            admission_requests,
            admission_duration,
        }
    }
}

impl Metrics {
    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
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

    pub fn wrote(&self, controller: &'static str, object: &'static str) {
        self.writes
            .get_or_create(&WriteLabels { controller, object })
            .inc();
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
                webhook: "validate",
                kind: "AppVersion".into(),
                operation: "UPDATE".into(),
                result: "denied",
            })
            .inc();
        m.admission_duration
            .get_or_create(&WebhookLabels {
                webhook: "validate",
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
}
