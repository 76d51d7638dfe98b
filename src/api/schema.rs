//! Hand-written schema fragments for what schemars cannot express structurally: free-form JSON
//! that must survive pruning, list semantics for server-side apply, and bounded string lists that
//! CEL rules can be cost-estimated against.

use schemars::{Schema, SchemaGenerator, json_schema};

/// A free-form JSON object kept exactly as given (`x-kubernetes-preserve-unknown-fields`).
pub fn preserve_unknown_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// A map of option name to any JSON value (string, number, boolean, object, list).
pub fn plain_options(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "maxProperties": 100,
        "additionalProperties": { "x-kubernetes-preserve-unknown-fields": true },
    })
}

/// The pipeline: an ordered, atomic list of stage names.
pub fn pipeline(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "default": ["development", "staging", "production"],
        "minItems": 2,
        "maxItems": 10,
        "x-kubernetes-list-type": "atomic",
        "items": { "type": "string", "maxLength": 63 },
    })
}

/// A set of stage names (1-10).
pub fn stage_set(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "minItems": 1,
        "maxItems": 10,
        "x-kubernetes-list-type": "set",
        "items": { "type": "string", "maxLength": 63 },
    })
}

/// A set of names (data sources or constants), at most 200, each at most 100 characters.
pub fn name_set(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "maxItems": 200,
        "x-kubernetes-list-type": "set",
        "items": { "type": "string", "maxLength": 100 },
    })
}

/// A set of Deployment names.
pub fn deployment_names(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "maxItems": 50,
        "x-kubernetes-list-type": "set",
        "items": { "type": "string", "maxLength": 253 },
    })
}

/// A set of Notification event types (at most one of each).
pub fn event_types(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "maxItems": 7,
        "x-kubernetes-list-type": "set",
        "items": {
            "type": "string",
            "enum": ["ApprovalNeeded", "Approved", "Promoted", "Released", "RolledBack",
                     "FreezeStarted", "FreezeEnded"],
        },
    })
}

/// `metav1.Condition`s as a map keyed by `type`, as the API conventions ask.
pub fn conditions(generator: &mut SchemaGenerator) -> Schema {
    let item =
        generator.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>();
    json_schema!({
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": item,
    })
}
