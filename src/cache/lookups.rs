//! The lookups the controllers and the admission webhook make of the caches, by index.

use std::sync::Arc;

#[cfg(test)]
use kube::{
    Resource,
    runtime::{reflector, watcher},
};
use kube::{ResourceExt, runtime::reflector::Store};

#[cfg(test)]
use super::watch::watch_nothing;
use super::{config::CachedConfig, index::Index, secret::ManagedSecret, watch::Hub};
use crate::{
    api::{AppVersion, Approval, Notification, PromotionPolicy, ToolJetApp},
    lifecycle::names::app_label_value,
};

/// The hub of every kind's cache: each controller subscribes to the changes it reacts to
/// (`controller::*::controller`), then the operator runs them.
pub struct Hubs {
    pub managed: Hub<ManagedSecret>,
    pub configs: Hub<CachedConfig>,
    pub versions: Hub<AppVersion>,
    pub apps: Hub<ToolJetApp>,
    pub policies: Hub<PromotionPolicy>,
    pub approvals: Hub<Approval>,
    pub notifications: Hub<Notification>,
}

/// (namespace, app or none for workspace-wide, stage): what makes two EnvironmentConfigs rivals.
type ScopeKey = (String, Option<String>, String);

/// The lookups the controllers and the admission webhook make, by index rather than by scanning
/// a whole cache: configurations by key and by stage, versions by app and by stage, apps that
/// roll workloads out.
#[derive(Clone)]
pub struct Lookups {
    pub configs: Store<CachedConfig>,
    pub versions: Store<AppVersion>,
    pub apps: Store<ToolJetApp>,
    pub policies: Store<PromotionPolicy>,
    pub approvals: Store<Approval>,
    configs_by_key: Arc<Index<CachedConfig, ScopeKey>>,
    configs_by_stage: Arc<Index<CachedConfig, (String, String)>>,
    versions_by_app: Arc<Index<AppVersion, (String, String)>>,
    versions_by_stage: Arc<Index<AppVersion, (String, String)>>,
    versions_by_app_stage: Arc<Index<AppVersion, (String, String, String)>>,
    apps_with_rollout: Arc<Index<ToolJetApp, String>>,
    policies_by_namespace: Arc<Index<PromotionPolicy, String>>,
    approvals_by_version: Arc<Index<Approval, (String, String)>>,
}

impl Lookups {
    /// The lookups over these caches; their hubs keep the indexes in step.
    pub fn new(
        (configs, config_hub): (&Store<CachedConfig>, &mut Hub<CachedConfig>),
        (versions, version_hub): (&Store<AppVersion>, &mut Hub<AppVersion>),
        (apps, app_hub): (&Store<ToolJetApp>, &mut Hub<ToolJetApp>),
        (policies, policy_hub): (&Store<PromotionPolicy>, &mut Hub<PromotionPolicy>),
        (approvals, approval_hub): (&Store<Approval>, &mut Hub<Approval>),
    ) -> Lookups {
        let configs_by_key = Index::new(|c: &CachedConfig| {
            vec![(
                c.namespace().unwrap_or_default(),
                c.spec.app.clone(),
                c.spec.environment.clone(),
            )]
        });
        let configs_by_stage = Index::new(|c: &CachedConfig| {
            vec![(
                c.namespace().unwrap_or_default(),
                c.spec.environment.clone(),
            )]
        });
        let versions_by_app = Index::new(|v: &AppVersion| {
            vec![(v.namespace().unwrap_or_default(), v.spec.app.clone())]
        });
        let versions_by_stage = Index::new(|v: &AppVersion| {
            vec![(
                v.namespace().unwrap_or_default(),
                v.spec.environment.clone(),
            )]
        });
        let versions_by_app_stage = Index::new(|v: &AppVersion| {
            vec![(
                v.namespace().unwrap_or_default(),
                app_label_value(&v.spec.app),
                v.spec.environment.clone(),
            )]
        });
        let apps_with_rollout = Index::new(|a: &ToolJetApp| {
            if a.spec.rollout.is_empty() {
                vec![]
            } else {
                vec![a.namespace().unwrap_or_default()]
            }
        });
        let policies_by_namespace =
            Index::new(|p: &PromotionPolicy| vec![p.namespace().unwrap_or_default()]);
        let approvals_by_version = Index::new(|a: &Approval| {
            vec![(a.namespace().unwrap_or_default(), a.spec.version.clone())]
        });
        policy_hub.index(policies_by_namespace.clone());
        approval_hub.index(approvals_by_version.clone());
        config_hub.index(configs_by_key.clone());
        config_hub.index(configs_by_stage.clone());
        version_hub.index(versions_by_app.clone());
        version_hub.index(versions_by_stage.clone());
        version_hub.index(versions_by_app_stage.clone());
        app_hub.index(apps_with_rollout.clone());
        Lookups {
            configs: configs.clone(),
            versions: versions.clone(),
            apps: apps.clone(),
            policies: policies.clone(),
            approvals: approvals.clone(),
            configs_by_key,
            configs_by_stage,
            versions_by_app,
            versions_by_stage,
            versions_by_app_stage,
            apps_with_rollout,
            policies_by_namespace,
            approvals_by_version,
        }
    }

    /// Lookups over fixed objects (unit tests of mappers and reconcile helpers).
    #[cfg(test)]
    pub fn of(configs: &[CachedConfig], versions: &[AppVersion], apps: &[ToolJetApp]) -> Lookups {
        fn cache<K>(objects: &[K]) -> (Store<K>, Vec<Arc<K>>)
        where
            K: Resource<DynamicType = ()> + Clone + 'static,
        {
            let (reader, mut writer) = reflector::store();
            for o in objects {
                writer.apply_watcher_event(&watcher::Event::Apply(o.clone()));
            }
            let all = reader.state();
            (reader, all)
        }
        let (configs, all_configs) = cache(configs);
        let (versions, all_versions) = cache(versions);
        let (apps, all_apps) = cache(apps);
        let (_, mut config_hub) = watch_nothing::<CachedConfig>();
        let (_, mut version_hub) = watch_nothing::<AppVersion>();
        let (_, mut app_hub) = watch_nothing::<ToolJetApp>();
        let (policies, mut policy_hub) = watch_nothing::<PromotionPolicy>();
        let (approvals, mut approval_hub) = watch_nothing::<Approval>();
        let lookups = Lookups::new(
            (&configs, &mut config_hub),
            (&versions, &mut version_hub),
            (&apps, &mut app_hub),
            (&policies, &mut policy_hub),
            (&approvals, &mut approval_hub),
        );
        for index in &config_hub.indexes {
            index.rebuild(&all_configs);
        }
        for index in &version_hub.indexes {
            index.rebuild(&all_versions);
        }
        for index in &app_hub.indexes {
            index.rebuild(&all_apps);
        }
        lookups
    }

    /// The live configs of (namespace, app or workspace, stage): one, or rivals.
    pub fn configs_for(&self, ns: &str, app: Option<&str>, stage: &str) -> Vec<Arc<CachedConfig>> {
        let key = (ns.to_string(), app.map(str::to_string), stage.to_string());
        self.configs_by_key
            .objects(&self.configs, ns, &key)
            .into_iter()
            .filter(|c| c.metadata.deletion_timestamp.is_none())
            .collect()
    }

    /// Every config of a stage in a namespace (workspace-wide and every app's).
    pub fn configs_in(&self, ns: &str, stage: &str) -> Vec<Arc<CachedConfig>> {
        let key = (ns.to_string(), stage.to_string());
        self.configs_by_stage.objects(&self.configs, ns, &key)
    }

    /// The versions of an app.
    pub fn versions_of(&self, ns: &str, app: &str) -> Vec<Arc<AppVersion>> {
        let key = (ns.to_string(), app.to_string());
        self.versions_by_app.objects(&self.versions, ns, &key)
    }

    /// The versions in a stage (of every app of the namespace).
    pub fn versions_in(&self, ns: &str, stage: &str) -> Vec<Arc<AppVersion>> {
        let key = (ns.to_string(), stage.to_string());
        self.versions_by_stage.objects(&self.versions, ns, &key)
    }

    /// The versions of the app whose `tooljet.io/app` label value is `app_label` (see
    /// [`app_label_value`]) in a stage: what an app-scoped stage Secret's change matters to.
    pub fn versions_of_app_in(
        &self,
        ns: &str,
        app_label: &str,
        stage: &str,
    ) -> Vec<Arc<AppVersion>> {
        let key = (ns.to_string(), app_label.to_string(), stage.to_string());
        self.versions_by_app_stage.objects(&self.versions, ns, &key)
    }

    /// The PromotionPolicies of a namespace.
    pub fn policies_in(&self, ns: &str) -> Vec<Arc<PromotionPolicy>> {
        self.policies_by_namespace
            .objects(&self.policies, ns, &ns.to_string())
    }

    /// The Approvals naming a version (by metadata.name; callers check the owner UID).
    pub fn approvals_of(&self, ns: &str, version: &str) -> Vec<Arc<Approval>> {
        let key = (ns.to_string(), version.to_string());
        self.approvals_by_version.objects(&self.approvals, ns, &key)
    }

    /// The apps of a namespace with a rollout.
    pub fn apps_with_rollout(&self, ns: &str) -> Vec<Arc<ToolJetApp>> {
        self.apps_with_rollout
            .objects(&self.apps, ns, &ns.to_string())
    }
}
