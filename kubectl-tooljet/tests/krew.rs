//! The krew manifest stays in step with the crate: same version, the binary it builds.

#[test]
fn the_krew_manifest_names_this_version_and_binary() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tooljet.yaml")).unwrap();
    let rendered = testenv::image::render_krew_manifest(
        &text,
        "https://releases.invalid/kubectl-tooljet-linux-amd64.tar.gz",
        &"ab".repeat(32),
    )
    .unwrap();
    let manifest: serde_yaml::Value = serde_yaml::from_str(&rendered).unwrap();
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
        assert_eq!(p["sha256"].as_str().unwrap(), "ab".repeat(32));
        assert!(p["uri"].as_str().unwrap().ends_with(".tar.gz"));
        assert!(
            p["files"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|f| f["from"] == "kubectl-tooljet")
        );
    }
}

#[test]
fn the_template_is_refused_without_its_placeholders() {
    assert!(testenv::image::render_krew_manifest("uri: x", "u", &"ab".repeat(32)).is_err());
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tooljet.yaml")).unwrap();
    assert!(testenv::image::render_krew_manifest(&text, "u", "not-a-digest").is_err());
}
