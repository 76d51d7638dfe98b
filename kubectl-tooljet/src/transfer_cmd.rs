//! `import FILE.json` and `export VERSION`: the cluster side of [`crate::transfer`].

use std::time::Duration;
use tooljet_operator::lifecycle::Pipeline;

use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};

use crate::{
    cluster::Cluster,
    error::{Error, Result},
    lifecycle::MANAGER,
    output::Format,
    transfer::{self, ImportOptions, Imported},
};

/// How long to wait for the webhook to see a just-applied app before applying its version.
const APP_VISIBLE: Duration = Duration::from_secs(20);

pub fn read_export(file: &str) -> Result<Value> {
    let text = if file == "-" {
        std::io::read_to_string(std::io::stdin())
            .map_err(|e| Error::Usage(format!("reading stdin: {e}")))?
    } else {
        std::fs::read_to_string(file).map_err(|e| Error::Usage(format!("reading {file}: {e}")))?
    };
    serde_json::from_str(&text).map_err(|e| Error::Usage(format!("{file} is not JSON: {e}")))
}

/// The objects in apply order: the app, its stage configurations, then the version.
fn documents(imported: &Imported, namespace: Option<&str>) -> Result<Vec<Value>> {
    let mut docs = vec![to_value(&imported.app)?];
    for c in &imported.configs {
        docs.push(to_value(c)?);
    }
    docs.push(to_value(&imported.version)?);
    if let Some(ns) = namespace {
        for d in &mut docs {
            d["metadata"]["namespace"] = json!(ns);
        }
    }
    Ok(docs)
}

fn to_value<T: Serialize>(obj: &T) -> Result<Value> {
    serde_json::to_value(obj).map_err(|e| Error::Api(format!("encoding: {e}")))
}

/// What to tell the user: the Secrets to create (names and keys only) and the notes.
fn instructions(imported: &Imported, namespace: &str) -> String {
    let mut out = String::new();
    for note in &imported.notes {
        out += &format!("note: {note}\n");
    }
    if !imported.secrets.is_empty() {
        out += "The EnvironmentConfigs read ToolJet's encrypted options from Secrets; create them with the values \
                from your ToolJet workspace (the export does not contain them):\n";
        for (secret, keys) in &imported.secrets {
            let literals: Vec<String> = keys
                .iter()
                .map(|k| format!("--from-literal={k}=..."))
                .collect();
            out += &format!(
                "  kubectl -n {namespace} create secret generic {secret} {}\n",
                literals.join(" ")
            );
        }
    }
    out
}

pub async fn import(
    connection: &crate::cluster::ConnectionArgs,
    file: &str,
    opts: ImportOptions,
    apply: bool,
    format: Format,
) -> Result<()> {
    let export = read_export(file)?;
    let imported =
        transfer::import(&export, &opts).map_err(|e| Error::Usage(format!("{file}: {e}")))?;
    if !apply {
        let docs = documents(&imported, connection.namespace.as_deref())?;
        match format {
            Format::Json => {
                let list = json!({ "apiVersion": "v1", "kind": "List", "items": docs });
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).map_err(|e| Error::Api(e.to_string()))?
                );
            }
            Format::Yaml | Format::Table => {
                for d in &docs {
                    print!(
                        "---\n{}",
                        serde_yaml::to_string(d).map_err(|e| Error::Api(e.to_string()))?
                    );
                }
            }
        }
        let ns = connection.namespace.as_deref().unwrap_or("<namespace>");
        eprint!("{}", instructions(&imported, ns));
        return Ok(());
    }
    let cluster = Cluster::connect(connection).await?;
    let pp = PatchParams::apply(MANAGER);
    let mut applied = Vec::new();
    applied.push(apply_one(&cluster.apps(), &imported.app, &pp).await?);
    for c in &imported.configs {
        applied.push(apply_one(&cluster.configs(), c, &pp).await?);
    }
    // The webhook judges a version against the app in its cache: give it a moment to see it.
    let deadline = tokio::time::Instant::now() + APP_VISIBLE;
    loop {
        match apply_one(&cluster.versions(), &imported.version, &pp).await {
            Ok(line) => {
                applied.push(line);
                break;
            }
            Err(Error::Denied(m))
                if m.contains("does not exist") && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e),
        }
    }
    match format {
        Format::Json | Format::Yaml => {
            let report = json!({ "namespace": cluster.namespace, "applied": applied,
                                 "secretsToCreate": imported.secrets, "notes": imported.notes });
            crate::output::print(format, &report, |_| String::new())?;
        }
        Format::Table => applied
            .iter()
            .for_each(|l| println!("{l} applied (server-side)")),
    }
    eprint!("{}", instructions(&imported, &cluster.namespace));
    Ok(())
}

async fn apply_one<K>(api: &Api<K>, obj: &K, pp: &PatchParams) -> Result<String>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let name = obj.name_any();
    let kind = K::kind(&());
    api.patch(&name, pp, &Patch::Apply(obj))
        .await
        .map_err(|e| Error::kube(format!("applying {kind} {name}"), e))?;
    Ok(format!("{}/{name}", kind.to_lowercase()))
}

pub async fn export(cluster: &Cluster, version: &str, environment: Option<String>) -> Result<()> {
    let v = cluster.version_whole(version).await?;
    let app = match cluster.apps().get_opt(&v.spec.app).await {
        Ok(a) => a,
        Err(e) => return Err(Error::kube(format!("reading ToolJetApp {}", v.spec.app), e)),
    };
    let stage = environment.unwrap_or_else(|| v.spec.environment.clone());
    if let Some(app) = &app
        && !Pipeline::of(app).contains(&stage)
    {
        return Err(Error::Usage(format!(
            "{stage} is not a stage of app {}'s pipeline {:?}",
            app.name_any(),
            app.spec.environments
        )));
    }
    // Every stage's configuration of the app and the workspace: each environment of the export
    // gets its own stage's options.
    let configs: Vec<_> = cluster
        .list_configs(&cluster.namespace)
        .await?
        .into_iter()
        .filter(|c| c.spec.app.is_none() || c.spec.app.as_deref() == Some(v.spec.app.as_str()))
        .collect();
    let out = transfer::export(&v, app.as_ref(), &stage, &configs).map_err(Error::Usage)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&out).map_err(|e| Error::Api(e.to_string()))?
    );
    Ok(())
}
