//! Generates the YAML the project ships, from the Rust types:
//! - `crdgen [--out DIR]`: the CRDs (stdout, or one file per CRD in DIR);
//! - `crdgen admission --webhook-url URL`: the webhook configurations (reaching the webhook by
//!   URL, for an operator running outside the cluster), the ValidatingAdmissionPolicy and its
//!   binding, and the user ClusterRoles, as one multi-document YAML on stdout;
//! - `crdgen policy`: the policy, its binding and the user ClusterRoles (what the chart ships as is).

use std::path::PathBuf;

use anyhow::bail;
use tooljet_operator::{api, webhook::config};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => {
            for crd in api::crds() {
                print!("---\n{}", api::crd_yaml(&crd));
            }
        }
        ["--out", dir] => {
            let dir = PathBuf::from(dir);
            std::fs::create_dir_all(&dir)?;
            for crd in api::crds() {
                let path = dir.join(api::crd_file_name(&crd));
                std::fs::write(&path, api::crd_yaml(&crd))?;
                println!("wrote {}", path.display());
            }
        }
        ["policy"] => print!("{}", config::policy_yaml()),
        ["admission", "--webhook-url", url] => {
            let endpoint = config::Endpoint::Url(url.to_string());
            print!("{}", config::policy_yaml());
            print!(
                "{}",
                config::document(
                    &config::validating(&endpoint, None),
                    "admissionregistration.k8s.io/v1",
                    "ValidatingWebhookConfiguration"
                )
            );
            print!(
                "{}",
                config::document(
                    &config::mutating(&endpoint, None),
                    "admissionregistration.k8s.io/v1",
                    "MutatingWebhookConfiguration"
                )
            );
        }
        _ => {
            bail!("usage: crdgen [--out DIR] | crdgen policy | crdgen admission --webhook-url URL")
        }
    }
    Ok(())
}
