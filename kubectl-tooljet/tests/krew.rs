//! The krew manifest stays in step with the crate: same version, the binary it builds.

#[test]
fn the_krew_manifest_names_this_version_and_binary() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tooljet.yaml")).unwrap();
    let manifest: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(manifest["kind"], "Plugin");
    assert_eq!(
        manifest["metadata"]["name"], "tooljet",
        "installed as `kubectl tooljet`"
    );
    assert_eq!(
        manifest["spec"]["version"].as_str().unwrap(),
        format!("v{}", env!("CARGO_PKG_VERSION"))
    );
    let platforms = manifest["spec"]["platforms"].as_sequence().unwrap();
    assert!(!platforms.is_empty());
    for p in platforms {
        assert_eq!(p["bin"], "kubectl-tooljet");
        assert!(p["selector"]["matchLabels"]["os"].is_string());
        assert_eq!(p["sha256"].as_str().unwrap().len(), 64);
        assert!(
            p["files"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|f| f["from"] == "kubectl-tooljet")
        );
    }
}
