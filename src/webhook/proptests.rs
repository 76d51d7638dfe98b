//! Property tests: the AdmissionReview decoder, the mutating stamp and the rules never panic,
//! whatever the input (a fuzz target without a server).

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::{Value, json};

use super::{
    http::decode,
    mutations, reviews,
    server::stamp_with,
    vocabulary::{self, AppFact, Facts, Op, VersionFact},
};
use crate::api::{AppVersion, ToolJetApp};

fn stage() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("development".to_string()),
        Just("staging".to_string()),
        Just("production".to_string()),
        Just("qa".to_string()),
        "[a-z]{0,6}",
        ".{0,8}",
    ]
}

fn annotations() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(
        prop_oneof![
            Just("tooljet.io/promoted-by".to_string()),
            Just("tooljet.io/promoted-from".to_string()),
            Just("tooljet.io/promoted-at".to_string()),
            Just("tooljet.io/released-by".to_string()),
            Just("tooljet.io/released-version".to_string()),
            Just("tooljet.io/deletion-protection".to_string()),
            "[a-z./]{1,12}",
        ],
        ".{0,24}",
        0..4,
    )
}

fn version() -> impl Strategy<Value = AppVersion> {
    (stage(), ".{0,10}", "[a-z]{1,5}", prop::option::of(".{0,10}"), annotations(), any::<bool>()).prop_map(
        |(env, version_name, app, description, annotations, definition)| {
            let mut v: AppVersion = serde_json::from_value(json!({
                "apiVersion": "tooljet.io/v1alpha1", "kind": "AppVersion",
                "metadata": { "name": "v", "namespace": "ns", "annotations": annotations },
                "spec": { "app": app, "versionName": version_name, "environment": env,
                          "definition": if definition { json!({ "a": [1, "{{constants.X}}"] }) } else { Value::Null } },
            }))
            .unwrap();
            v.spec.description = description;
            v
        },
    )
}

fn app() -> impl Strategy<Value = ToolJetApp> {
    (
        prop::collection::vec(stage(), 0..5),
        prop::option::of("[a-z]{1,4}"),
        annotations(),
    )
        .prop_map(|(envs, release, annotations)| {
            let mut a: ToolJetApp = serde_json::from_value(json!({
                "apiVersion": "tooljet.io/v1alpha1", "kind": "ToolJetApp",
                "metadata": { "name": "crm", "namespace": "ns", "annotations": annotations },
                "spec": { "environments": envs },
            }))
            .unwrap();
            a.spec.release = release.map(|version| crate::api::Release { version });
            a
        })
}

fn facts() -> impl Strategy<Value = Facts> {
    (
        prop::option::of((
            prop::collection::vec(stage(), 0..5),
            prop::collection::vec((stage(), ".{0,6}"), 0..4),
        )),
        any::<bool>(),
        prop::option::of(any::<bool>()),
        prop::option::of(any::<bool>()),
        prop::collection::vec(".{0,10}", 0..3),
    )
        .prop_map(
            |(app, namespace_terminating, promote, unprotect, missing_in_target)| Facts {
                app: app.map(|(environments, versions)| AppFact {
                    name: "crm".into(),
                    environments,
                    versions: versions
                        .into_iter()
                        .enumerate()
                        .map(|(i, (environment, version_name))| VersionFact {
                            name: format!("v{i}"),
                            version_name,
                            environment,
                        })
                        .collect(),
                    failed_stages: Default::default(),
                }),
                namespace_terminating,
                granted: [
                    promote.map(|g| {
                        (
                            vocabulary::Access::environment(vocabulary::PROMOTE, "staging"),
                            g,
                        )
                    }),
                    unprotect.map(|g| (vocabulary::Access::app(vocabulary::UNPROTECT, "crm"), g)),
                ]
                .into_iter()
                .flatten()
                .collect(),
                missing_in_target,
                ..Default::default()
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![Just(Op::Create), Just(Op::Update), Just(Op::Delete)]
}

fn review_body(kind: &'static str, operation: &'static str, object: Value, old: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "u", "kind": { "group": "tooljet.io", "version": "v1alpha1", "kind": kind },
            "resource": { "group": "tooljet.io", "version": "v1alpha1", "resource": "x" },
            "name": "v", "namespace": "ns", "operation": operation,
            "userInfo": { "username": "alice" }, "object": object, "oldObject": old,
        },
    }))
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_decoder_never_panics_on_bytes(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&body);
    }

    #[test]
    fn the_decoder_and_stamp_never_panic_on_reviews(
        kind in prop_oneof![Just("AppVersion"), Just("ToolJetApp"), Just("Approval"), Just("PromotionPolicy"), Just("Other")],
        operation in prop_oneof![Just("CREATE"), Just("UPDATE"), Just("DELETE"), Just("CONNECT"), Just("BOGUS")],
        object in prop_oneof![Just(Value::Null), Just(json!({})), version().prop_map(|v| serde_json::to_value(v).unwrap()), app().prop_map(|a| serde_json::to_value(a).unwrap()), Just(json!({ "spec": 7 }))],
        old in prop_oneof![Just(Value::Null), version().prop_map(|v| serde_json::to_value(v).unwrap()), app().prop_map(|a| serde_json::to_value(a).unwrap())],
    ) {
        if let Ok(mut req) = decode(&review_body(kind, operation, object, old)) {
            let _ = stamp_with(&mut req, Ok(None));
        }
    }

    #[test]
    fn version_rules_never_panic(op in op(), old in prop::option::of(version()), new in prop::option::of(version()), facts in facts(), user in ".{0,8}") {
        let (old, new) = (old.as_ref(), new.as_ref());
        let _ = reviews::review_version(op, old, new, &user, &facts);
        if let (Some(old), Some(new)) = (old, new) {
            let _ = mutations::mutation_for_version(old, new, &user, "2026-01-01T00:00:00Z");
        }
    }

    #[test]
    fn app_rules_never_panic(op in op(), old in prop::option::of(app()), new in prop::option::of(app()), facts in facts(), user in ".{0,8}") {
        let (old, new) = (old.as_ref(), new.as_ref());
        let _ = reviews::review_app(op, old, new, &user, &facts);
        if let Some(new) = new {
            let _ = mutations::mutation_for_app(old, new, &user, "2026-01-01T00:00:00Z");
        }
    }
}
