//! The committed CRD YAML under crds/ is exactly what the Rust types generate.

use std::path::Path;

use tooljet_operator::api;

#[test]
fn committed_crds_match_the_rust_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let mut expected_files = vec![];
    for crd in api::crds() {
        let file = api::crd_file_name(&crd);
        let path = dir.join(&file);
        let committed = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; run `cargo xtask crdgen`", path.display()));
        assert!(
            committed == api::crd_yaml(&crd),
            "{} is out of date with src/api/; run `cargo xtask crdgen` and commit the result",
            path.display()
        );
        expected_files.push(file);
    }
    let mut present: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    present.sort();
    expected_files.sort();
    assert_eq!(
        present, expected_files,
        "crds/ holds files the types do not generate"
    );
}

#[test]
fn every_schema_property_has_a_description() {
    fn walk(path: &str, schema: &serde_json::Value, missing: &mut Vec<String>) {
        if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
            for (name, sub) in props {
                let p = format!("{path}.{name}");
                // metadata, apiVersion and kind are described by Kubernetes itself.
                let standard = matches!(p.as_str(), ".metadata" | ".apiVersion" | ".kind");
                if !standard && sub.get("description").is_none() {
                    missing.push(p.clone());
                }
                walk(&p, sub, missing);
            }
        }
        for key in ["items", "additionalProperties"] {
            if let Some(sub) = schema.get(key).filter(|s| s.is_object()) {
                walk(&format!("{path}[]"), sub, missing);
            }
        }
    }
    for crd in api::crds() {
        let value = serde_json::to_value(&crd).unwrap();
        let schema = &value["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let mut missing = vec![];
        walk("", schema, &mut missing);
        assert!(
            missing.is_empty(),
            "{}: fields without a description: {missing:?}",
            crd.metadata.name.unwrap()
        );
    }
}

#[test]
fn the_chart_ships_the_same_crds_and_generated_policy() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for crd in api::crds() {
        let file = api::crd_file_name(&crd);
        let chart = std::fs::read_to_string(root.join("charts/tooljet-operator/crds").join(&file))
            .unwrap_or_default();
        assert!(
            chart == api::crd_yaml(&crd),
            "charts/tooljet-operator/crds/{file} is out of date; run `cargo xtask crdgen`"
        );
    }
    let policy = std::fs::read_to_string(root.join("charts/tooljet-operator/files/policy.yaml"))
        .unwrap_or_default();
    assert!(
        policy == tooljet_operator::webhook::config::policy_yaml(),
        "charts/tooljet-operator/files/policy.yaml is out of date; run `cargo xtask crdgen`"
    );
}
