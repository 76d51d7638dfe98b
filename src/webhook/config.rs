//! The admission configuration objects: the validating and mutating webhook configurations (fail
//! closed), and a ValidatingAdmissionPolicy that enforces the rules needing no other object for
//! the default pipeline, so they hold even if the webhook configuration is deleted.

use k8s_openapi::{
    ByteString,
    api::admissionregistration::v1::{
        MatchCondition, MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations,
        ServiceReference, ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
        ValidatingAdmissionPolicyBindingSpec, ValidatingAdmissionPolicySpec, ValidatingWebhook,
        ValidatingWebhookConfiguration, Validation, WebhookClientConfig,
    },
};
use kube::api::ObjectMeta;

use crate::api::{GROUP, MANAGED_BY_LABEL, MANAGED_BY_VALUE};

/// The name of both webhook configurations (the operator keeps their `caBundle` current).
pub const CONFIGURATION_NAME: &str = "tooljet-operator";
/// The name of the policy and its binding.
pub const POLICY_NAME: &str = "tooljet-operator-stage-rules";

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

/// Every AppVersion and ToolJetApp create, update and delete goes through the rules. Status
/// updates (`/status`) are not matched, so the operator's own status writes are not intercepted.
pub fn validating(endpoint: &Endpoint, ca_bundle: Option<&[u8]>) -> ValidatingWebhookConfiguration {
    let webhook = |name: &str, resource: &str| ValidatingWebhook {
        name: name.to_string(),
        client_config: client_config(endpoint, "/validate", ca_bundle),
        rules: Some(vec![rule(resource, &["CREATE", "UPDATE", "DELETE"])]),
        failure_policy: Some("Fail".into()),
        match_policy: Some("Equivalent".into()),
        side_effects: "None".into(),
        timeout_seconds: Some(5),
        admission_review_versions: vec!["v1".into()],
        ..Default::default()
    };
    ValidatingWebhookConfiguration {
        metadata: meta(CONFIGURATION_NAME),
        webhooks: Some(vec![
            webhook("appversions.validate.tooljet.io", "appversions"),
            webhook("tooljetapps.validate.tooljet.io", "tooljetapps"),
        ]),
    }
}

/// Only promotions and releases are sent to the mutating webhook, which stamps who made them.
pub fn mutating(endpoint: &Endpoint, ca_bundle: Option<&[u8]>) -> MutatingWebhookConfiguration {
    let webhook =
        |name: &str, resource: &str, operations: &[&str], condition: &str| MutatingWebhook {
            name: name.to_string(),
            client_config: client_config(endpoint, "/mutate", ca_bundle),
            rules: Some(vec![rule(resource, operations)]),
            failure_policy: Some("Fail".into()),
            match_policy: Some("Equivalent".into()),
            side_effects: "None".into(),
            timeout_seconds: Some(5),
            admission_review_versions: vec!["v1".into()],
            reinvocation_policy: Some("Never".into()),
            match_conditions: Some(vec![MatchCondition {
                name: "stamps-only".into(),
                expression: condition.to_string(),
            }]),
            ..Default::default()
        };
    MutatingWebhookConfiguration {
        metadata: meta(CONFIGURATION_NAME),
        webhooks: Some(vec![
            webhook(
                "appversions.mutate.tooljet.io",
                "appversions",
                &["UPDATE"],
                "object.spec.environment != oldObject.spec.environment",
            ),
            webhook(
                "tooljetapps.mutate.tooljet.io",
                "tooljetapps",
                &["CREATE", "UPDATE"],
                "has(object.spec.release) && (request.operation == 'CREATE' || !has(oldObject.spec.release) || \
                 object.spec.release.version != oldObject.spec.release.version)",
            ),
        ]),
    }
}

/// `object.spec.<field>` equals `oldObject.spec.<field>`, absent counting as a value.
fn unchanged(field: &str) -> String {
    format!(
        "(has(object.spec.{field}) == has(oldObject.spec.{field}) && \
         (!has(object.spec.{field}) || object.spec.{field} == oldObject.spec.{field}))"
    )
}

/// The stage rules that need no other object, for the default pipeline's later stages
/// (`staging`, `production`): no create, edit, rename or delete there. A second line of defence:
/// it holds while the webhook is down or its configuration deleted.
pub fn policy() -> (ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding) {
    let later = "['staging', 'production']";
    let frozen = [
        "definition",
        "description",
        "requires",
        "versionName",
        "app",
    ]
    .map(unchanged)
    .join(" && ");
    let validations = vec![
        Validation {
            expression: format!("request.operation != 'CREATE' || !(object.spec.environment in {later})"),
            message_expression: Some(
                "'AppVersion ' + object.metadata.name + ' cannot be created in ' + object.spec.environment + \
                 ': versions are created only in development; create it in development and promote it'"
                    .into(),
            ),
            reason: Some("Forbidden".into()),
            ..Default::default()
        },
        Validation {
            expression: format!("request.operation != 'UPDATE' || !(oldObject.spec.environment in {later}) || ({frozen})"),
            // The same words as the webhook's denial, naming the first changed field.
            message_expression: Some(format!(
                "'AppVersion ' + object.metadata.name + ' is in ' + oldObject.spec.environment + ': ' + \
                 (!{d} ? 'edits (spec.definition) are' : !{s} ? 'edits (spec.description) are' : \
                 !{r} ? 'edits (spec.requires) are' : !{n} ? 'renames (spec.versionName) are' : 'changes of spec.app are') + \
                 ' only allowed in development; create a new version in development'",
                d = unchanged("definition"),
                s = unchanged("description"),
                r = unchanged("requires"),
                n = unchanged("versionName"),
            )),
            reason: Some("Forbidden".into()),
            ..Default::default()
        },
        Validation {
            expression: format!(
                "request.operation != 'DELETE' || !(oldObject.spec.environment in {later}) || \
                 has(namespaceObject.metadata.deletionTimestamp)"
            ),
            message_expression: Some(
                "'AppVersion ' + oldObject.metadata.name + ' is in ' + oldObject.spec.environment + \
                 ': deletion is only allowed in development; versions that left development are kept as the \
                 app\\'s release and rollback history (deleting the namespace removes the whole workspace)'"
                    .into(),
            ),
            reason: Some("Forbidden".into()),
            ..Default::default()
        },
    ];
    let policy = ValidatingAdmissionPolicy {
        metadata: meta(POLICY_NAME),
        spec: Some(ValidatingAdmissionPolicySpec {
            failure_policy: Some("Fail".into()),
            match_constraints: Some(
                k8s_openapi::api::admissionregistration::v1::MatchResources {
                    resource_rules: Some(vec![
                        k8s_openapi::api::admissionregistration::v1::NamedRuleWithOperations {
                            api_groups: Some(vec![GROUP.into()]),
                            api_versions: Some(vec!["*".into()]),
                            operations: Some(vec![
                                "CREATE".into(),
                                "UPDATE".into(),
                                "DELETE".into(),
                            ]),
                            resources: Some(vec!["appversions".into()]),
                            scope: Some("Namespaced".into()),
                            resource_names: None,
                        },
                    ]),
                    ..Default::default()
                },
            ),
            validations: Some(validations),
            ..Default::default()
        }),
        status: None,
    };
    let binding = ValidatingAdmissionPolicyBinding {
        metadata: meta(POLICY_NAME),
        spec: Some(ValidatingAdmissionPolicyBindingSpec {
            policy_name: Some(POLICY_NAME.into()),
            validation_actions: Some(vec!["Deny".into()]),
            ..Default::default()
        }),
    };
    (policy, binding)
}

/// Example ClusterRoles for the people who work with ToolJet apps. Bind them with RoleBindings
/// in a workspace namespace (or ClusterRoleBindings for every workspace). To let someone promote
/// only into some stages, copy `tooljet-promoter` and list the stages in `resourceNames`.
pub fn user_roles() -> Vec<k8s_openapi::api::rbac::v1::ClusterRole> {
    use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
    let rule = |resources: &[&str], verbs: &[&str]| PolicyRule {
        api_groups: Some(vec![GROUP.into()]),
        resources: Some(resources.iter().map(|r| r.to_string()).collect()),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..Default::default()
    };
    let read = ["get", "list", "watch"];
    let write = [
        "get",
        "list",
        "watch",
        "create",
        "update",
        "patch",
        "delete",
        "deletecollection",
    ];
    let role = |name: &str, rules: Vec<PolicyRule>| ClusterRole {
        metadata: meta(name),
        rules: Some(rules),
        ..Default::default()
    };
    vec![
        role(
            "tooljet-developer",
            vec![
                rule(&["appversions", "environmentconfigs"], &write),
                rule(&["tooljetapps"], &read),
            ],
        ),
        role(
            "tooljet-promoter",
            vec![
                rule(
                    &["appversions"],
                    &["get", "list", "watch", "update", "patch"],
                ),
                rule(&["tooljetapps", "environmentconfigs"], &read),
                rule(&["environments"], &["promote"]),
            ],
        ),
        role(
            "tooljet-release-manager",
            vec![
                rule(
                    &["tooljetapps"],
                    &["get", "list", "watch", "update", "patch"],
                ),
                rule(&["appversions", "environmentconfigs"], &read),
                rule(&["environments"], &["release"]),
            ],
        ),
        role(
            "tooljet-admin",
            vec![
                rule(
                    &["tooljetapps", "appversions", "environmentconfigs"],
                    &write,
                ),
                rule(&["environments"], &["promote", "release"]),
                rule(&["tooljetapps"], &["unprotect"]),
            ],
        ),
    ]
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
    let (policy, binding) = policy();
    let mut out = String::from(
        "# Generated by `cargo xtask crdgen` from src/webhook/config.rs. Do not edit.\n",
    );
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
    for role in user_roles() {
        out += &document(&role, "rbac.authorization.k8s.io/v1", "ClusterRole");
    }
    out
}
