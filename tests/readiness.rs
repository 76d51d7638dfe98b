//! Health endpoints, in a test binary of its own (its control plane starts without the CRDs):
//! /readyz is false until the caches have synced, /healthz answers from the start, /metrics
//! exposes every family, the allocator's figures among them.

mod support;

use std::time::Duration;

use support::admission::{http_get, wait_ok};

#[tokio::test]
async fn readyz_waits_for_the_caches_and_metrics_expose_every_family() {
    let client = support::client().await;
    let health = format!("127.0.0.1:{}", support::free_port());
    let _operator =
        support::Operator::start_with("readiness", &["--no-webhook", "--health-addr", &health]);

    wait_ok(&health, "/healthz", Duration::from_secs(30)).await;
    // Without the CRDs, the caches cannot sync: not ready (for a while, not just once).
    for _ in 0..5 {
        let (code, body) = http_get(&health, "/readyz").await.unwrap();
        assert_eq!((code, body.as_str()), (503, "caches not synced"));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    support::install_crds(&client).await;
    wait_ok(&health, "/readyz", Duration::from_secs(90)).await;

    let (code, metrics) = http_get(&health, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    for family in [
        "tooljet_operator_reconciles_total",
        "tooljet_operator_reconcile_errors_total",
        "tooljet_operator_reconcile_duration_seconds",
        "tooljet_operator_writes_total",
        "tooljet_operator_materializations_total",
        "tooljet_operator_referenced_secret_reads_total",
        "tooljet_operator_promotions_total",
        "tooljet_operator_releases_total",
        "tooljet_operator_admission_requests_total",
        "tooljet_operator_admission_duration_seconds",
        "tooljet_operator_notifications_total",
        "tooljet_operator_heap_allocated_bytes",
        "tooljet_operator_heap_resident_bytes",
    ] {
        assert!(
            metrics.contains(&format!("# TYPE {family}"))
                || metrics.contains(&format!("# TYPE {}", family.trim_end_matches("_total"))),
            "{family} missing:\n{metrics}"
        );
    }
    // The binary's allocator answers: something is live (the caches, the runtime), and the
    // resident pages hold at least that, within the process's RSS.
    let gauge = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} has no value:\n{metrics}"))
    };
    let allocated = gauge("tooljet_operator_heap_allocated_bytes");
    let resident = gauge("tooljet_operator_heap_resident_bytes");
    assert!(allocated > 100_000.0, "{allocated}");
    assert!(resident >= allocated, "{resident} < {allocated}");
}
