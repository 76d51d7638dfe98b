//! The admission configuration objects: the validating and mutating webhook configurations (fail
//! closed), and ValidatingAdmissionPolicies that keep the most important rules (no edits outside
//! the first stage, no demotion, and promotion, release and configuration only with their verbs)
//! even if the webhook configuration is deleted.

use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use k8s_openapi::{
    ByteString,
    api::admissionregistration::v1::{
        MatchCondition, MatchResources, MutatingWebhook, MutatingWebhookConfiguration,
        NamedRuleWithOperations, RuleWithOperations, ServiceReference, ValidatingAdmissionPolicy,
        ValidatingAdmissionPolicyBinding, ValidatingAdmissionPolicyBindingSpec,
        ValidatingAdmissionPolicySpec, ValidatingWebhook, ValidatingWebhookConfiguration,
        Validation, Variable, WebhookClientConfig,
    },
};
use kube::{
    Api, ResourceExt,
    api::{ObjectMeta, Patch, PatchParams},
};
use serde::{Serialize, de::DeserializeOwned};

use super::vocabulary::{APPROVE, CONFIGURE, OVERRIDE, PROMOTE, RELEASE, UNPROTECT};
use crate::api::{
    DEFAULT_PIPELINE, GROUP, LAST_EDITED_BY_ANNOTATION, MANAGED_BY_LABEL, MANAGED_BY_VALUE,
    STAGES_ANNOTATION,
};

/// The name of both webhook configurations (the operator keeps their `caBundle` current).
pub const CONFIGURATION_NAME: &str = "tooljet-operator";
/// The name of the version policy and its binding.
pub const POLICY_NAME: &str = "tooljet-operator-stage-rules";
/// The name of the ToolJetApp policy (releases, pipelines, rollouts) and its binding.
pub const APP_POLICY_NAME: &str = "tooljet-operator-app-rules";
/// The name of the EnvironmentConfig policy and its binding.
pub const CONFIG_POLICY_NAME: &str = "tooljet-operator-config-rules";
/// The ValidatingAdmissionPolicy guarding PromotionPolicies and the creation of Approvals.
pub const GATE_POLICY_NAME: &str = "tooljet-operator-gate-rules";
/// The ValidatingAdmissionPolicy guarding Notifications.
pub const NOTIFICATION_POLICY_NAME: &str = "tooljet-operator-notification-rules";

/// How the apiserver reaches the webhook.
#[derive(Clone, Debug)]
pub enum Endpoint {
    /// A URL (out-of-cluster operator, e.g. `https://127.0.0.1:9443`).
    Url(String),
    /// A Service in the cluster.
    Service {
        namespace: String,
        name: String,
        port: i32,
    },
}

fn client_config(endpoint: &Endpoint, path: &str, ca_bundle: Option<&[u8]>) -> WebhookClientConfig {
    let ca_bundle = ca_bundle.map(|ca| ByteString(ca.to_vec()));
    match endpoint {
        Endpoint::Url(base) => WebhookClientConfig {
            url: Some(format!("{}{path}", base.trim_end_matches('/'))),
            ca_bundle,
            service: None,
        },
        Endpoint::Service {
            namespace,
            name,
            port,
        } => WebhookClientConfig {
            service: Some(ServiceReference {
                namespace: namespace.clone(),
                name: name.clone(),
                path: Some(path.to_string()),
                port: Some(*port),
            }),
            ca_bundle,
            url: None,
        },
    }
}

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        labels: Some([(MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string())].into()),
        ..Default::default()
    }
}

fn rule(resource: &str, operations: &[&str]) -> RuleWithOperations {
    RuleWithOperations {
        api_groups: Some(vec![GROUP.to_string()]),
        api_versions: Some(vec!["*".to_string()]),
        operations: Some(operations.iter().map(|o| o.to_string()).collect()),
        resources: Some(vec![resource.to_string()]),
        scope: Some("Namespaced".to_string()),
    }
}

/// Every AppVersion, ToolJetApp and EnvironmentConfig create, update and delete goes through the
/// rules, except AppVersion updates they cannot refuse (matchCondition `judged-requests-only`).
/// Status updates (`/status`) are not matched, so the operator's own status writes are not
/// intercepted.
pub fn validating(endpoint: &Endpoint, ca_bundle: Option<&[u8]>) -> ValidatingWebhookConfiguration {
    let webhook =
        |name: &str, resource: &str, conditions: Option<Vec<MatchCondition>>| ValidatingWebhook {
            name: name.to_string(),
            client_config: client_config(endpoint, "/validate", ca_bundle),
            rules: Some(vec![rule(resource, &["CREATE", "UPDATE", "DELETE"])]),
            failure_policy: Some("Fail".into()),
            match_policy: Some("Equivalent".into()),
            side_effects: "None".into(),
            timeout_seconds: Some(5),
            admission_review_versions: vec!["v1".into()],
            match_conditions: conditions,
            ..Default::default()
        };
    // The common path (editing a version in its first stage) costs no webhook call. On an update
    // that is not a promotion, `reviews::review_version_update` judges only: spec.app (immutable);
    // definition, description, requires and versionName outside the first stage; versionName
    // uniqueness; the definition's bounds when it changes; and `tooljet.io/` annotations
    // (forgery); nothing else. So an update of a version provably in its first stage (its stage
    // record starts with where it is; that stays the app's first stage, as a stage that holds
    // versions keeps its role: `review_pipeline_change`) that leaves environment, app,
    // versionName, definition and every `tooljet.io/` annotation as they were cannot be refused:
    // description, requires, labels and other annotations are free there. Unstamped versions (no
    // record) are always judged. What CEL cannot see is the app itself: `review_version` refuses
    // any update of a version whose ToolJetApp is missing, so an orphan's free edits now pass (an
    // orphan reaches no stage). Every CREATE and DELETE is judged; `oldObject` is read only on
    // UPDATE, and every key is tested before it is read (an error would apply failurePolicy Fail).
    let prefix = crate::api::ANNOTATION_PREFIX;
    let first_stage = format!(
        "has(oldObject.metadata.annotations) && '{STAGES_ANNOTATION}' in oldObject.metadata.annotations && \
         has(oldObject.spec.environment) && \
         oldObject.metadata.annotations['{STAGES_ANNOTATION}'].split(',')[0] == oldObject.spec.environment"
    );
    let judged_fields = ["environment", "app", "versionName", "definition"]
        .map(unchanged)
        .join(" && ");
    // A `tooljet.io/` annotation of `a` that `b` lacks or holds with another value.
    let reserved_differs = |a: &str, b: &str| {
        format!(
            "(has({a}.metadata.annotations) && {a}.metadata.annotations.exists(k, k.startsWith('{prefix}') && \
             !(has({b}.metadata.annotations) && k in {b}.metadata.annotations && \
             {b}.metadata.annotations[k] == {a}.metadata.annotations[k])))"
        )
    };
    let judged_version_requests = format!(
        "request.operation != 'UPDATE' || !({first_stage}) || !({judged_fields}) || !({owners}) || \
         !({finalizers}) || {} || {}",
        reserved_differs("object", "oldObject"),
        reserved_differs("oldObject", "object"),
        owners = OWNERS_UNCHANGED,
        finalizers = FINALIZERS_UNCHANGED,
    );
    let versions = MatchCondition {
        name: "judged-requests-only".into(),
        expression: judged_version_requests,
    };
    ValidatingWebhookConfiguration {
        metadata: meta(CONFIGURATION_NAME),
        webhooks: Some(vec![
            webhook(
                "appversions.validate.tooljet.io",
                "appversions",
                Some(vec![versions]),
            ),
            webhook("tooljetapps.validate.tooljet.io", "tooljetapps", None),
            webhook(
                "environmentconfigs.validate.tooljet.io",
                "environmentconfigs",
                None,
            ),
            webhook("approvals.validate.tooljet.io", "approvals", None),
            webhook(
                "promotionpolicies.validate.tooljet.io",
                "promotionpolicies",
                None,
            ),
            webhook("notifications.validate.tooljet.io", "notifications", None),
        ]),
    }
}

/// Only new versions, their spec changes (promotions and edits), releases and new Approvals are
/// sent to the mutating webhook, which stamps the stages a version has been in, who created and
/// last edited it, who promoted or released (and a break-glass override), and who approved.
pub fn mutating(endpoint: &Endpoint, ca_bundle: Option<&[u8]>) -> MutatingWebhookConfiguration {
    let webhook = |name: &str, resource: &str, operations: &[&str], condition: Option<&str>| {
        MutatingWebhook {
            name: name.to_string(),
            client_config: client_config(endpoint, "/mutate", ca_bundle),
            rules: Some(vec![rule(resource, operations)]),
            failure_policy: Some("Fail".into()),
            match_policy: Some("Equivalent".into()),
            side_effects: "None".into(),
            timeout_seconds: Some(5),
            admission_review_versions: vec!["v1".into()],
            reinvocation_policy: Some("Never".into()),
            match_conditions: condition.map(|c| {
                vec![MatchCondition {
                    name: "stamps-only".into(),
                    expression: c.to_string(),
                }]
            }),
            ..Default::default()
        }
    };
    let version_stamps = format!(
        "request.operation == 'CREATE' || (object.spec != oldObject.spec && \
         (!{definition} || \
         has(object.spec.environment) != has(oldObject.spec.environment) || \
         (has(object.spec.environment) && \
         object.spec.environment != oldObject.spec.environment) || \
         !has(object.metadata.annotations) || \
         !('{LAST_EDITED_BY_ANNOTATION}' in object.metadata.annotations) || \
         object.metadata.annotations['{LAST_EDITED_BY_ANNOTATION}'] != request.userInfo.username))",
        definition = unchanged("definition"),
    );
    MutatingWebhookConfiguration {
        metadata: meta(CONFIGURATION_NAME),
        webhooks: Some(vec![
            webhook(
                "appversions.mutate.tooljet.io",
                "appversions",
                &["CREATE", "UPDATE"],
                // New versions (stages, creator, references), promotions (who, when) and edits
                // (last editor; references when the definition changes), except an edit whose
                // stamps would change nothing: not a promotion, the definition as stored, and its
                // last-editor annotation already names the requester (their own edits in a row of
                // the description or requirements).
                Some(&version_stamps),
            ),
            webhook(
                "tooljetapps.mutate.tooljet.io",
                "tooljetapps",
                &["CREATE", "UPDATE"],
                Some(
                    "has(object.spec.release) && (request.operation == 'CREATE' || !has(oldObject.spec.release) || \
                     object.spec.release.version != oldObject.spec.release.version)",
                ),
            ),
            webhook(
                "approvals.mutate.tooljet.io",
                "approvals",
                &["CREATE"],
                None,
            ),
        ]),
    }
}

/// `metadata.ownerReferences` as stored: owners decide whether the garbage collector deletes an
/// object, so a change of them is judged (it needs what deleting needs).
/// `metadata.finalizers` as stored: a finalizer holds a deletion, so a change of them is judged.
const FINALIZERS_UNCHANGED: &str = "(has(object.metadata.finalizers) == has(oldObject.metadata.finalizers) && \
     (!has(object.metadata.finalizers) || object.metadata.finalizers == oldObject.metadata.finalizers))";

/// An object's finalizers other than Kubernetes' own (`foregroundDeletion`, `orphan`), in CEL.
fn own_finalizers(obj: &str) -> String {
    format!(
        "(has({obj}.metadata.finalizers) ? {obj}.metadata.finalizers : []).filter(f, !(f in ['foregroundDeletion', 'orphan']))"
    )
}

const OWNERS_UNCHANGED: &str = "(has(object.metadata.ownerReferences) == has(oldObject.metadata.ownerReferences) && \
     (!has(object.metadata.ownerReferences) || object.metadata.ownerReferences == oldObject.metadata.ownerReferences))";

/// `object.spec.<field>` equals `oldObject.spec.<field>`, absent counting as a value.
fn unchanged(field: &str) -> String {
    format!(
        "(has(object.spec.{field}) == has(oldObject.spec.{field}) && \
         (!has(object.spec.{field}) || object.spec.{field} == oldObject.spec.{field}))"
    )
}

/// A CEL check that the requester holds `verb` on `resource` named `name` (a CEL expression) in
/// the request's namespace: the same question the webhook's SubjectAccessReviews ask.
fn authorized(group: &str, resource: &str, name: &str, verb: &str) -> String {
    format!(
        "authorizer.group('{group}').resource('{resource}').namespace(request.namespace).name({name}).check('{verb}').allowed()"
    )
}

fn validation(expression: String, message: String) -> Validation {
    Validation {
        expression,
        message_expression: Some(message),
        reason: Some("Forbidden".into()),
        ..Default::default()
    }
}

fn variable(name: &str, expression: &str) -> Variable {
    Variable {
        name: name.into(),
        expression: expression.into(),
    }
}

fn policy_for(
    name: &str,
    resource: &str,
    variables: Vec<Variable>,
    validations: Vec<Validation>,
) -> (ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding) {
    let policy = ValidatingAdmissionPolicy {
        metadata: meta(name),
        spec: Some(ValidatingAdmissionPolicySpec {
            failure_policy: Some("Fail".into()),
            match_constraints: Some(MatchResources {
                resource_rules: Some(vec![NamedRuleWithOperations {
                    api_groups: Some(vec![GROUP.into()]),
                    api_versions: Some(vec!["*".into()]),
                    operations: Some(vec!["CREATE".into(), "UPDATE".into(), "DELETE".into()]),
                    resources: Some(vec![resource.into()]),
                    scope: Some("Namespaced".into()),
                    resource_names: None,
                }]),
                ..Default::default()
            }),
            variables: Some(variables),
            validations: Some(validations),
            ..Default::default()
        }),
        status: None,
    };
    let binding = ValidatingAdmissionPolicyBinding {
        metadata: meta(name),
        spec: Some(ValidatingAdmissionPolicyBindingSpec {
            policy_name: Some(name.into()),
            validation_actions: Some(vec!["Deny".into()]),
            ..Default::default()
        }),
    };
    (policy, binding)
}

/// The version rules, for any pipeline: they hold while the webhook is down or its configuration
/// deleted. A version's stages come from its `tooljet.io/stages` stamp (the first is its
/// pipeline's first stage); an unstamped version is judged by the default pipeline's names.
pub fn version_policy() -> (ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding) {
    let validations = [
        version_creation_rules(),
        version_edit_rules(),
        version_promotion_rules(),
        version_deletion_rules(),
    ]
    .concat();
    policy_for(POLICY_NAME, "appversions", version_variables(), validations)
}

/// The default pipeline's stages past the first, in CEL: where an unstamped version is past its
/// first stage.
const LATER_DEFAULT_STAGES: &str = "['staging', 'production']";

/// The `tooljet.io/stages` annotation of `obj` (`object` or `oldObject`), `''` when absent, in
/// CEL.
fn stages_annotation(obj: &str) -> String {
    format!(
        "has({obj}.metadata.annotations) && '{STAGES_ANNOTATION}' in {obj}.metadata.annotations ? \
         {obj}.metadata.annotations['{STAGES_ANNOTATION}'] : ''"
    )
}

/// The variables the version rules read: the stages recorded before and after, whether the
/// stored version is past its first stage, its first stage, and whether it moves.
fn version_variables() -> Vec<Variable> {
    let later = LATER_DEFAULT_STAGES;
    vec![
        // The stages the stored version has been in ([] when unstamped or on CREATE).
        variable(
            "oldStages",
            &format!(
                "request.operation == 'CREATE' ? [] : ({}).split(',').filter(s, s != '')",
                stages_annotation("oldObject")
            ),
        ),
        variable(
            "newStages",
            &format!(
                "request.operation == 'DELETE' ? '' : ({})",
                stages_annotation("object")
            ),
        ),
        // Whether the stored version is past its first stage: by its stamp, or else by name.
        variable(
            "advanced",
            &format!(
                "request.operation != 'CREATE' && (size(variables.oldStages) > 0 ? \
                 variables.oldStages[0] != oldObject.spec.environment : oldObject.spec.environment in {later})"
            ),
        ),
        variable(
            "first",
            "size(variables.oldStages) > 0 ? variables.oldStages[0] : 'development'",
        ),
        variable(
            "moved",
            "request.operation == 'UPDATE' && object.spec.environment != oldObject.spec.environment",
        ),
    ]
}

/// Versions are created in the first stage only, with no stage record but their own.
fn version_creation_rules() -> Vec<Validation> {
    let later = LATER_DEFAULT_STAGES;
    vec![
        validation(
            format!("request.operation != 'CREATE' || !(object.spec.environment in {later})"),
            "'AppVersion ' + object.metadata.name + ' cannot be created in ' + object.spec.environment + \
             ': versions are created only in development; create it in development and promote it'"
                .into(),
        ),
        validation(
            "request.operation != 'CREATE' || variables.newStages == '' || variables.newStages == object.spec.environment".into(),
            format!(
                "'AppVersion ' + object.metadata.name + ': annotation {STAGES_ANNOTATION} must name the stage it is \
                 created in; remove it (tooljet-operator stamps it)'"
            ),
        ),
    ]
}

/// Versions past their first stage are not edited, renamed or moved to another app.
fn version_edit_rules() -> Vec<Validation> {
    let frozen = [
        "definition",
        "description",
        "requires",
        "versionName",
        "app",
    ]
    .map(unchanged)
    .join(" && ");
    vec![validation(
        format!("request.operation != 'UPDATE' || !variables.advanced || ({frozen})"),
        // The same words as the webhook's denial, naming the first changed field.
        format!(
            "'AppVersion ' + object.metadata.name + ' is in ' + oldObject.spec.environment + ': ' + \
             (!{d} ? 'edits (spec.definition) are' : !{s} ? 'edits (spec.description) are' : \
             !{r} ? 'edits (spec.requires) are' : !{n} ? 'renames (spec.versionName) are' : 'changes of spec.app are') + \
             ' only allowed in ' + variables.first + '; create a new version in ' + variables.first",
            d = unchanged("definition"),
            s = unchanged("description"),
            r = unchanged("requires"),
            n = unchanged("versionName"),
        ),
    )]
}

/// Promotions only move forward, are recorded in the stage record (which users do not change
/// otherwise), need `promote` on the stage entered, and do not move a version being deleted.
fn version_promotion_rules() -> Vec<Validation> {
    vec![
        validation(
            "!variables.moved || size(variables.oldStages) == 0 || \
             !(object.spec.environment in variables.oldStages)"
                .into(),
            "'AppVersion ' + object.metadata.name + ' cannot move back from ' + oldObject.spec.environment + \
             ' to ' + object.spec.environment + ': promotion only moves forward (it has been in ' + \
             object.spec.environment + ' before); create a new version in ' + variables.first + ' instead'"
                .into(),
        ),
        validation(
            // An unstamped version (stored before the stamp existed): the default pipeline's order.
            "!variables.moved || size(variables.oldStages) > 0 || \
             !((oldObject.spec.environment == 'production' && object.spec.environment in ['development', 'staging']) || \
               (oldObject.spec.environment == 'staging' && object.spec.environment == 'development'))"
                .into(),
            "'AppVersion ' + object.metadata.name + ' cannot move back from ' + oldObject.spec.environment + \
             ' to ' + object.spec.environment + ': promotion only moves forward'"
                .into(),
        ),
        validation(
            "!variables.moved || size(variables.oldStages) == 0 || \
             variables.newStages == variables.oldStages.join(',') + ',' + object.spec.environment"
                .into(),
            format!(
                "'AppVersion ' + object.metadata.name + ': a promotion must record the stage in annotation \
                 {STAGES_ANNOTATION} (' + variables.oldStages.join(',') + ',' + object.spec.environment + \
                 '); tooljet-operator\\'s mutating webhook stamps it: check that it is installed'"
            ),
        ),
        validation(
            format!(
                "variables.moved ? {} : (request.operation != 'UPDATE' || variables.newStages == \
                 ({}))",
                authorized(GROUP, "environments", "object.spec.environment", "promote"),
                stages_annotation("oldObject"),
            ),
            "variables.moved ? 'user ' + request.userInfo.username + ' may not promote AppVersion ' + \
             object.metadata.name + ' to ' + object.spec.environment + ': promoting into ' + \
             object.spec.environment + ' needs verb promote on resource environments named ' + \
             object.spec.environment + ' (group tooljet.io) in namespace ' + request.namespace : \
             'AppVersion ' + object.metadata.name + ': annotation tooljet.io/stages is recorded by \
             tooljet-operator and cannot be changed by users; remove it from your change'"
                .into(),
        ),
        // The same words as the webhook's denials.
        validation(
            "!variables.moved || !has(oldObject.metadata.deletionTimestamp)".into(),
            "'AppVersion ' + object.metadata.name + ' is being deleted (metadata.deletionTimestamp is set; \
             finalizers ' + (has(oldObject.metadata.finalizers) ? oldObject.metadata.finalizers.join(', ') : '') + \
             ' hold it): a version being deleted cannot be promoted, since it would be deleted in ' + \
             object.spec.environment + '; create a new version in ' + variables.first + ' and promote that one'"
                .into(),
        ),
    ]
}

/// What deletes a version or holds its deletion: its owners and finalizers change only with
/// `delete` on it, and past its first stage not at all (but for finalizers removed from a version
/// being deleted); and only versions in their first stage are deleted (or their whole namespace).
fn version_deletion_rules() -> Vec<Validation> {
    vec![
        validation(
            format!(
                "request.operation != 'UPDATE' || {OWNERS_UNCHANGED} || (!variables.advanced && {})",
                authorized(GROUP, "appversions", "object.metadata.name", "delete")
            ),
            "variables.advanced ? 'AppVersion ' + object.metadata.name + ': metadata.ownerReferences cannot be set \
             or changed: the garbage collector would delete it once its owners are gone, and it is in ' + \
             oldObject.spec.environment + ': versions that left ' + variables.first + ' are kept as the app\\'s \
             release and rollback history; remove ownerReferences from your change' : 'user ' + \
             request.userInfo.username + ' may not set or change metadata.ownerReferences of AppVersion ' + \
             object.metadata.name + ': owners let the garbage collector delete the object, so this needs verb delete \
             on resource appversions named ' + object.metadata.name + ' (group tooljet.io) in namespace ' + \
             request.namespace + '; ask someone who may delete it'"
                .into(),
        ),
        validation(
            format!(
                "request.operation != 'UPDATE' || {new} == {old} || \
                 ((!variables.advanced || (has(oldObject.metadata.deletionTimestamp) && {new}.all(f, f in {old}))) \
                 && {delete})",
                new = own_finalizers("object"),
                old = own_finalizers("oldObject"),
                delete = authorized(GROUP, "appversions", "object.metadata.name", "delete"),
            ),
            "'user ' + request.userInfo.username + ' may not add or remove finalizers of AppVersion ' + \
             object.metadata.name + ': a finalizer holds the object\\'s deletion, so this needs verb delete on \
             resource appversions named ' + object.metadata.name + ' (group tooljet.io) in namespace ' + \
             request.namespace + ', and versions that left their first stage take none'"
                .into(),
        ),
        validation(
            "request.operation != 'DELETE' || !variables.advanced || \
             has(namespaceObject.metadata.deletionTimestamp)"
                .into(),
            "'AppVersion ' + oldObject.metadata.name + ' is in ' + oldObject.spec.environment + \
             ': deletion is only allowed in ' + variables.first + '; versions that left ' + variables.first + \
             ' are kept as the app\\'s release and rollback history (deleting the namespace removes the whole workspace)'"
                .into(),
        ),
    ]
}

/// Releases and pipeline or rollout changes need the same verbs as in the webhook.
pub fn app_policy() -> (ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding) {
    let variables = vec![
        variable(
            "oldRelease",
            "request.operation == 'CREATE' || !has(oldObject.spec.release) ? '' : oldObject.spec.release.version",
        ),
        variable(
            "newRelease",
            "request.operation == 'DELETE' || !has(object.spec.release) ? '' : object.spec.release.version",
        ),
        variable(
            "oldRollout",
            "request.operation == 'CREATE' || !has(oldObject.spec.rollout) ? [] : oldObject.spec.rollout",
        ),
        variable(
            "newRollout",
            "request.operation == 'DELETE' || !has(object.spec.rollout) ? [] : object.spec.rollout",
        ),
        // Whether spec.verification is as before (on create: absent). Automatic rollback makes
        // the operator release through closed windows: switching it is configuring the app.
        variable(
            "sameVerification",
            "request.operation == 'DELETE' || (request.operation == 'CREATE' ? !has(object.spec.verification) : \
             (has(object.spec.verification) ? has(oldObject.spec.verification) && \
             object.spec.verification == oldObject.spec.verification : !has(oldObject.spec.verification)))",
        ),
    ];
    let last = "object.spec.environments[size(object.spec.environments) - 1]";
    let validations = vec![
        validation(
            format!(
                "request.operation == 'DELETE' || variables.oldRelease == variables.newRelease || {}",
                authorized(GROUP, "environments", last, "release")
            ),
            format!(
                "'user ' + request.userInfo.username + ' may not ' + (variables.newRelease == '' ? \
                 'remove the release of' : 'release') + ' ToolJetApp ' + object.metadata.name + ': setting, \
                 changing or removing a release needs verb release on resource environments named ' + {last} + \
                 ' (group tooljet.io) in namespace ' + request.namespace"
            ),
        ),
        validation(
            format!(
                "request.operation == 'DELETE' || ((request.operation == 'CREATE' || \
                 object.spec.environments == oldObject.spec.environments) && \
                 variables.oldRollout == variables.newRollout && variables.sameVerification) || {}",
                authorized(GROUP, "tooljetapps", "object.metadata.name", "configure")
            ),
            // The same words as the webhook's denial.
            "'user ' + request.userInfo.username + ' may not change ' + \
             ['spec.environments', 'spec.rollout', 'spec.verification'].filter(f, \
               f == 'spec.environments' ? \
                 (request.operation == 'UPDATE' && object.spec.environments != oldObject.spec.environments) : \
               f == 'spec.rollout' ? variables.oldRollout != variables.newRollout : !variables.sameVerification \
             ).join(' and ') + \
             ' of ToolJetApp ' + object.metadata.name + ': changing an app\\'s pipeline, rollout or verification needs verb configure \
             on resource tooljetapps named ' + object.metadata.name + ' (group tooljet.io) in namespace ' + \
             request.namespace"
                .into(),
        ),
        validation(
            format!(
                "request.operation != 'UPDATE' || ({OWNERS_UNCHANGED} && {new} == {old}) || \
                 (variables.oldRelease == '' && variables.newRelease == '' && {delete})",
                new = own_finalizers("object"),
                old = own_finalizers("oldObject"),
                delete = authorized(GROUP, "tooljetapps", "object.metadata.name", "delete"),
            ),
            "'user ' + request.userInfo.username + ' may not set or change the ownerReferences or finalizers of \
             ToolJetApp ' + object.metadata.name + ': they delete the app or hold its deletion, which needs verb \
             delete on resource tooljetapps named ' + object.metadata.name + ' (group tooljet.io) in namespace ' + \
             request.namespace + ', and an app with a release takes neither'"
                .into(),
        ),
    ];
    policy_for(APP_POLICY_NAME, "tooljetapps", variables, validations)
}

/// A stage's configuration is created, changed and deleted only with `configure` on the stage.
pub fn config_policy() -> (ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding) {
    let configure = |stage: &str| authorized(GROUP, "environments", stage, "configure");
    let variables = vec![variable(
        "changed",
        &format!(
            "request.operation != 'UPDATE' || object.spec != oldObject.spec || \
             (has(object.metadata.ownerReferences) ? object.metadata.ownerReferences : []) != \
             (has(oldObject.metadata.ownerReferences) ? oldObject.metadata.ownerReferences : []) || \
             {} != {}",
            own_finalizers("object"),
            own_finalizers("oldObject"),
        ),
    )];
    let message = |stage: &str, verb: &str, obj: &str| {
        format!(
            "'user ' + request.userInfo.username + ' may not {verb} EnvironmentConfig ' + {obj}.metadata.name + \
             ': configuring ' + {stage} + ' needs verb configure on resource environments named ' + {stage} + \
             ' (group tooljet.io) in namespace ' + request.namespace"
        )
    };
    let validations = vec![
        validation(
            format!(
                "request.operation == 'DELETE' || !variables.changed || {}",
                configure("object.spec.environment")
            ),
            message(
                "object.spec.environment",
                "' + (request.operation == 'CREATE' ? 'create' : 'change') + '",
                "object",
            ),
        ),
        validation(
            format!(
                "request.operation == 'CREATE' || !variables.changed || \
                 (request.operation == 'DELETE' && has(namespaceObject.metadata.deletionTimestamp)) || {}",
                configure("oldObject.spec.environment")
            ),
            message(
                "oldObject.spec.environment",
                "' + (request.operation == 'DELETE' ? 'delete' : 'change') + '",
                "oldObject",
            ),
        ),
    ];
    policy_for(
        CONFIG_POLICY_NAME,
        "environmentconfigs",
        variables,
        validations,
    )
}

/// PromotionPolicies are created, changed and deleted only with `configure` on every stage they
/// guard (before and after). Approvals are created only with `approve` on their stage. (Revoking
/// also needs `approve`, but the garbage collector deletes the Approvals of a deleted version,
/// and only the webhook can tell that the version is gone: the webhook judges deletions.)
pub fn gate_policy() -> (ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding) {
    let configure = |stage: &str| authorized(GROUP, "environments", stage, "configure");
    let validations = vec![
        validation(
            format!(
                "request.resource.resource != 'promotionpolicies' || request.operation == 'DELETE' || \
                 (request.operation == 'UPDATE' && object.spec == oldObject.spec) || \
                 object.spec.environments.all(s, {})",
                configure("s")
            ),
            "'user ' + request.userInfo.username + ' may not create or change PromotionPolicy ' + \
             object.metadata.name + ': it needs verb configure on resource environments named ' + \
             object.spec.environments.join(', ') + ' (group tooljet.io) in namespace ' + request.namespace"
                .into(),
        ),
        validation(
            format!(
                "request.resource.resource != 'promotionpolicies' || request.operation == 'CREATE' || \
                 (request.operation == 'UPDATE' && object.spec == oldObject.spec) || \
                 (request.operation == 'DELETE' && has(namespaceObject.metadata.deletionTimestamp)) || \
                 oldObject.spec.environments.all(s, {})",
                configure("s")
            ),
            "'user ' + request.userInfo.username + ' may not change or delete PromotionPolicy ' + \
             oldObject.metadata.name + ': a policy guarding ' + oldObject.spec.environments.join(', ') + \
             ' needs verb configure on resource environments named ' + oldObject.spec.environments.join(', ') + \
             ' (group tooljet.io) in namespace ' + request.namespace"
                .into(),
        ),
        validation(
            format!(
                "request.resource.resource != 'approvals' || request.operation != 'CREATE' || {}",
                authorized(GROUP, "environments", "object.spec.environment", "approve")
            ),
            "'user ' + request.userInfo.username + ' may not approve for ' + object.spec.environment + \
             ': it needs verb approve on resource environments named ' + object.spec.environment + \
             ' (group tooljet.io) in namespace ' + request.namespace"
                .into(),
        ),
    ];
    let (mut policy, binding) =
        policy_for(GATE_POLICY_NAME, "promotionpolicies", vec![], validations);
    if let Some(rules) = policy
        .spec
        .as_mut()
        .and_then(|s| s.match_constraints.as_mut())
        .and_then(|m| m.resource_rules.as_mut())
    {
        rules[0].resources = Some(vec!["promotionpolicies".into(), "approvals".into()]);
    }
    (policy, binding)
}

/// Notifications are created and changed (spec) only with `configure` on every ToolJetApp of the
/// namespace, and point at a Secret (new or changed reference) only with `get` on it: the
/// webhook's rule ([`super::notifications`]), kept while the webhook is down.
pub fn notification_policy() -> (ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding) {
    use super::notifications::{ASK_ADMIN, ASK_SECRET_OWNER, READING_SECRET, SENDING_EVENTS};
    let secret = "object.spec.endpoint.urlFrom.secretKeyRef";
    let verb = "(request.operation == 'CREATE' ? 'create' : 'change')";
    let validations = vec![
        validation(
            format!(
                "request.operation == 'DELETE' || (request.operation == 'UPDATE' && object.spec == oldObject.spec) || \
                 authorizer.group('{GROUP}').resource('tooljetapps').namespace(request.namespace).check('{CONFIGURE}').allowed()"
            ),
            format!(
                "'user ' + request.userInfo.username + ' may not ' + {verb} + ' Notification ' + object.metadata.name + \
                 ': {SENDING_EVENTS} needs verb configure on every object of resource tooljetapps (group tooljet.io) \
                 in namespace ' + request.namespace + '; {ASK_ADMIN}'"
            ),
        ),
        validation(
            format!(
                "request.operation == 'DELETE' || \
                 (request.operation == 'UPDATE' && {secret} == oldObject.spec.endpoint.urlFrom.secretKeyRef) || \
                 {}",
                authorized("", "secrets", &format!("{secret}.name"), "get")
            ),
            format!(
                "'user ' + request.userInfo.username + ' may not reference Secret ' + {secret}.name + ' (key ' + \
                 {secret}.key + ') from Notification ' + object.metadata.name + ': {READING_SECRET} needs verb get on \
                 resource secrets named ' + {secret}.name + ' (group core) in namespace ' + request.namespace + \
                 '; {ASK_SECRET_OWNER}'"
            ),
        ),
    ];
    policy_for(
        NOTIFICATION_POLICY_NAME,
        "notifications",
        vec![],
        validations,
    )
}

/// Every policy and its binding.
pub fn policies() -> Vec<(ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding)> {
    vec![
        version_policy(),
        app_policy(),
        config_policy(),
        gate_policy(),
        notification_policy(),
    ]
}

/// The verbs that read a tooljet.io resource.
const READ: [&str; 3] = ["get", "list", "watch"];
/// The verbs that read and write a tooljet.io resource.
const WRITE: [&str; 8] = [
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
];

/// A rule granting `verbs` on tooljet.io `resources`.
fn grant(resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![GROUP.into()]),
        resources: Some(resources.iter().map(|r| r.to_string()).collect()),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..Default::default()
    }
}

/// A rule granting `configure` on the environments named `stages`.
fn configure_stages(stages: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![GROUP.into()]),
        resources: Some(vec!["environments".into()]),
        verbs: vec![CONFIGURE.into()],
        resource_names: Some(stages.iter().map(|s| s.to_string()).collect()),
        ..Default::default()
    }
}

/// The ClusterRole `name`, labelled as the operator's.
fn role(name: &str, rules: Vec<PolicyRule>) -> ClusterRole {
    ClusterRole {
        metadata: meta(name),
        rules: Some(rules),
        ..Default::default()
    }
}

/// Example ClusterRoles for the people who work with ToolJet apps. Bind them with RoleBindings
/// in a workspace namespace (or ClusterRoleBindings for every workspace). To let someone promote
/// into or configure only some stages, copy a role and list the stages in `resourceNames`.
pub fn user_roles() -> Vec<ClusterRole> {
    vec![
        role(
            "tooljet-developer",
            vec![
                grant(&["appversions", "environmentconfigs"], &WRITE),
                grant(&["tooljetapps"], &READ),
                // What gates the stages, and who approved (the dashboard and `status` show both).
                grant(&["promotionpolicies", "approvals"], &READ),
                // The default pipeline's first stage only; see README for custom pipelines.
                configure_stages(&[DEFAULT_PIPELINE[0]]),
            ],
        ),
        role(
            "tooljet-promoter",
            vec![
                grant(
                    &["appversions"],
                    &["get", "list", "watch", "update", "patch"],
                ),
                grant(&["tooljetapps", "environmentconfigs"], &READ),
                grant(&["promotionpolicies", "approvals"], &READ),
                grant(&["environments"], &["promote"]),
            ],
        ),
        role(
            "tooljet-release-manager",
            vec![
                grant(
                    &["tooljetapps"],
                    &["get", "list", "watch", "update", "patch"],
                ),
                grant(
                    &[
                        "appversions",
                        "environmentconfigs",
                        "promotionpolicies",
                        "approvals",
                    ],
                    &READ,
                ),
                grant(&["environments"], &["release"]),
            ],
        ),
        role(
            "tooljet-environment-admin",
            vec![
                grant(&["environmentconfigs"], &WRITE),
                grant(
                    &["tooljetapps"],
                    &["get", "list", "watch", "create", "update", "patch"],
                ),
                grant(&["appversions"], &READ),
                grant(&["environments", "tooljetapps"], &[CONFIGURE]),
                grant(&["notifications"], &WRITE),
            ],
        ),
        role(
            "tooljet-approver",
            vec![
                grant(
                    &["approvals"],
                    &["get", "list", "watch", "create", "delete"],
                ),
                grant(&["tooljetapps", "appversions", "promotionpolicies"], &READ),
                grant(&["environments"], &[APPROVE]),
            ],
        ),
        role(
            "tooljet-admin",
            vec![
                grant(
                    &[
                        "tooljetapps",
                        "appversions",
                        "environmentconfigs",
                        "promotionpolicies",
                        "notifications",
                    ],
                    &WRITE,
                ),
                grant(&["approvals"], &READ),
                grant(&["environments"], &[PROMOTE, RELEASE, CONFIGURE, OVERRIDE]),
                grant(&["tooljetapps"], &[UNPROTECT, CONFIGURE]),
            ],
        ),
    ]
}

/// Server-side applies (field manager `manager`) both webhook configurations reaching
/// `endpoint`, every ValidatingAdmissionPolicy with its binding, and the user ClusterRoles: what
/// an installation without the chart (`cargo xtask up`, tests) registers.
pub async fn install(
    client: &kube::Client,
    endpoint: &Endpoint,
    manager: &str,
) -> Result<(), kube::Error> {
    let params = PatchParams::apply(manager).force();
    let admission = "admissionregistration.k8s.io/v1";
    let (validating, mutating) = (validating(endpoint, None), mutating(endpoint, None));
    apply(
        client,
        &validating,
        admission,
        "ValidatingWebhookConfiguration",
        &params,
    )
    .await?;
    apply(
        client,
        &mutating,
        admission,
        "MutatingWebhookConfiguration",
        &params,
    )
    .await?;
    for (policy, binding) in policies() {
        apply(
            client,
            &policy,
            admission,
            "ValidatingAdmissionPolicy",
            &params,
        )
        .await?;
        apply(
            client,
            &binding,
            admission,
            "ValidatingAdmissionPolicyBinding",
            &params,
        )
        .await?;
    }
    for role in user_roles() {
        apply(
            client,
            &role,
            "rbac.authorization.k8s.io/v1",
            "ClusterRole",
            &params,
        )
        .await?;
    }
    Ok(())
}

/// Server-side applies (`params`) the cluster-scoped `obj`, of `kind` in `api_version`.
async fn apply<K>(
    client: &kube::Client,
    obj: &K,
    api_version: &str,
    kind: &str,
    params: &PatchParams,
) -> Result<(), kube::Error>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::ClusterResourceScope>
        + Serialize
        + DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    let mut value = serde_json::to_value(obj).map_err(kube::Error::SerdeError)?;
    value["apiVersion"] = api_version.into();
    value["kind"] = kind.into();
    Api::<K>::all(client.clone())
        .patch(&obj.name_any(), params, &Patch::Apply(&value))
        .await
        .map(|_| ())
}

/// One YAML document (`---` first) for an object of `kind`.
pub fn document<T: serde::Serialize>(obj: &T, api_version: &str, kind: &str) -> String {
    let mut value = serde_json::to_value(obj).expect("serializes");
    value["apiVersion"] = api_version.into();
    value["kind"] = kind.into();
    format!("---\n{}", serde_yaml::to_string(&value).expect("YAML"))
}

/// The policy, its binding and the user roles as YAML: what the Helm chart ships
/// (`charts/tooljet-operator/files/policy.yaml`).
pub fn policy_yaml() -> String {
    let mut out = String::from(
        "# Generated by `cargo xtask crdgen` from src/webhook/config.rs. Do not edit.\n",
    );
    for (policy, binding) in policies() {
        out += &document(
            &policy,
            "admissionregistration.k8s.io/v1",
            "ValidatingAdmissionPolicy",
        );
        out += &document(
            &binding,
            "admissionregistration.k8s.io/v1",
            "ValidatingAdmissionPolicyBinding",
        );
    }
    for role in user_roles() {
        out += &document(&role, "rbac.authorization.k8s.io/v1", "ClusterRole");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validating_webhooks() -> Vec<ValidatingWebhook> {
        let endpoint = Endpoint::Url("https://127.0.0.1:9443".into());
        validating(&endpoint, None).webhooks.unwrap()
    }

    #[test]
    fn only_version_updates_the_rules_cannot_refuse_skip_the_validating_webhook() {
        let webhooks = validating_webhooks();
        let versions = &webhooks[0];
        assert_eq!(versions.name, "appversions.validate.tooljet.io");
        let [condition] = versions.match_conditions.as_deref().unwrap() else {
            panic!("one match condition");
        };
        assert_eq!(condition.name, "judged-requests-only");
        let e = &condition.expression;
        // CREATE and DELETE always call it, and oldObject is read only after this guard.
        assert!(e.starts_with("request.operation != 'UPDATE' || "), "{e}");
        // The stored version must be provably in its first stage: its stage record's first entry.
        assert!(e.contains(
            "has(oldObject.metadata.annotations) && 'tooljet.io/stages' in oldObject.metadata.annotations"
        ));
        assert!(e.contains(
            "oldObject.metadata.annotations['tooljet.io/stages'].split(',')[0] == oldObject.spec.environment"
        ));
        // Every field the rules judge on such an update, absent counting as a value.
        for field in ["environment", "app", "versionName", "definition"] {
            assert!(
                e.contains(&format!(
                    "has(object.spec.{field}) == has(oldObject.spec.{field})"
                )) && e.contains(&format!("object.spec.{field} == oldObject.spec.{field}")),
                "{field} missing from {e}"
            );
        }
        // Reserved annotations added, changed or removed, on either side possibly without any
        // annotations at all.
        for (a, b) in [("object", "oldObject"), ("oldObject", "object")] {
            assert!(e.contains(&format!(
                "(has({a}.metadata.annotations) && {a}.metadata.annotations.exists(k, k.startsWith('tooljet.io/') && \
                 !(has({b}.metadata.annotations) && k in {b}.metadata.annotations && \
                 {b}.metadata.annotations[k] == {a}.metadata.annotations[k])))"
            )));
        }
        // What the rules do not judge in the first stage is not named.
        for free in ["description", "requires", "labels"] {
            assert!(!e.contains(free), "{free} in {e}");
        }
        // The other validating webhooks see every request; all keep failing closed, quickly.
        assert!(webhooks[1..].iter().all(|w| w.match_conditions.is_none()));
        for w in &webhooks {
            assert_eq!(w.failure_policy.as_deref(), Some("Fail"));
            assert_eq!(w.timeout_seconds, Some(5));
        }
    }
}
