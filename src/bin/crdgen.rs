//! Writes the CRD YAML generated from the Rust types: to stdout, or one file per CRD with `--out DIR`.

use std::path::PathBuf;

use tooljet_operator::api;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let out = match (args.next().as_deref(), args.next()) {
        (None, _) => None,
        (Some("--out"), Some(dir)) => Some(PathBuf::from(dir)),
        _ => anyhow::bail!("usage: crdgen [--out DIR]"),
    };
    for crd in api::crds() {
        let yaml = api::crd_yaml(&crd);
        match &out {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                let path = dir.join(api::crd_file_name(&crd));
                std::fs::write(&path, yaml)?;
                println!("wrote {}", path.display());
            }
            None => print!("---\n{yaml}"),
        }
    }
    Ok(())
}
