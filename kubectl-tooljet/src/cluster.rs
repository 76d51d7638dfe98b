//! The connection: a client for the chosen kubeconfig and context, the namespace to work in, and
//! typed access to the tooljet.io kinds.

use kube::{
    Api, Client, Config,
    api::{ApiResource, DynamicObject, GroupVersionKind, ListParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use tooljet_operator::{
    api::{AppVersion, EnvironmentConfig, PromotionPolicy, ToolJetApp},
    cache::Lean,
};

use crate::error::{Error, Result};

/// The standard kubectl connection flags.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ConnectionArgs {
    /// The namespace (a ToolJet workspace); default: the context's namespace.
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// Every namespace (status, history of apps, diff are per namespace otherwise).
    #[arg(short = 'A', long, global = true)]
    pub all_namespaces: bool,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true, env = "KUBECONFIG", hide_env_values = true)]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Act as this user (impersonation, as kubectl --as).
    #[arg(long = "as", global = true, value_name = "USER")]
    pub as_user: Option<String>,
    /// Act in this group (repeatable, as kubectl --as-group).
    #[arg(long = "as-group", global = true, value_name = "GROUP")]
    pub as_groups: Vec<String>,
}

/// A connected client and the namespace scope.
#[derive(Clone)]
pub struct Cluster {
    pub client: Client,
    /// The namespace commands work in (the context's, or `default`).
    pub namespace: String,
    pub all_namespaces: bool,
}

/// The kubeconfig's configuration for the chosen context (`--kubeconfig`, `KUBECONFIG`, then
/// `~/.kube/config`).
pub async fn load_config(args: &ConnectionArgs) -> Result<Config> {
    {
        let options = KubeConfigOptions {
            context: args.context.clone(),
            ..Default::default()
        };
        match &args.kubeconfig {
            Some(path) => {
                // KUBECONFIG may list several files separated by ':'; the first readable wins
                // here, as a plain path.
                let first = path
                    .to_str()
                    .and_then(|p| p.split(':').find(|p| !p.is_empty()))
                    .map(std::path::PathBuf::from)
                    .unwrap_or_else(|| path.clone());
                let kubeconfig = Kubeconfig::read_from(&first).map_err(|e| {
                    Error::Api(format!("reading kubeconfig {}: {e}", first.display()))
                })?;
                Config::from_custom_kubeconfig(kubeconfig, &options).await
            }
            None => Config::from_kubeconfig(&options).await,
        }
        .map_err(|e| {
            Error::Api(format!(
                "loading the kubeconfig: {e}; pass --kubeconfig or set KUBECONFIG"
            ))
        })
    }
}

impl Cluster {
    pub async fn connect(args: &ConnectionArgs) -> Result<Cluster> {
        let mut config = load_config(args).await?;
        if let Some(user) = &args.as_user {
            config.auth_info.impersonate = Some(user.clone());
        }
        if !args.as_groups.is_empty() {
            config.auth_info.impersonate_groups = Some(args.as_groups.clone());
        }
        let namespace = args
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = Client::try_from(config)
            .map_err(|e| Error::Api(format!("building the API client: {e}")))?;
        Ok(Cluster {
            client,
            namespace,
            all_namespaces: args.all_namespaces,
        })
    }

    pub fn apps(&self) -> Api<ToolJetApp> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    pub fn versions(&self) -> Api<AppVersion> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Versions read without their definitions (what a read or a patch answers is parsed
    /// without `spec.definition`).
    pub fn versions_lean(&self) -> Api<Lean<AppVersion>> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    pub fn configs(&self) -> Api<EnvironmentConfig> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Apps in scope: the namespace's, or every namespace's with `-A`.
    pub async fn list_apps(&self) -> Result<Vec<ToolJetApp>> {
        let api: Api<ToolJetApp> = if self.all_namespaces {
            Api::all(self.client.clone())
        } else {
            self.apps()
        };
        list(&api, "ToolJetApps").await
    }

    /// The namespace's versions without their definitions (`spec.definition` is `None`): the
    /// parser skips them, and they are listed in small pages, so a namespace of large apps is
    /// never held at once. Only `export` reads a definition ([`Cluster::version_whole`]).
    pub async fn list_versions(&self, namespace: &str) -> Result<Vec<AppVersion>> {
        let api: Api<Lean<AppVersion>> = Api::namespaced(self.client.clone(), namespace);
        tooljet_operator::cache::lean::list_paged(
            &api,
            &ListParams::default(),
            tooljet_operator::cache::VERSION_PAGE,
        )
        .await
        .map_err(|e| list_error("AppVersions", e))
    }

    pub async fn list_configs(&self, namespace: &str) -> Result<Vec<EnvironmentConfig>> {
        list(
            &Api::namespaced(self.client.clone(), namespace),
            "EnvironmentConfigs",
        )
        .await
    }

    pub async fn app(&self, name: &str) -> Result<ToolJetApp> {
        get(&self.apps(), "ToolJetApp", name, &self.namespace).await
    }

    /// A version without its definition (`spec.definition` is `None`).
    pub async fn version(&self, name: &str) -> Result<AppVersion> {
        get(&self.versions_lean(), "AppVersion", name, &self.namespace)
            .await
            .map(|Lean(v)| v)
    }

    /// A version with its definition (for `export`).
    pub async fn version_whole(&self, name: &str) -> Result<AppVersion> {
        get(&self.versions(), "AppVersion", name, &self.namespace).await
    }

    /// Approvals (`tooljet.io/v1alpha1` Approval), addressed dynamically so the plugin works
    /// before and after the kind is installed.
    pub fn approvals(&self, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), namespace, &approval_resource())
    }

    /// Approvals of the namespace, or `None` when the cluster does not serve the kind yet or
    /// the user may not list them.
    pub async fn list_approvals(&self, namespace: &str) -> Result<Option<Vec<DynamicObject>>> {
        match self.approvals(namespace).list(&ListParams::default()).await {
            Ok(list) => Ok(Some(list.items)),
            // Not served yet, or not readable by this user: the board leaves approvals out
            // rather than failing.
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 403 => Ok(None),
            Err(e) => Err(Error::kube("listing Approvals", e)),
        }
    }
}

impl Cluster {
    /// PromotionPolicies of the namespace (none when the cluster does not serve the kind or the
    /// user may not list them).
    pub async fn list_policies(&self, namespace: &str) -> Result<Vec<PromotionPolicy>> {
        let api: Api<PromotionPolicy> = Api::namespaced(self.client.clone(), namespace);
        match api.list(&ListParams::default()).await {
            Ok(list) => Ok(list.items),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 403 => Ok(vec![]),
            Err(e) => Err(Error::kube("listing PromotionPolicies", e)),
        }
    }
}

/// The Approval kind (added by the promotion-policy work; not a compile-time dependency).
pub fn approval_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(
            tooljet_operator::api::GROUP,
            tooljet_operator::api::VERSION,
            "Approval",
        ),
        "approvals",
    )
}

async fn list<K>(api: &Api<K>, what: &str) -> Result<Vec<K>>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.list(&ListParams::default())
        .await
        .map(|l| l.items)
        .map_err(|e| list_error(what, e))
}

fn list_error(what: &str, e: kube::Error) -> Error {
    match e {
        kube::Error::Api(s) if s.code == 404 => Error::NotFound(format!(
            "the cluster does not serve {what}: the tooljet-operator CRDs are not installed (run `kubectl tooljet doctor`)"
        )),
        e => Error::kube(format!("listing {what}"), e),
    }
}

async fn get<K>(api: &Api<K>, kind: &str, name: &str, namespace: &str) -> Result<K>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.get_opt(name).await {
        Ok(Some(obj)) => Ok(obj),
        Ok(None) => Err(Error::NotFound(format!(
            "{kind} {name} not found in namespace {namespace}; list them with `kubectl get {} -n {namespace}`",
            kind.to_lowercase()
        ))),
        Err(e) => Err(Error::kube(format!("reading {kind} {name}"), e)),
    }
}
