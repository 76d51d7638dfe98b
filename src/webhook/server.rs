//! The admission decisions: gathers the facts the rules need (from the caches, plus whether the
//! requester holds every access the request needs: [`super::access`]) and applies the pure
//! reviews ([`super::reviews`], [`super::gates`]). Fails closed: anything it cannot decide is denied with the reason. The HTTP layer
//! is [`super::http`].

use crate::lifecycle::{Pipeline, stamps};
use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::{api::core::v1::Namespace, jiff::Timestamp};
use kube::{
    Api, Client, ResourceExt,
    api::{DynamicObject, ListParams, PartialObjectMeta},
    core::admission::{AdmissionRequest, AdmissionResponse, Operation},
    runtime::reflector::{ObjectRef, Store},
};
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use super::{
    access, gates, mutations, needs, notifications, reviews,
    vocabulary::{self, AppFact, ApprovedVersion, Facts, GateFacts, Op, Verdict, VersionFact},
};
use crate::{
    api::{
        AppVersion, Approval, CREATED_BY_ANNOTATION, EnvironmentConfig, LAST_EDITED_BY_ANNOTATION,
        Notification, PromotionPolicy, ToolJetApp,
    },
    cache::{Lean, Lookups, Readiness},
    lifecycle::References,
    materialize::{HashKey, missing_requirements},
    metrics::Metrics,
};

/// What the handlers share.
pub struct WebhookState {
    pub client: Client,
    /// The caches, and lookups by index over them.
    pub lookups: Lookups,
    pub managed_secrets: Store<crate::cache::secret::ManagedSecret>,
    /// The installation's content-hash key.
    pub hash_key: Arc<HashKey>,
    pub readiness: Arc<Readiness>,
    pub metrics: Arc<Metrics>,
    /// Accesses the apiserver allowed a moment ago ([`access`]).
    pub allowed: access::Allowed,
}

/// The object as its kind, taking it out of the request: the request's JSON tree is moved into
/// the typed object (its strings are not copied), so a large definition is held once, not twice.
fn typed<K: DeserializeOwned>(obj: Option<DynamicObject>) -> Result<Option<K>, String> {
    obj.map(|o| {
        let DynamicObject {
            types,
            metadata,
            mut data,
        } = o;
        let map = data
            .as_object_mut()
            .ok_or("cannot decode the object: it is not a JSON object")?;
        let metadata = serde_json::to_value(metadata).map_err(|e| e.to_string())?;
        map.insert("metadata".into(), metadata);
        if let Some(types) = types {
            map.insert("apiVersion".into(), types.api_version.into());
            map.insert("kind".into(), types.kind.into());
        }
        serde_json::from_value(data).map_err(|e| format!("cannot decode the object: {e}"))
    })
    .transpose()
}

fn op(operation: &Operation) -> Option<Op> {
    match operation {
        Operation::Create => Some(Op::Create),
        Operation::Update => Some(Op::Update),
        Operation::Delete => Some(Op::Delete),
        Operation::Connect => None,
    }
}

/// The mutating webhook: stamps the stages and creator of a new version, its last editor, who
/// promoted or released (and a break-glass override), and who approved.
pub async fn stamp(
    state: &WebhookState,
    req: &mut AdmissionRequest<DynamicObject>,
) -> AdmissionResponse {
    // The version a new Approval names is looked up before the (synchronous) stamping.
    let approved = match (req.kind.kind.as_str(), &req.operation) {
        ("Approval", Operation::Create) if !state.readiness.is_ready() => {
            Err(NOT_READY.to_string())
        }
        ("Approval", Operation::Create) => {
            let ns = req.namespace.clone().unwrap_or_default();
            match req
                .object
                .as_ref()
                .and_then(|o| o.data.get("spec")?.get("version")?.as_str())
            {
                Some(version) => stamped_version(state, &ns, version).await,
                None => Ok(None),
            }
        }
        _ => Ok(None),
    };
    stamp_with(req, approved)
}

/// [`stamp`], given the version a new Approval names (`Ok(None)`: no such version).
pub fn stamp_with(
    req: &mut AdmissionRequest<DynamicObject>,
    approved: Result<Option<ApprovedVersion>, String>,
) -> AdmissionResponse {
    let response = AdmissionResponse::from(&*req);
    let user = req.user_info.username.as_deref().unwrap_or("unknown");
    let now = Timestamp::now().to_string();
    let patch = match (req.kind.kind.as_str(), &req.operation) {
        ("AppVersion", Operation::Create) => match typed::<AppVersion>(req.object.take()) {
            Ok(Some(new)) => Some(mutations::mutation_for_new_version(&new, user)),
            Err(e) => return response.deny(e),
            Ok(None) => None,
        },
        ("AppVersion", Operation::Update) => match (
            typed::<AppVersion>(req.old_object.take()),
            typed::<AppVersion>(req.object.take()),
        ) {
            (Ok(Some(old)), Ok(Some(new))) => {
                mutations::mutation_for_version(&old, &new, user, &now)
            }
            (Err(e), _) | (_, Err(e)) => return response.deny(e),
            _ => None,
        },
        ("ToolJetApp", Operation::Create | Operation::Update) => {
            match (
                typed::<ToolJetApp>(req.old_object.take()),
                typed::<ToolJetApp>(req.object.take()),
            ) {
                (Ok(old), Ok(Some(new))) => {
                    mutations::mutation_for_app(old.as_ref(), &new, user, &now)
                }
                (Err(e), _) | (_, Err(e)) => return response.deny(e),
                _ => None,
            }
        }
        ("Approval", Operation::Create) => match typed::<Approval>(req.object.take()) {
            Ok(Some(new)) => {
                let ns = req.namespace.clone().unwrap_or_default();
                match approved {
                    Err(e) => return response.deny(e),
                    Ok(Some(v)) => Some(mutations::mutation_for_approval(&new, &v, user, &now)),
                    Ok(None) => {
                        return response.deny(format!(
                            "Approval {}: AppVersion {} does not exist in namespace {ns}; approve an existing version",
                            req.name, new.spec.version
                        ));
                    }
                }
            }
            Err(e) => return response.deny(e),
            Ok(None) => None,
        },
        _ => None,
    };
    match patch {
        Some(patch) => response
            .with_patch(patch)
            .unwrap_or_else(|e| AdmissionResponse::invalid(e.to_string())),
        None => response,
    }
}

const NOT_READY: &str =
    "tooljet-operator is starting and has not synced its caches yet; retry in a few seconds";

/// The version a new Approval names, for its stamp: from the cache, or from the API when the
/// cache does not show it yet. The stamp reads only its name and UID, which never change, so a
/// cached copy serves and its app is not looked up (`next_stage` is left out).
async fn stamped_version(
    state: &WebhookState,
    ns: &str,
    name: &str,
) -> Result<Option<ApprovedVersion>, String> {
    let v = match state.lookups.versions.get(&ObjectRef::new(name).within(ns)) {
        Some(v) => Some(v),
        None => stored_version(&state.client, ns, name, "to stamp the approval")
            .await?
            .map(Arc::new),
    };
    Ok(v.map(|v| approved_facts(&v, None)))
}

/// The facts approving needs of version `v` of `app`.
fn approved_facts(v: &AppVersion, app: Option<&ToolJetApp>) -> ApprovedVersion {
    let a = v.annotations();
    ApprovedVersion {
        name: v.name_any(),
        uid: v.uid().unwrap_or_default(),
        generation: v.metadata.generation.unwrap_or_default(),
        stage: v.spec.environment.clone(),
        next_stage: app
            .and_then(|a| Pipeline::of(a).next(&v.spec.environment))
            .map(str::to_string),
        app: v.spec.app.clone(),
        creator: a.get(CREATED_BY_ANNOTATION).cloned(),
        last_editor: a.get(LAST_EDITED_BY_ANNOTATION).cloned(),
        editors: stamps::editors_of(v),
        deleting: v.metadata.deletion_timestamp.is_some(),
    }
}

/// AppVersion `name` as stored now, read without its definition ([`Lean`]); `why` says in an
/// error what it was read for.
async fn stored_version(
    client: &Client,
    ns: &str,
    name: &str,
    why: &str,
) -> Result<Option<AppVersion>, String> {
    Api::<Lean<AppVersion>>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .map(|v| v.map(|Lean(v)| v))
        .map_err(|e| format!("could not read AppVersion {name} {why}: {e}"))
}

/// The gate facts for `version` (as stored before the request) entering `stage` of `app`,
/// promoted by `promoter` (`None`: approvals are not judged, e.g. a release). The policies come
/// from the cache; where they require approvals, the version's Approvals are read from the API,
/// so that one revoked a moment before the request no longer counts.
async fn gate_facts(
    state: &WebhookState,
    ns: &str,
    app: &ToolJetApp,
    stage: &str,
    version: Option<(&AppVersion, &str)>,
) -> Result<Option<GateFacts>, String> {
    let Some(gate) = crate::gate::stage_gate(&state.lookups, app, stage) else {
        return Ok(None);
    };
    let window = gate.windows_at(crate::gate::to_chrono(Timestamp::now()));
    // The approvals are read from the API: one revoked a moment ago (deleted) must not count.
    let approvals = match version {
        Some((v, promoter)) if gate.requirement.is_some() => {
            let stored =
                stored::<Approval>(&state.client, ns, "spec.version", &v.name_any()).await?;
            gate.tally_of(crate::gate::approval_facts(stored, v), v, Some(promoter))
                .map(|t| (t.satisfied(), t.describe()))
        }
        _ => None,
    };
    Ok(Some(GateFacts {
        separation_of_duties: gate
            .requirement
            .as_ref()
            .is_some_and(|r| r.separation_of_duties),
        policies: gate.policies,
        approvals,
        closed: window.closed,
    }))
}

/// The validating decision.
pub async fn review(
    state: &WebhookState,
    req: &mut AdmissionRequest<DynamicObject>,
) -> AdmissionResponse {
    let response = AdmissionResponse::from(&*req);
    let Some(op) = op(&req.operation) else {
        return response;
    };
    if !state.readiness.is_ready() {
        return response.deny(NOT_READY);
    }
    let verdict = match req.kind.kind.as_str() {
        "AppVersion" => review_version(state, req, op).await,
        "ToolJetApp" => review_app(state, req, op).await,
        "EnvironmentConfig" => review_config(state, req, op).await,
        "Approval" => review_approval(state, req, op).await,
        "PromotionPolicy" => review_policy(state, req, op).await,
        "Notification" => review_notification(state, req, op).await,
        // Registered only for the kinds above: anything else is a misconfiguration. Fail closed.
        other => Err(format!(
            "tooljet-operator's webhook does not judge kind {other}; remove it from the webhook configuration"
        )),
    };
    match verdict {
        Ok(Verdict::Allow) => response,
        Ok(Verdict::Deny(message)) => {
            info!(kind = %req.kind.kind, name = %req.name, namespace = ?req.namespace, user = ?req.user_info.username, %message, "admission denied");
            response.deny(message)
        }
        Err(message) => {
            warn!(kind = %req.kind.kind, name = %req.name, %message, "admission could not be decided; denied");
            response.deny(message)
        }
    }
}

fn versions_of(
    state: &WebhookState,
    ns: &str,
    app: &str,
    except: Option<&str>,
) -> Vec<VersionFact> {
    state
        .lookups
        .versions_of(ns, app)
        .into_iter()
        .filter(|v| Some(v.name_any().as_str()) != except)
        .map(|v| VersionFact {
            name: v.name_any(),
            version_name: v.spec.version_name.clone(),
            environment: v.spec.environment.clone(),
        })
        .collect()
}

/// The objects of kind `K` in `ns` whose `field` equals `value`, as the API stores them now (a
/// consistent LIST), for decisions that must not rest on a cache that may lag the request: a
/// version created or promoted a moment ago, a config created a moment ago. The CRDs declare the
/// field selectable; against CRDs installed before they did (the apiserver answers 400), the
/// namespace is listed whole and filtered here.
async fn stored<K>(client: &Client, ns: &str, field: &str, value: &str) -> Result<Vec<K>, String>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    stored_selected(client, ns, &format!("{field}={value}")).await
}

/// [`stored`] with a whole field selector (`a=x,b=y`). The caller filters the answer again: a
/// CRD installed before it declared one of the fields (the apiserver answers 400) is listed whole.
async fn stored_selected<K>(client: &Client, ns: &str, selector: &str) -> Result<Vec<K>, String>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api = Api::<K>::namespaced(client.clone(), ns);
    let selected = api.list(&ListParams::default().fields(selector)).await;
    let items = match selected {
        Ok(list) => list.items,
        Err(kube::Error::Api(e)) if e.code == 400 => {
            warn!(kind = %K::kind(&()), %selector, error = %e.message, "field selector refused; listing the namespace whole");
            api.list(&ListParams::default())
                .await
                .map_err(|e| stored_error::<K>(ns, selector, e))?
                .items
        }
        Err(e) => return Err(stored_error::<K>(ns, selector, e)),
    };
    Ok(items)
}

fn stored_error<K: kube::Resource<DynamicType = ()>>(
    ns: &str,
    selector: &str,
    e: kube::Error,
) -> String {
    format!(
        "could not list the {}s of namespace {ns} with {selector} to decide on a view as new as the request: {e}",
        K::kind(&())
    )
}

/// `value` as a field selector value: `\\`, `,` and `=` escaped (the apiserver's
/// `fields.EscapeValue`), so a versionName such as `a,b=c` selects itself and nothing else.
pub fn field_value(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '\\' | ',' | '=') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// The AppVersions of `ns` that `fields` selects, as the API stores them now: a consistent LIST
/// of their metadata only, so no definition is ever sent to the webhook whatever the number or
/// size of versions. `Ok(None)` when the CRD does not declare a selected field (CRDs installed by an
/// older release: Helm does not upgrade them).
async fn stored_version_names(
    client: &Client,
    ns: &str,
    fields: &str,
) -> Result<Option<Vec<PartialObjectMeta<AppVersion>>>, String> {
    let api = Api::<AppVersion>::namespaced(client.clone(), ns);
    match api
        .list_metadata(&ListParams::default().fields(fields))
        .await
    {
        Ok(list) => Ok(Some(list.items)),
        Err(kube::Error::Api(e)) if e.code == 400 => {
            warn!(%fields, error = %e.message, "field selector refused: the AppVersion CRD is older than the operator; apply crds/ of this release");
            Ok(None)
        }
        Err(e) => Err(format!(
            "could not list the AppVersions of namespace {ns} with {fields} to decide on a view as new as the request: {e}"
        )),
    }
}

/// The versions of `app`, as stored now, read without their definitions: every field the rules
/// need is in a version's metadata (its stage is the last of its `tooljet.io/stages` stamp, which
/// only the webhook writes). Versions stored before that stamp existed are read one at a time.
/// `version_name` is only filled where `named` selects by it.
async fn stored_versions_of(
    client: &Client,
    ns: &str,
    app: &str,
    named: Option<&str>,
) -> Result<Vec<VersionFact>, String> {
    let mut fields = format!("spec.app={}", field_value(app));
    if let Some(version_name) = named {
        fields.push_str(&format!(",spec.versionName={}", field_value(version_name)));
    }
    match stored_versions_selected(client, ns, &fields, named.unwrap_or_default()).await? {
        Some(facts) => Ok(facts),
        None => stored_versions_in_pages(client, ns, app, named).await,
    }
}

/// The versions `fields` selects as stored now, read without their definitions (see
/// [`stored_versions_of`]); `version_name` is what each is recorded with. `None` when the CRD
/// does not declare a selected field.
async fn stored_versions_selected(
    client: &Client,
    ns: &str,
    fields: &str,
    version_name: &str,
) -> Result<Option<Vec<VersionFact>>, String> {
    let Some(items) = stored_version_names(client, ns, fields).await? else {
        return Ok(None);
    };
    let mut facts = Vec::with_capacity(items.len());
    for meta in items {
        let name = meta.name_any();
        let environment = match stamps::stage_path(meta.annotations()).last() {
            Some(stage) => stage.to_string(),
            None => match stored_version(client, ns, &name, "to check the request").await? {
                Some(v) => v.spec.environment,
                None => continue,
            },
        };
        facts.push(VersionFact {
            name,
            version_name: version_name.to_string(),
            environment,
        });
    }
    Ok(Some(facts))
}

/// [`stored_versions_of`] against CRDs that do not declare the fields it selects: the versions
/// of the namespace in pages, read without their definitions ([`crate::cache::lean`]).
async fn stored_versions_in_pages(
    client: &Client,
    ns: &str,
    app: &str,
    named: Option<&str>,
) -> Result<Vec<VersionFact>, String> {
    let api = Api::<Lean<AppVersion>>::namespaced(client.clone(), ns);
    let versions = crate::cache::lean::list_paged(&api, &ListParams::default(), crate::cache::VERSION_PAGE)
        .await
        .map_err(|e| {
            format!("could not list the AppVersions of namespace {ns} to decide on a view as new as the request: {e}")
        })?;
    Ok(versions
        .into_iter()
        .filter(|v| v.spec.app == app && named.is_none_or(|n| v.spec.version_name == n))
        .map(|v| VersionFact {
            name: v.name_any(),
            version_name: v.spec.version_name,
            environment: v.spec.environment,
        })
        .collect())
}

/// What every request's facts start from: namespace and user.
struct Request<'a, K> {
    req: &'a AdmissionRequest<DynamicObject>,
    old: Option<K>,
    new: Option<K>,
    ns: String,
    user: String,
}

impl<'a, K: DeserializeOwned> Request<'a, K> {
    fn decode(req: &'a mut AdmissionRequest<DynamicObject>) -> Result<Self, String> {
        let old: Option<K> = typed(req.old_object.take())?;
        let new: Option<K> = typed(req.object.take())?;
        let req: &'a AdmissionRequest<DynamicObject> = req;
        if old.is_none() && new.is_none() {
            return Err(format!("the request carries no {}", req.kind.kind));
        }
        Ok(Request {
            req,
            old,
            new,
            ns: req.namespace.clone().unwrap_or_default(),
            user: req.user_info.username.clone().unwrap_or_default(),
        })
    }

    /// Asks the apiserver, concurrently, whether the requester holds each access.
    async fn grants(
        &self,
        state: &WebhookState,
        needed: Vec<vocabulary::Access>,
    ) -> Result<BTreeMap<vocabulary::Access, bool>, String> {
        let answers = futures::future::try_join_all(needed.iter().map(|a| {
            access::holds(
                &state.client,
                &state.allowed,
                &state.metrics,
                &self.req.user_info,
                &self.ns,
                a,
            )
        }))
        .await?;
        Ok(needed.into_iter().zip(answers).collect())
    }
}

async fn review_version(
    state: &WebhookState,
    req: &mut AdmissionRequest<DynamicObject>,
    op: Op,
) -> Result<Verdict, String> {
    let r = Request::<AppVersion>::decode(req)?;
    let req = r.req;
    let (ns, old, new) = (&r.ns, r.old.as_ref(), r.new.as_ref());
    let subject = new.or(old).ok_or(vocabulary::MALFORMED)?;
    let mut facts = Facts::default();
    let app = app_of(state, ns, &subject.spec.app).await?;
    // The stage a promotion enters.
    let promoted_to = match (old, new) {
        (Some(old), Some(new)) => needs::promotion(old, new).map(|(_, to)| to),
        _ => None,
    };
    let versions;
    (
        facts.granted,
        facts.gate,
        versions,
        facts.namespace_terminating,
    ) = futures::try_join!(
        r.grants(state, needs::needed_for_version(old, new, &r.user)),
        promotion_gate(state, ns, old, app.as_deref(), promoted_to, &r.user),
        other_versions(
            state,
            ns,
            app.is_some(),
            &subject.spec.app,
            old,
            new,
            &req.name
        ),
        terminating_if_deleted(state, ns, op),
    )?;
    if let (Some(app), Some(versions)) = (&app, versions) {
        facts.app = Some(AppFact {
            name: app.name_any(),
            environments: app.spec.environments.clone(),
            versions,
            failed_stages: failed_stages(app),
        });
    }
    if let (Some(new), Some(to)) = (new, promoted_to) {
        facts.missing_in_target = missing_in_target(state, ns, new, to);
    }
    Ok(reviews::review_version(op, old, new, &r.user, &facts))
}

/// The other versions of `app` (a version's spec.app), for an AppVersion request (`None` when
/// the app does not exist). The versions matter to a create or a rename only (versionName is
/// unique per app), and there a version created a moment ago must count: the versions that
/// already carry the requested name are read from the API (metadata only), while the
/// SubjectAccessReviews run. `name`: the version under review, left out.
async fn other_versions(
    state: &WebhookState,
    ns: &str,
    app_exists: bool,
    app: &str,
    old: Option<&AppVersion>,
    new: Option<&AppVersion>,
    name: &str,
) -> Result<Option<Vec<VersionFact>>, String> {
    let named = new.filter(|n| old.is_none_or(|o| o.spec.version_name != n.spec.version_name));
    match (app_exists, named) {
        (true, Some(n)) => Ok(Some(
            stored_versions_of(&state.client, ns, app, Some(&n.spec.version_name))
                .await?
                .into_iter()
                .filter(|v| v.name != name)
                .collect(),
        )),
        (true, None) => Ok(Some(versions_of(state, ns, app, Some(name)))),
        (false, _) => Ok(None),
    }
}

/// Whether the namespace is being deleted, asked of a deletion only.
async fn terminating_if_deleted(state: &WebhookState, ns: &str, op: Op) -> Result<bool, String> {
    match op {
        Op::Delete => namespace_terminating(&state.client, ns).await,
        _ => Ok(false),
    }
}

/// A promotion's gate (its Approvals read from the API): `to`, the stage it enters. spec.app is
/// immutable (CEL and the rules), so the version's app is the one promoted in.
async fn promotion_gate(
    state: &WebhookState,
    ns: &str,
    old: Option<&AppVersion>,
    app: Option<&ToolJetApp>,
    to: Option<&str>,
    user: &str,
) -> Result<Option<GateFacts>, String> {
    match (old, app, to) {
        (Some(old), Some(app), Some(to)) => gate_facts(state, ns, app, to, Some((old, user))).await,
        _ => Ok(None),
    }
}

/// What the configuration of `to`, the stage a promotion enters, lacks of what `new` needs.
fn missing_in_target(state: &WebhookState, ns: &str, new: &AppVersion, to: &str) -> Vec<String> {
    let resolved = crate::cache::stage::resolve(
        &state.hash_key,
        &state.managed_secrets,
        &state.lookups.configs,
        ns,
        &new.spec.app,
        to,
    );
    let requires = new.spec.requires.clone().unwrap_or_default();
    // The definition is the request's own: its references are computed from it, not read
    // from a stamp.
    crate::cache::stage::explain_missing(
        &state.lookups,
        ns,
        &new.spec.app,
        to,
        missing_requirements(
            &requires.data_sources,
            &requires.constants,
            &References::of(new.spec.definition.as_ref()),
            &resolved.data,
        ),
    )
}

/// The app `name`, from the cache or, when the cache does not show it, from the API: an app
/// created a moment ago (`kubectl apply -f` of a file holding an app and its versions) may not
/// have reached the cache, and a version is not refused for an app that exists. One read, on a
/// cache miss only.
async fn app_of(
    state: &WebhookState,
    ns: &str,
    name: &str,
) -> Result<Option<Arc<ToolJetApp>>, String> {
    if let Some(app) = state.lookups.apps.get(&ObjectRef::new(name).within(ns)) {
        return Ok(Some(app));
    }
    Api::<ToolJetApp>::namespaced(state.client.clone(), ns)
        .get_opt(name)
        .await
        .map(|app| app.map(Arc::new))
        .map_err(|e| format!("could not read ToolJetApp {name}: {e}"))
}

async fn review_app(
    state: &WebhookState,
    req: &mut AdmissionRequest<DynamicObject>,
    op: Op,
) -> Result<Verdict, String> {
    let r = Request::<ToolJetApp>::decode(req)?;
    let req = r.req;
    let (ns, old, new) = (&r.ns, r.old.as_ref(), r.new.as_ref());
    let subject = old.or(new).ok_or(vocabulary::MALFORMED)?;
    let mut facts = Facts::default();
    if op == Op::Delete {
        facts.namespace_terminating = namespace_terminating(&state.client, ns).await?;
    }
    // Deleting an app, or changing its stages, is refused for the versions it would strand. The
    // cache may not show a version created or promoted a moment ago, and allowing on a view older
    // than the request would lose history: these rare requests read the versions from the API.
    let structural = (op == Op::Delete && !facts.namespace_terminating)
        || new.is_some_and(|new| needs::pipeline_changed(old, new));
    let versions = if structural {
        stored_versions_of(&state.client, ns, &req.name, None).await?
    } else {
        versions_of(state, ns, &req.name, None)
    };
    facts.app = Some(AppFact {
        name: req.name.clone(),
        environments: subject.spec.environments.clone(),
        versions,
        failed_stages: failed_stages(subject),
    });
    // A change of labels or stages that changes whom a policy guards is an edit of that policy.
    if let (Some(old), Some(new)) = (old, new)
        && (old.labels() != new.labels() || needs::pipeline_changed(Some(old), new))
    {
        facts.guards_changed =
            crate::gate::guards_changed(&state.lookups.policies_in(ns), old, new);
    }
    let mut needed = needs::needed_for_app(old, new, &r.user);
    needed.extend(needs::needed_for_guards(&facts.guards_changed));
    needed.sort();
    needed.dedup();
    facts.granted = r.grants(state, needed).await?;
    if let Some(new) = new
        && let Some(version) = needs::release(old, new)
    {
        if let Some(app) = facts.app.as_mut() {
            released_as_stored(state, ns, new, version, app).await?;
        }
        // Judged on the labels as stored and as requested, the stricter answer winning: a
        // release cannot drop the label that puts it under a freeze in the same request.
        let after = gate_facts(state, ns, new, Pipeline::of(new).last(), None).await?;
        let before = match old {
            Some(old) if old.labels() != new.labels() => {
                let mut relabelled = new.clone();
                relabelled.metadata.labels = old.metadata.labels.clone();
                gate_facts(state, ns, &relabelled, Pipeline::of(new).last(), None).await?
            }
            _ => None,
        };
        facts.gate = GateFacts::stricter(after, before);
    }
    Ok(reviews::review_app(op, old, new, &r.user, &facts))
}

/// The released version as the API stores it, when the cache does not show it in the app's last
/// stage: a version promoted a moment ago may not have reached the cache yet, and a release is
/// not refused on a view older than the request. A version the API does not have either, or that
/// belongs to another app, is left out (the rules then refuse the release). One read, on that
/// path only.
async fn released_as_stored(
    state: &WebhookState,
    ns: &str,
    app: &ToolJetApp,
    version: &str,
    fact: &mut AppFact,
) -> Result<(), String> {
    let last = Pipeline::of(app).last();
    if fact
        .versions
        .iter()
        .any(|v| v.name == version && v.environment == last)
    {
        return Ok(());
    }
    // Its metadata only, selected by name and app; its stage from its stamp.
    let fields = format!(
        "metadata.name={},spec.app={}",
        field_value(version),
        field_value(&app.name_any()),
    );
    let stored = match stored_versions_selected(&state.client, ns, &fields, "").await? {
        Some(found) => found.into_iter().next().map(|v| v.environment),
        None => stored_version(&state.client, ns, version, "to check the release")
            .await?
            .filter(|v| v.spec.app == app.name_any())
            .map(|v| v.spec.environment),
    };
    let version_name = fact
        .versions
        .iter()
        .find(|v| v.name == version)
        .map(|v| v.version_name.clone())
        .unwrap_or_default();
    fact.versions.retain(|v| v.name != version);
    if let Some(environment) = stored {
        fact.versions.push(VersionFact {
            name: version.to_string(),
            version_name,
            environment,
        });
    }
    Ok(())
}

async fn review_config(
    state: &WebhookState,
    req: &mut AdmissionRequest<DynamicObject>,
    op: Op,
) -> Result<Verdict, String> {
    let r = Request::<EnvironmentConfig>::decode(req)?;
    let req = r.req;
    let (ns, old, new) = (&r.ns, r.old.as_ref(), r.new.as_ref());
    let mut facts = Facts::default();
    if op == Op::Delete {
        facts.namespace_terminating = namespace_terminating(&state.client, ns).await?;
    }
    // A config being deleted is leaving its stage: it has no rival (its finalizers may be released
    // while its replacement exists).
    if let Some(new) = new.filter(|n| n.metadata.deletion_timestamp.is_none()) {
        let keyed = old.is_none_or(|o| {
            o.spec.app != new.spec.app || o.spec.environment != new.spec.environment
        });
        facts.rival = if keyed {
            // A config that takes an (app, stage) must not miss a rival created a moment ago.
            // Selected by stage and app, so the apiserver sends the few configs of that pair,
            // not every config of the stage (a namespace of a thousand apps answered each create
            // with a thousand configs, each with its data sources and constants).
            let selector = match new.spec.app.as_deref() {
                Some(app) => format!(
                    "spec.environment={},spec.app={}",
                    field_value(&new.spec.environment),
                    field_value(app)
                ),
                None => format!("spec.environment={}", field_value(&new.spec.environment)),
            };
            stored_selected::<EnvironmentConfig>(&state.client, ns, &selector)
                .await?
                .into_iter()
                // One being deleted is on its way out, however long a finalizer holds it: not a rival
                // (a finalizer on the old config must not keep its replacement out).
                .find(|c| {
                    c.name_any() != req.name
                        && c.metadata.deletion_timestamp.is_none()
                        && c.spec.app == new.spec.app
                        && c.spec.environment == new.spec.environment
                })
                .map(|c| c.name_any())
        } else {
            state
                .lookups
                .configs_for(ns, new.spec.app.as_deref(), &new.spec.environment)
                .iter()
                .find(|c| c.name_any() != req.name)
                .map(|c| c.name_any())
        };
    }
    facts.granted = r
        .grants(state, needs::needed_for_config(op, old, new))
        .await?;
    Ok(reviews::review_config(op, old, new, &r.user, &facts))
}

async fn review_approval(
    state: &WebhookState,
    req: &mut AdmissionRequest<DynamicObject>,
    op: Op,
) -> Result<Verdict, String> {
    let r = Request::<Approval>::decode(req)?;
    let (ns, old, new) = (&r.ns, r.old.as_ref(), r.new.as_ref());
    let subject = new.or(old).ok_or(vocabulary::MALFORMED)?;
    // Judged on the version as stored: approvals are written at a person's pace, and one read
    // spares a refusal (or a revocation allowed) on a cache that has not seen the last edit,
    // promotion or deletion.
    let version = stored_version(
        &state.client,
        ns,
        &subject.spec.version,
        "to check the approval",
    )
    .await?;
    let app = match &version {
        Some(v) => app_of(state, ns, &v.spec.app).await?,
        None => None,
    };
    let mut facts = Facts {
        approved: version.as_ref().map(|v| approved_facts(v, app.as_deref())),
        ..Default::default()
    };
    if op == Op::Delete {
        facts.namespace_terminating = namespace_terminating(&state.client, ns).await?;
    }
    if op == Op::Create
        && let Some(app) = &app
    {
        // Only who guards the stage and whether separation of duties applies matter here: no
        // windows or counts.
        facts.gate =
            crate::gate::stage_gate(&state.lookups, app, &subject.spec.environment).map(|g| {
                GateFacts {
                    separation_of_duties: g
                        .requirement
                        .as_ref()
                        .is_some_and(|r| r.separation_of_duties),
                    policies: g.policies,
                    ..Default::default()
                }
            });
    }
    facts.granted = r
        .grants(state, needs::needed_for_approval(old, new))
        .await?;
    Ok(gates::review_approval(op, old, new, &r.user, &facts))
}

async fn review_policy(
    state: &WebhookState,
    req: &mut AdmissionRequest<DynamicObject>,
    op: Op,
) -> Result<Verdict, String> {
    let r = Request::<PromotionPolicy>::decode(req)?;
    let (ns, old, new) = (&r.ns, r.old.as_ref(), r.new.as_ref());
    let mut facts = Facts::default();
    if op == Op::Delete {
        facts.namespace_terminating = namespace_terminating(&state.client, ns).await?;
    }
    let problems = new.map(crate::gate::problems).unwrap_or_default();
    facts.granted = r
        .grants(state, needs::needed_for_policy(op, old, new))
        .await?;
    Ok(gates::review_policy(
        op, old, new, &r.user, &problems, &facts,
    ))
}

async fn review_notification(
    state: &WebhookState,
    req: &mut AdmissionRequest<DynamicObject>,
    op: Op,
) -> Result<Verdict, String> {
    let r = Request::<Notification>::decode(req)?;
    let (old, new) = (r.old.as_ref(), r.new.as_ref());
    let facts = Facts {
        granted: r
            .grants(state, notifications::needed_for_notification(op, old, new))
            .await?,
        ..Default::default()
    };
    Ok(notifications::review_notification(
        op, old, new, &r.user, &facts,
    ))
}

async fn namespace_terminating(client: &Client, ns: &str) -> Result<bool, String> {
    let api: Api<Namespace> = Api::all(client.clone());
    match api.get_opt(ns).await {
        Ok(found) => Ok(found.is_none_or(|n| n.metadata.deletion_timestamp.is_some())),
        Err(e) => Err(format!(
            "could not read namespace {ns} to check whether it is being deleted: {e}"
        )),
    }
}

/// The stages of `app` whose workloads failed their last verification, with what failed.
fn failed_stages(app: &ToolJetApp) -> BTreeMap<String, String> {
    app.status
        .iter()
        .flat_map(|s| &s.verifications)
        .filter(|v| v.phase == crate::api::VerificationPhase::Failed)
        .map(|v| (v.environment.clone(), v.message.clone()))
        .collect()
}
