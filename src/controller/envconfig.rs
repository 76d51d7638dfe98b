//! EnvironmentConfig -> the Secret ToolJet consumes for (namespace, app-or-workspace, environment).
//!
//! Pipeline: fetch (siblings, referenced Secrets, the existing materialised Secret), validate
//! (conflicts, ownership), build (pure [`materialize`](crate::materialize)), apply (only when the
//! content differs), report (status and Events only on change).
//!
//! Ownership is by ownerReference UID only: a Secret of the target name that this config does not
//! control (whatever its labels say) is never adopted, overwritten or deleted; the config reports
//! the clash instead.

use std::sync::Arc;

use futures::{Stream, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, PartialObjectMeta, Preconditions},
    runtime::{
        Controller, WatchStreamExt,
        controller::{self, Action},
        events::EventType,
        reflector::ObjectRef,
        watcher,
    },
};
use tracing::{debug, info, instrument, warn};

use super::{
    AtStep, Context, Error, RECHECK, Settings, Step, apply_status, condition, new_failure, publish,
    secrets::{SecretWrite, Synced, managed_metadata, managed_secret, sync},
    set_condition,
};
use crate::{
    api::{
        EnvironmentConfig, EnvironmentConfigSpec, EnvironmentConfigStatus, INPUTS_ANNOTATION,
        MANAGED_BY_LABEL, MANAGED_BY_VALUE, STAGE_SECRET_KIND, conditions,
    },
    cache::{
        CachedConfig, Lean, Lookups, ManagedSecret,
        config::{Entries, materialised_as_is},
        controlled_by,
        secret::{Inputs, OwnerKind, inputs_annotation},
    },
    cache::{Hubs, triggers},
    materialize::{Materialized, SecretData, Unresolved, materialize, secret_name},
};

/// This controller's name in metrics and logs.
pub const CONTROLLER: &str = "environmentconfig";

/// The controller, wired to its triggers: its own kind (and, through a second watch, the other
/// configs of the same key so a conflict is reported on both), the materialised Secrets it owns
/// (drift), the Secrets its configs reference (rotation), and a Secret that blocks a config's
/// target name (so its deletion, or garbage collection, lets the config materialise at once).
pub fn controller(ctx: &Context, settings: &Settings, hubs: &mut Hubs) -> Controller<CachedConfig> {
    let lookups = &ctx.lookups;
    let (refs, echoes) = (ctx.refs.clone(), ctx.echoes.clone());
    let main = triggers::changes(hubs.configs.subscribe(), triggers::generation);
    let keys = triggers::changes(hubs.configs.subscribe(), key_of);
    let managed = triggers::forgetting(hubs.managed.subscribe(), echoes.clone());
    let referenced = referenced_secrets_watch(ctx);
    let for_managed = lookups.clone();
    let for_referenced = lookups.clone();
    let for_siblings = lookups.clone();
    Controller::for_shared_stream(main, lookups.configs.clone())
        .with_config(controller::Config::default().concurrency(settings.concurrency))
        .reconcile_on(crate::cache::triggers::mapped(
            managed,
            move |secret: Arc<ManagedSecret>| {
                // The event of this controller's own write: it already knows the result.
                if echoes.is_echo(&*secret) {
                    return vec![];
                }
                configs_for_managed_secret(&for_managed, &secret)
            },
        ))
        // Their latest resourceVersions are in `refs` already ([`RefIndex::saw`]).
        .watches_stream(referenced, move |secret: PartialObjectMeta<Secret>| {
            let ns = secret.namespace().unwrap_or_default();
            let name = secret.name_any();
            let mut found: Vec<_> = refs
                .referrers(&ns, &name)
                .into_iter()
                .map(|referrer| ObjectRef::new(&referrer).within(&ns))
                .collect();
            found.extend(configs_targeting(&for_referenced, &ns, &name));
            found
        })
        // A config's key changed, or it came or went: the others of the same key (conflicts).
        .watches_shared_stream(keys, move |cfg: Arc<CachedConfig>| {
            siblings(&for_siblings, &cfg)
                .into_iter()
                .map(|s| ObjectRef::from(&*s))
                .collect::<Vec<_>>()
        })
}

/// The readiness name of the metadata watch of Secrets (not the operator's own): a restarted
/// operator finds unchanged configurations current from their versions without reading them.
pub const REFERENCED_SECRETS: &str = "Secret versions";

/// The Secrets configurations may reference, metadata only (never a value), and not the
/// operator's own: enough to notice a rotation. Their resourceVersions go to `refs` before any
/// reconcile sees the event; the first complete list marks [`REFERENCED_SECRETS`] ready.
fn referenced_secrets_watch(
    ctx: &Context,
) -> impl Stream<Item = Result<PartialObjectMeta<Secret>, watcher::Error>> + Send + 'static {
    let (refs, readiness) = (ctx.refs.clone(), ctx.readiness.clone());
    watcher(
        Api::<PartialObjectMeta<Secret>>::all(ctx.client.clone()),
        ctx.lists
            .of(watcher::Config::default()
                .labels(&format!("{MANAGED_BY_LABEL}!={MANAGED_BY_VALUE}"))),
    )
    .default_backoff()
    .modify(crate::cache::watch::strip)
    .inspect_ok(move |event| {
        refs.saw(event);
        if let watcher::Event::InitDone = event {
            readiness.listed(REFERENCED_SECRETS);
        }
    })
    .touched_objects()
}

/// What makes two configs conflict, and whether this one is going: a change of it wakes the
/// configs of the same key.
fn key_of(cfg: &CachedConfig) -> (Option<String>, Option<String>, String, bool) {
    (
        cfg.namespace(),
        cfg.spec.app.clone(),
        cfg.spec.environment.clone(),
        cfg.metadata.deletion_timestamp.is_some(),
    )
}

/// The configs a managed (labelled) Secret matters to: its controlling EnvironmentConfig (drift);
/// and, when no live config controls it (a foreign Secret carrying the label, or one whose config
/// was deleted and that garbage collection is removing), the configs whose target name it holds.
/// A trigger only: what is written is decided by ownership in the reconcile.
fn configs_for_managed_secret(
    lookups: &Lookups,
    secret: &ManagedSecret,
) -> Vec<ObjectRef<CachedConfig>> {
    let ns = secret.namespace();
    let owners: Vec<ObjectRef<CachedConfig>> = secret
        .owners()
        .iter()
        .filter(|o| o.kind == Some(OwnerKind::EnvironmentConfig))
        .map(|o| ObjectRef::new(&o.name).within(ns))
        .collect();
    let live_controller = owners.iter().any(|owner| {
        lookups
            .configs
            .get(owner)
            .is_some_and(|c| controlled_by(secret, c.metadata.uid.as_deref()))
    });
    if live_controller {
        return owners;
    }
    let mut found = owners;
    found.extend(configs_targeting(lookups, ns, secret.name()));
    found
}

/// The configs of `ns` whose materialised Secret is named `name`.
fn configs_targeting(lookups: &Lookups, ns: &str, name: &str) -> Vec<ObjectRef<CachedConfig>> {
    // Only names of the `tooljet.<environment>[.<app>]` shape can be targets; most Secret events
    // are not, and cost no scan.
    let Some(environment) = name
        .strip_prefix("tooljet.")
        .and_then(|rest| rest.split('.').next())
    else {
        return vec![];
    };
    lookups
        .configs_in(ns, environment)
        .into_iter()
        .filter(|c| secret_name(c.spec.app.as_deref(), &c.spec.environment) == name)
        .map(|c| ObjectRef::from(&*c))
        .collect()
}

/// Other live configs with the same (namespace, app-or-workspace, environment).
fn siblings(lookups: &Lookups, cfg: &CachedConfig) -> Vec<Arc<CachedConfig>> {
    lookups
        .configs_for(
            &cfg.namespace().unwrap_or_default(),
            cfg.spec.app.as_deref(),
            &cfg.spec.environment,
        )
        .into_iter()
        .filter(|other| other.uid() != cfg.uid())
        .collect()
}

/// What a reconcile found.
#[derive(Debug)]
enum Outcome {
    /// The Secret and the status already hold what materialising would make (see [`current`]):
    /// nothing was read or written.
    Current,
    Materialized {
        materialized: Materialized,
        secret: String,
        change: Option<SecretWrite>,
    },
    Unresolved(Vec<Unresolved>),
    Conflict(Vec<String>),
    SecretTaken(String),
    /// The config's entries were not cached and the API holds a newer generation of it than
    /// the cache: nothing was done; that generation's event wakes the controller.
    Behind,
}

#[instrument(skip_all, fields(kind = "EnvironmentConfig", namespace = cfg.namespace().unwrap_or_default(), name = cfg.name_any()))]
pub async fn reconcile(cfg: Arc<CachedConfig>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _pass = ctx.metrics.reconcile(CONTROLLER);
    ctx.wait_for_caches().await;
    ctx.may_write()?;
    let ns = cfg.namespace().ok_or(Error::NoNamespace)?;
    let name = cfg.name_any();
    if cfg.metadata.deletion_timestamp.is_some() {
        ctx.refs.remove(&ns, &name);
        return Ok(Action::await_change());
    }
    let referenced = cfg.referenced();
    ctx.refs.set(&ns, &name, referenced.clone());

    let outcome = outcome(&cfg, &ctx, &ns, referenced).await?;
    if !matches!(outcome, Outcome::Behind) {
        report(&cfg, &ctx, &outcome).await?;
    }
    Ok(match outcome {
        // Converged: the next change of the config, its Secrets or its siblings wakes it.
        Outcome::Materialized { .. } | Outcome::Current => Action::await_change(),
        // The cache is behind the config's generation in the API: its event wakes this again.
        Outcome::Behind => Action::requeue(RECHECK),
        // Waiting states that events end; the recheck is a safety net for a missed event.
        Outcome::Conflict(_) | Outcome::SecretTaken(_) | Outcome::Unresolved(_) => {
            Action::requeue(RECHECK)
        }
    })
}

/// Gather (siblings, whether it is current, the referenced Secrets), decide (materialise, pure),
/// apply (the stage Secret, and the Secret of a key it no longer has).
async fn outcome(
    cfg: &CachedConfig,
    ctx: &Context,
    ns: &str,
    referenced: std::collections::BTreeSet<String>,
) -> Result<Outcome, Error> {
    let conflicting = siblings(&ctx.lookups, cfg);
    if !conflicting.is_empty() {
        return Ok(Outcome::Conflict(
            conflicting.iter().map(|c| c.name_any()).collect(),
        ));
    }

    let target = secret_name(cfg.spec.app.as_deref(), &cfg.spec.environment);
    if current(cfg, ctx, ns, &target, &referenced) {
        debug!(secret = %target, "materialised Secret is up to date (its inputs are unchanged)");
        return Ok(Outcome::Current);
    }

    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    // A config whose entries the cache does not keep is read beside the referenced Secrets (a
    // rotation reads both): one round trip, not two.
    let entries = cfg.spec()?;
    let (spec, (data, versions)) = tokio::try_join!(
        async {
            match entries {
                Entries::Kept(spec) => Ok(Some(spec)),
                Entries::NotKept => stored_spec(ctx, cfg, ns).await,
            }
        },
        read_referenced(ctx, &secrets, ns, &referenced),
    )?;
    let Some(spec) = spec else {
        return Ok(Outcome::Behind);
    };
    let materialized = match materialize(&ctx.hash_key, &spec.environment, &[&spec], &data) {
        Ok(m) => m,
        Err(problems) => return Ok(Outcome::Unresolved(problems)),
    };
    let desired = stage_secret(cfg, ctx, &target, &materialized, &versions);
    let change = match write_stage_secret(cfg, ctx, &secrets, &desired).await? {
        Synced::Taken => return Ok(Outcome::SecretTaken(target)),
        Synced::Ours(change) => change,
    };
    match change {
        Some(change) => {
            info!(secret = %target, hash = %materialized.hash, ?change, "materialised Secret")
        }
        None => debug!(secret = %target, "materialised Secret is up to date"),
    }
    drop_previous_secret(cfg, ctx, &secrets, &target).await?;
    Ok(Outcome::Materialized {
        materialized,
        secret: target,
        change,
    })
}

/// The spec of `cfg` read from the API, for a config whose status reports it materialised, so
/// that the cache keeps no entries ([`crate::cache::config`]): needed again when a referenced
/// Secret rotated or its Secret was changed. The stored config may be newer than the cached one
/// (its own status write, a label): at the same generation its spec is the same (every change of
/// a spec is a new generation). `None` when the API holds another generation (the spec changed;
/// that change's event wakes this controller) or no such config.
async fn stored_spec(
    ctx: &Context,
    cfg: &CachedConfig,
    ns: &str,
) -> Result<Option<EnvironmentConfigSpec>, Error> {
    let api: Api<Lean<EnvironmentConfig>> = Api::namespaced(ctx.client.clone(), ns);
    let stored = api.get_opt(&cfg.name_any()).await.at(Step::ReadConfig)?;
    Ok(stored
        .filter(|Lean(stored)| {
            stored.metadata.generation == cfg.metadata.generation
                && stored.metadata.uid == cfg.metadata.uid
        })
        .map(|Lean(stored)| stored.spec))
}

/// The data of the referenced Secrets that exist, and the resourceVersion of each. Reads from
/// the API only what changed since it was last read.
async fn read_referenced<'a>(
    ctx: &Context,
    secrets: &Api<Secret>,
    ns: &str,
    referenced: &'a std::collections::BTreeSet<String>,
) -> Result<(SecretData, Vec<(&'a str, Option<u64>)>), Error> {
    let mut data = SecretData::new();
    // The resourceVersion of each Secret whose data is used.
    let mut versions = Vec::with_capacity(referenced.len());
    for name in referenced {
        let found = match ctx.refs.cached(ns, name) {
            Some((version, values)) => Some((Some(version), values)),
            None => {
                ctx.metrics.secret_reads.inc();
                let found = secrets
                    .get_opt(name)
                    .await
                    .at(Step::ReadReferencedSecret)?
                    .map(|secret| {
                        let values = secret
                            .data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, v.0))
                            .collect();
                        (secret.metadata.resource_version, values)
                    });
                ctx.refs.read(ns, name, found)
            }
        };
        if let Some((version, values)) = found {
            versions.push((name.as_str(), version));
            data.insert(name.clone(), values);
        }
    }
    Ok((data, versions))
}

/// The stage Secret to write (pure): the materialised content, and what it is made from.
fn stage_secret(
    cfg: &CachedConfig,
    ctx: &Context,
    target: &str,
    materialized: &Materialized,
    versions: &[(&str, Option<u64>)],
) -> Secret {
    let mut desired = managed_secret(
        cfg,
        target,
        STAGE_SECRET_KIND,
        &cfg.spec.environment,
        cfg.spec.app.as_deref(),
        materialized,
    );
    // What it is made from, so that a restarted operator can tell it is current without reading
    // the referenced Secrets again. Written with the content, never on its own (see `current`).
    if let Some(inputs) = inputs(cfg, versions) {
        let value = inputs_annotation(&ctx.hash_key, &desired, &inputs);
        desired
            .annotations_mut()
            .insert(INPUTS_ANNOTATION.into(), value);
    }
    desired
}

/// Writes the stage Secret when it differs. A configuration of the same key being deleted (a
/// finalizer may hold it for long) hands its Secret over to this one.
async fn write_stage_secret(
    cfg: &CachedConfig,
    ctx: &Context,
    secrets: &Api<Secret>,
    desired: &Secret,
) -> Result<Synced, Error> {
    let predecessor = |secret: &ManagedSecret| {
        secret.owners().iter().any(|o| {
            o.controller
                && o.kind == Some(OwnerKind::EnvironmentConfig)
                && ctx
                    .lookups
                    .configs
                    .get(&ObjectRef::new(&o.name).within(secret.namespace()))
                    .is_some_and(|old| {
                        old.metadata.uid.as_deref() == Some(&*o.uid)
                            && old.metadata.deletion_timestamp.is_some()
                            && old.spec.app == cfg.spec.app
                            && old.spec.environment == cfg.spec.environment
                    })
        })
    };
    sync(
        ctx,
        CONTROLLER,
        secrets,
        cfg.metadata.uid.as_deref(),
        predecessor,
        desired,
    )
    .await
}

/// The key changed (another app or environment): the Secret of the old key is no longer wanted.
async fn drop_previous_secret(
    cfg: &CachedConfig,
    ctx: &Context,
    secrets: &Api<Secret>,
    target: &str,
) -> Result<(), Error> {
    if let Some(previous) = cfg.status.as_ref().and_then(|s| s.secret_name.as_deref())
        && previous != target
    {
        ctx.may_write()?;
        if delete_if_owned(secrets, previous, cfg).await? {
            ctx.metrics.wrote(CONTROLLER, "secret");
        }
    }
    Ok(())
}

/// Whether `cfg` is materialised and reported as it is now, known without reading a referenced
/// Secret or materialising: its status reports the current generation ready in Secret `target`
/// with the content hash that Secret carries; the Secret is `cfg`'s (controller ownerReference by
/// UID, the labels the operator sets); and its inputs annotation proves (an HMAC with the
/// installation's key over the data, the hash, the config's UID and generation and the
/// referenced Secrets' resourceVersions) that it was made from this generation and the Secrets at
/// the versions the watch reports now. A restarted operator so finds every unchanged config
/// current without a read.
///
/// Anything else goes the full way: a rotation (another resourceVersion), an edit of the Secret
/// (its data or hash no longer match the HMAC), a new generation, a Secret of unknown version.
/// The annotation is written only with the content: when inputs change but the content does not
/// (a rotation to the same values), the Secret is left as it is and the next check fails, at
/// the cost of materialising once more, never of a write.
fn current(
    cfg: &CachedConfig,
    ctx: &Context,
    ns: &str,
    target: &str,
    referenced: &std::collections::BTreeSet<String>,
) -> bool {
    let Some(status) = cfg.status.as_ref() else {
        return false;
    };
    let reported = materialised_as_is(&cfg.metadata, Some(status))
        && status.secret_name.as_deref() == Some(target);
    if !reported {
        return false;
    }
    let Some(secret) = ctx.managed_secrets.get(&ObjectRef::new(target).within(ns)) else {
        return false;
    };
    let Some(hash) = status.hash.as_deref() else {
        return false;
    };
    // As this config would write it, with the hash its status reports.
    let ours = managed_metadata(
        cfg,
        target,
        STAGE_SECRET_KIND,
        &cfg.spec.environment,
        cfg.spec.app.as_deref(),
        hash,
    );
    if !secret.carries(&ours) {
        return false;
    }
    let versions: Vec<_> = referenced
        .iter()
        .map(|name| (name.as_str(), ctx.refs.latest(ns, name)))
        .collect();
    inputs(cfg, &versions).is_some_and(|inputs| secret.made_from(&ctx.hash_key, &inputs))
}

/// What `cfg`'s Secret is made from, given the resourceVersion of each referenced Secret whose
/// data is used; `None` when one of them, or the config's UID or generation, is not known.
fn inputs<'a>(cfg: &'a CachedConfig, versions: &[(&'a str, Option<u64>)]) -> Option<Inputs<'a>> {
    Some(Inputs {
        owner_uid: cfg.metadata.uid.as_deref()?,
        generation: cfg.metadata.generation?,
        secrets: versions
            .iter()
            .map(|&(name, version)| Some((name, version?)))
            .collect::<Option<_>>()?,
    })
}

/// A Secret may be (re)written by `cfg` only when `cfg` is its controller, by UID. Not by the
/// managed-by label or the name, which anyone who may create Secrets can copy: adopting such a
/// Secret would let them plant content or have the operator overwrite (or delete) their data. A
/// Secret left by a deleted config is not adopted either: garbage collection removes it, and its
/// deletion triggers this config again (see [`configs_for_managed_secret`]).
fn is_ours(secret: &Secret, cfg: &CachedConfig) -> bool {
    controlled_by(secret, cfg.metadata.uid.as_deref())
}

/// Deletes Secret `name` when `cfg` controls it (by UID, checked again by the apiserver through a
/// UID precondition). Returns whether it did.
async fn delete_if_owned(api: &Api<Secret>, name: &str, cfg: &CachedConfig) -> Result<bool, Error> {
    let Some(old) = api.get_opt(name).await.at(Step::ReadSecret)? else {
        return Ok(false);
    };
    let owned = is_ours(&old, cfg);
    if owned {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: old.uid(),
                resource_version: None,
            }),
            ..Default::default()
        };
        api.delete(name, &params).await.at(Step::DeleteSecret)?;
        info!(secret = %name, "deleted the Secret of the config's previous app or environment");
    }
    Ok(owned)
}

/// The status for an outcome, built on the current one (pure).
fn desired_status(cfg: &CachedConfig, outcome: &Outcome) -> EnvironmentConfigStatus {
    let mut status = cfg.status.clone().unwrap_or_default();
    let generation = cfg.metadata.generation;
    status.observed_generation = generation;
    let ready = match outcome {
        // Behind is never reported (see `reconcile`); were it, nothing would change.
        Outcome::Current | Outcome::Behind => return status,
        Outcome::Materialized {
            materialized,
            secret,
            ..
        } => {
            status.secret_name = Some(secret.clone());
            status.hash = Some(materialized.hash.clone());
            status.data_source_count = Some(materialized.data_sources as i32);
            status.constant_count = Some(materialized.constants as i32);
            condition(
                conditions::READY,
                true,
                conditions::MATERIALIZED,
                format!("materialised into Secret {secret}"),
                generation,
            )
        }
        Outcome::Unresolved(problems) => condition(
            "Ready",
            false,
            Unresolved::reason(problems),
            {
                let ns = cfg.metadata.namespace.as_deref().unwrap_or_default();
                let fixes = Unresolved::fixes(problems, ns);
                let fix = if fixes.is_empty() {
                    String::new()
                } else {
                    format!("; to fix: {}", fixes.join(" && "))
                };
                format!(
                    "{}{fix}; the last good Secret is kept",
                    Unresolved::describe(problems)
                )
            },
            generation,
        ),
        Outcome::Conflict(others) => condition(
            conditions::READY,
            false,
            conditions::CONFLICT,
            format!(
                "EnvironmentConfig {} also configures {} in environment {} of this namespace; keep one per app \
                 (or workspace) and environment: merge their entries into one and delete the other",
                others.join(", "),
                cfg.spec
                    .app
                    .as_deref()
                    .map(|a| format!("app {a}"))
                    .unwrap_or_else(|| "the workspace".into()),
                cfg.spec.environment
            ),
            generation,
        ),
        Outcome::SecretTaken(secret) => condition(
            conditions::READY,
            false,
            conditions::CONFLICT,
            format!(
                "Secret {secret} already exists and is not owned by this EnvironmentConfig (whatever its \
                 labels say); the operator never adopts, overwrites or deletes a Secret it does not own: \
                 delete or rename Secret {secret} and this config materialises into it"
            ),
            generation,
        ),
    };
    set_condition(&mut status.conditions, ready);
    status
}

async fn report(cfg: &CachedConfig, ctx: &Context, outcome: &Outcome) -> Result<(), Error> {
    let status = desired_status(cfg, outcome);
    let failure = new_failure(
        cfg.status.as_ref().map(|s| s.conditions.as_slice()),
        &status.conditions,
        conditions::READY,
    );
    apply_status(ctx, CONTROLLER, cfg, cfg.status.as_ref(), &status).await?;

    match outcome {
        // Events for what people want to know about, not for every routine write: a reverted
        // outside edit, and failures (below).
        Outcome::Materialized {
            materialized,
            secret,
            change: Some(SecretWrite::DriftReverted),
        } => {
            let note = format!(
                "Secret {secret} restored after an outside edit: {} constants, {} data sources (hash {})",
                materialized.constants,
                materialized.data_sources,
                &materialized.hash[..12]
            );
            publish(
                &ctx.recorder,
                cfg,
                EventType::Normal,
                "DriftReverted",
                "Materialize",
                note,
            )
            .await;
        }
        Outcome::Materialized { .. } | Outcome::Current | Outcome::Behind => {}
        _ => {
            if let Some(after) = failure {
                warn!(reason = %after.reason, message = %after.message, "EnvironmentConfig not materialised");
                publish(
                    &ctx.recorder,
                    cfg,
                    EventType::Warning,
                    &after.reason,
                    "Materialize",
                    after.message.clone(),
                )
                .await;
            }
        }
    }
    Ok(())
}

pub fn error_policy(cfg: Arc<CachedConfig>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.error_action(CONTROLLER, &*cfg, error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Constant, ConstantType, EnvironmentConfig, EnvironmentConfigSpec};
    use kube::Resource;

    fn config(name: &str, uid: &str) -> CachedConfig {
        let mut cfg = EnvironmentConfig::new(
            name,
            EnvironmentConfigSpec {
                environment: "staging".into(),
                app: Some("crm".into()),
                data_sources: vec![],
                constants: vec![Constant {
                    name: "A".into(),
                    type_: ConstantType::Global,
                    value: Some("1".into()),
                    value_from: None,
                }],
            },
        );
        cfg.metadata.namespace = Some("ns".into());
        cfg.metadata.uid = Some(uid.into());
        cfg.metadata.generation = Some(3);
        cfg.into()
    }

    fn materialized(cfg: &CachedConfig) -> Materialized {
        let key = crate::materialize::HashKey::new(&[5; 32]).unwrap();
        let Entries::Kept(spec) = cfg.spec().unwrap() else {
            panic!("a config not yet materialised keeps its entries")
        };
        materialize(&key, "staging", &[&spec], &SecretData::new()).unwrap()
    }

    /// A Secret named like `cfg`'s target, labelled managed-by, controlled by `owner_uid` (if any).
    fn secret(cfg: &CachedConfig, owner_uid: Option<&str>) -> Secret {
        let mut s = crate::controller::secrets::managed_secret(
            cfg,
            "tooljet.staging.crm",
            STAGE_SECRET_KIND,
            "staging",
            Some("crm"),
            &materialized(cfg),
        );
        s.metadata.owner_references = owner_uid.map(|uid| {
            let mut owner = cfg.controller_owner_ref(&()).unwrap();
            owner.uid = uid.into();
            vec![owner]
        });
        s
    }

    fn store(configs: &[&CachedConfig]) -> Lookups {
        let configs: Vec<CachedConfig> = configs.iter().map(|c| (*c).clone()).collect();
        Lookups::of(&configs, &[], &[])
    }

    #[test]
    fn a_labelled_secret_without_an_owner_is_not_ours() {
        let cfg = config("crm-staging", "u1");
        let s = secret(&cfg, None);
        assert_eq!(
            s.labels()[crate::api::MANAGED_BY_LABEL],
            crate::api::MANAGED_BY_VALUE
        );
        assert!(!is_ours(&s, &cfg));
    }

    #[test]
    fn a_secret_controlled_by_another_or_a_deleted_config_is_not_ours() {
        let cfg = config("crm-staging", "u1");
        assert!(!is_ours(&secret(&cfg, Some("u-deleted")), &cfg));
        let mut not_controller = secret(&cfg, Some("u1"));
        not_controller.metadata.owner_references.as_mut().unwrap()[0].controller = None;
        assert!(!is_ours(&not_controller, &cfg));
    }

    #[test]
    fn a_secret_controlled_by_the_configs_uid_is_ours() {
        let cfg = config("crm-staging", "u1");
        assert!(is_ours(&secret(&cfg, Some("u1")), &cfg));
    }

    #[test]
    fn an_owned_secret_triggers_its_owner_only() {
        let a = config("crm-staging", "u1");
        let b = config("crm-staging-2", "u2");
        let store = store(&[&a, &b]);
        let triggered = configs_for_managed_secret(&store, &secret(&a, Some("u1")).into());
        assert_eq!(triggered, vec![ObjectRef::new("crm-staging").within("ns")]);
    }

    #[test]
    fn a_foreign_or_orphaned_secret_triggers_the_configs_that_target_its_name() {
        let a = config("crm-staging", "u1");
        let mut other_env = config("crm-prod", "u3");
        other_env.spec.environment = "production".into();
        let store = store(&[&a, &other_env]);
        let foreign = configs_for_managed_secret(&store, &secret(&a, None).into());
        assert_eq!(foreign, vec![ObjectRef::new("crm-staging").within("ns")]);
        let mut orphan = secret(&a, Some("u-deleted"));
        orphan.metadata.owner_references.as_mut().unwrap()[0].name = "old".into();
        let triggered = configs_for_managed_secret(&store, &orphan.into());
        assert!(triggered.contains(&ObjectRef::new("crm-staging").within("ns")));
        assert!(!triggered.contains(&ObjectRef::new("crm-prod").within("ns")));
        assert!(configs_targeting(&store, "ns", "creds").is_empty());
        assert!(configs_targeting(&store, "other-ns", "tooljet.staging.crm").is_empty());
    }

    #[test]
    fn a_taken_secret_is_named_with_the_reason_and_the_fix() {
        let cfg = config("crm-staging", "u1");
        let status = desired_status(&cfg, &Outcome::SecretTaken("tooljet.staging.crm".into()));
        let ready = &status.conditions[0];
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "Conflict")
        );
        assert!(
            ready.message.contains("Secret tooljet.staging.crm")
                && ready
                    .message
                    .contains("not owned by this EnvironmentConfig")
                && ready.message.contains("delete or rename"),
            "{}",
            ready.message
        );
        assert_eq!(status.hash, None, "nothing was materialised");
    }

    #[test]
    fn status_reports_materialisation_and_keeps_last_good_on_failure() {
        let mut cfg = config("crm-staging", "u1");
        let m = materialized(&cfg);
        let hash = m.hash.clone();
        let ok = desired_status(
            &cfg,
            &Outcome::Materialized {
                materialized: m,
                secret: "tooljet.staging.crm".into(),
                change: None,
            },
        );
        assert_eq!(ok.observed_generation, Some(3));
        assert_eq!(ok.hash.as_deref(), Some(hash.as_str()));
        assert_eq!(ok.conditions[0].reason, "Materialized");
        cfg.status = Some(ok);

        let problems = vec![Unresolved::KeyNotFound {
            secret: "creds".into(),
            key: "pg".into(),
            used_by: "constants[A]".into(),
        }];
        let failed = desired_status(&cfg, &Outcome::Unresolved(problems));
        assert_eq!(
            failed.hash.as_deref(),
            Some(hash.as_str()),
            "the last good hash stays"
        );
        assert_eq!(failed.secret_name.as_deref(), Some("tooljet.staging.crm"));
        let ready = &failed.conditions[0];
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "KeyNotFound")
        );
        assert!(ready.message.contains("key pg not found in Secret creds"));
    }

    #[test]
    fn conflict_names_the_other_config_and_the_fix() {
        let cfg = config("crm-staging", "u1");
        let status = desired_status(&cfg, &Outcome::Conflict(vec!["crm-staging-2".into()]));
        let ready = &status.conditions[0];
        assert_eq!(ready.reason, "Conflict");
        assert!(
            ready.message.contains("crm-staging-2")
                && ready.message.contains("app crm")
                && ready.message.contains("staging")
        );
    }

    #[test]
    fn unchanged_outcome_gives_an_identical_status() {
        let mut cfg = config("crm-staging", "u1");
        let outcome = Outcome::Materialized {
            materialized: materialized(&cfg),
            secret: "tooljet.staging.crm".into(),
            change: None,
        };
        cfg.status = Some(desired_status(&cfg, &outcome));
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(
            cfg.status.as_ref(),
            Some(&desired_status(&cfg, &outcome)),
            "no write on a converged object"
        );
    }
}
