//! The environment a container starts with, computed as the kubelet computes it (pure: a
//! container spec and the data of the Secrets and ConfigMaps it reads in, the variables out).
//!
//! Kubernetes' rules (docs: "Define Environment Variables for a Container", "Configure a Pod to
//! Use a ConfigMap", the `EnvFromSource` and `EnvVar` API reference; kubelet
//! `makeEnvironmentVariables`):
//! - `envFrom` sources are read in order; a key defined by several sources takes the value of the
//!   last one. Each key is prefixed with the source's `prefix`.
//! - `env` entries come after every `envFrom` source, in order: an `env` entry wins over an
//!   `envFrom` key of the same name, and a later `env` entry over an earlier one.
//! - `$(NAME)` in an `env` value expands to a variable defined before it (`$$` is a literal `$`);
//!   an undefined reference stays as written.
//! - A missing source, or a missing key of `valueFrom`, is skipped when `optional: true`; when
//!   not optional the container does not start (`CreateContainerConfigError`).
//! - A key that is not a valid variable name is skipped. With `RelaxedEnvironmentVariableValidation`
//!   (KEP-4369: beta and on by default from Kubernetes 1.32, stable in 1.34) a name is valid when
//!   it is printable ASCII other than `=`; before, it had to match `[-._a-zA-Z][-._a-zA-Z0-9]*`
//!   ([`NameRules::Strict`], [`NameRules::for_minor`]). Under either rule every key a Secret can hold that starts with a
//!   letter becomes a variable: `datasources.json` did.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, EnvFromSource, EnvVar, EnvVarSource};

/// Which names the kubelet accepts as variables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameRules {
    /// Kubernetes 1.32 and later (default gates): printable ASCII except `=`.
    Relaxed,
    /// Before 1.32 (or the feature gate off): `[-._a-zA-Z][-._a-zA-Z0-9]*`.
    Strict,
}

impl NameRules {
    /// The rules of a Kubernetes 1.`minor` apiserver with default feature gates.
    pub fn for_minor(minor: u32) -> NameRules {
        if minor >= 32 {
            NameRules::Relaxed
        } else {
            NameRules::Strict
        }
    }

    pub fn valid(self, name: &str) -> bool {
        match self {
            NameRules::Relaxed => {
                !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| (0x20..=0x7e).contains(&b) && b != b'=')
            }
            NameRules::Strict => {
                let mut bytes = name.bytes();
                bytes
                    .next()
                    .is_some_and(|b| b.is_ascii_alphabetic() || b == b'-' || b == b'.' || b == b'_')
                    && bytes
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
            }
        }
    }
}

/// A Secret or a ConfigMap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SourceKind {
    Secret,
    ConfigMap,
}

impl std::fmt::Display for SourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SourceKind::Secret => "Secret",
            SourceKind::ConfigMap => "ConfigMap",
        })
    }
}

/// Where a variable's value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// `envFrom[index]`, a Secret or ConfigMap of that name.
    EnvFrom {
        index: usize,
        kind: SourceKind,
        name: String,
    },
    /// `env[index]`.
    Env { index: usize },
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::EnvFrom { index, kind, name } => write!(f, "envFrom[{index}] ({kind} {name})"),
            Origin::Env { index } => write!(f, "env[{index}]"),
        }
    }
}

/// One variable of the container's environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Var {
    /// The value; `None` when only the running pod knows it (`fieldRef`, `resourceFieldRef`).
    pub value: Option<Vec<u8>>,
    pub origin: Origin,
}

/// A variable that a later definition replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shadowed {
    pub name: String,
    /// Where the value that is lost came from.
    pub lost: Origin,
    /// Where the value that wins came from.
    pub by: Origin,
    /// Whether the two values differ (`false` when either is unknown here).
    pub differs: bool,
}

/// Why something the spec names was not taken in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skipped {
    /// A source or key that is not there, marked optional.
    Optional { what: String },
    /// A key that is not a valid variable name under the rules used.
    InvalidName { name: String, origin: Origin },
}

/// The container's environment and what happened on the way.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Effective {
    pub vars: BTreeMap<String, Var>,
    pub shadowed: Vec<Shadowed>,
    pub skipped: Vec<Skipped>,
    /// Sources or keys that are not there and not optional: the container would not start.
    pub blocking: Vec<String>,
}

/// The Secret or ConfigMap an `envFrom` entry takes in whole: kind, name, `optional`.
fn whole_source(source: &EnvFromSource) -> Option<(SourceKind, &str, Option<bool>)> {
    match (&source.secret_ref, &source.config_map_ref) {
        (Some(s), _) => Some((SourceKind::Secret, s.name.as_str(), s.optional)),
        (None, Some(c)) => Some((SourceKind::ConfigMap, c.name.as_str(), c.optional)),
        (None, None) => None,
    }
}

/// The Secret or ConfigMap key an `env` entry takes its value from: kind, name, key, `optional`.
fn keyed_source(from: &EnvVarSource) -> Option<(SourceKind, &str, &str, Option<bool>)> {
    match (&from.secret_key_ref, &from.config_map_key_ref) {
        (Some(s), _) => Some((
            SourceKind::Secret,
            s.name.as_str(),
            s.key.as_str(),
            s.optional,
        )),
        (None, Some(c)) => Some((
            SourceKind::ConfigMap,
            c.name.as_str(),
            c.key.as_str(),
            c.optional,
        )),
        _ => None,
    }
}

/// Every Secret and ConfigMap `container`'s environment reads (the ones [`container_env`]'s
/// `data` is asked for), in order, possibly repeated.
pub fn sources(container: &Container) -> impl Iterator<Item = (SourceKind, &str)> {
    let whole = container
        .env_from
        .iter()
        .flatten()
        .filter_map(|f| whole_source(f).map(|(kind, name, _)| (kind, name)));
    let keyed =
        container.env.iter().flatten().filter_map(|e| {
            keyed_source(e.value_from.as_ref()?).map(|(kind, name, ..)| (kind, name))
        });
    whole.chain(keyed)
}

/// The environment `container` starts with. `data(kind, name)` gives a Secret's or ConfigMap's
/// data (`None`: it does not exist).
pub fn container_env<'a>(
    container: &Container,
    rules: NameRules,
    data: impl Fn(SourceKind, &str) -> Option<&'a BTreeMap<String, Vec<u8>>>,
) -> Effective {
    let mut kubelet = Kubelet {
        rules,
        data,
        out: Effective::default(),
    };
    for (index, source) in container.env_from.iter().flatten().enumerate() {
        kubelet.take_env_from(index, source);
    }
    for (index, entry) in container.env.iter().flatten().enumerate() {
        kubelet.take_env(index, entry);
    }
    kubelet.out
}

/// [`container_env`] at work: the name rules, where Secret and ConfigMap data come from, and the
/// environment so far.
struct Kubelet<F> {
    rules: NameRules,
    data: F,
    out: Effective,
}

impl<'a, F> Kubelet<F>
where
    F: Fn(SourceKind, &str) -> Option<&'a BTreeMap<String, Vec<u8>>>,
{
    /// `envFrom[index]`: every key of its Secret or ConfigMap, prefixed.
    fn take_env_from(&mut self, index: usize, source: &EnvFromSource) {
        let Some((kind, name, optional)) = whole_source(source) else {
            return;
        };
        let optional = optional == Some(true);
        let Some(entries) = (self.data)(kind, name) else {
            let what = format!("envFrom[{index}]: {kind} {name} does not exist");
            self.missing(what, optional);
            return;
        };
        let prefix = source.prefix.as_deref().unwrap_or_default();
        for (key, value) in entries {
            let var_name = format!("{prefix}{key}");
            let origin = Origin::EnvFrom {
                index,
                kind,
                name: name.to_string(),
            };
            let value = Some(value.clone());
            self.define(var_name, Var { value, origin });
        }
    }

    /// `env[index]`: a value (with `$(NAME)` expanded from the variables defined so far), a key of
    /// a Secret or ConfigMap, or a value only the running pod knows.
    fn take_env(&mut self, index: usize, entry: &EnvVar) {
        let origin = Origin::Env { index };
        let value = if let Some(from) = &entry.value_from {
            match keyed_source(from) {
                Some((kind, name, key, optional)) => {
                    match (self.data)(kind, name).and_then(|d| d.get(key)) {
                        Some(v) => Some(v.clone()),
                        None => {
                            let what =
                                format!("env[{index}] {}: key {key} of {kind} {name}", entry.name);
                            self.missing(what, optional == Some(true));
                            return;
                        }
                    }
                }
                // fieldRef, resourceFieldRef, fileKeyRef: known to the running pod only.
                None => None,
            }
        } else {
            Some(expand(entry.value.as_deref().unwrap_or_default(), &self.out.vars).into_bytes())
        };
        self.define(entry.name.clone(), Var { value, origin });
    }

    /// A source or key that is not there: skipped when optional, else the container does not start.
    fn missing(&mut self, what: String, optional: bool) {
        if optional {
            self.out.skipped.push(Skipped::Optional { what });
        } else {
            self.out.blocking.push(what);
        }
    }

    /// Defines variable `name` as `var`, replacing (and recording) an earlier definition; a name
    /// that is invalid under the rules is skipped.
    fn define(&mut self, name: String, var: Var) {
        if !self.rules.valid(&name) {
            self.out.skipped.push(Skipped::InvalidName {
                name,
                origin: var.origin,
            });
            return;
        }
        if let Some(old) = self.out.vars.get(&name) {
            let differs = match (&old.value, &var.value) {
                (Some(a), Some(b)) => a != b,
                _ => false,
            };
            self.out.shadowed.push(Shadowed {
                name: name.clone(),
                lost: old.origin.clone(),
                by: var.origin.clone(),
                differs,
            });
        }
        self.out.vars.insert(name, var);
    }
}

/// `$(NAME)` expanded from `defined`; `$$` is `$`; anything else is kept as written.
fn expand(text: &str, defined: &BTreeMap<String, Var>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(close) = inner.find(')')
        {
            let name = &inner[..close];
            match defined.get(name).and_then(|v| v.value.as_deref()) {
                Some(value) => out.push_str(&String::from_utf8_lossy(value)),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[close + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn container(spec: serde_json::Value) -> Container {
        let mut c = json!({ "name": "tooljet" });
        c.as_object_mut()
            .unwrap()
            .extend(spec.as_object().unwrap().clone());
        serde_json::from_value(c).unwrap()
    }

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    fn value(e: &Effective, name: &str) -> Option<String> {
        e.vars
            .get(name)
            .and_then(|v| v.value.clone())
            .map(|v| String::from_utf8(v).unwrap())
    }

    #[test]
    fn a_later_env_from_source_wins_and_env_wins_over_all() {
        let app = data(&[("LOG_LEVEL", "warn"), ("A", "app")]);
        let ws = data(&[("LOG_LEVEL", "info"), ("B", "ws")]);
        let c = container(json!({
            "envFrom": [{"secretRef": {"name": "app"}}, {"secretRef": {"name": "ws"}}],
            "env": [{"name": "B", "value": "env"}],
        }));
        let e = container_env(&c, NameRules::Relaxed, |_, n| match n {
            "app" => Some(&app),
            "ws" => Some(&ws),
            _ => None,
        });
        // The listing order of the shipped example made the workspace value win.
        assert_eq!(value(&e, "LOG_LEVEL").as_deref(), Some("info"));
        assert_eq!(value(&e, "A").as_deref(), Some("app"));
        assert_eq!(value(&e, "B").as_deref(), Some("env"));
        assert_eq!(
            e.shadowed
                .iter()
                .map(|s| (
                    s.name.as_str(),
                    s.lost.to_string(),
                    s.by.to_string(),
                    s.differs
                ))
                .collect::<Vec<_>>(),
            vec![
                (
                    "LOG_LEVEL",
                    "envFrom[0] (Secret app)".to_string(),
                    "envFrom[1] (Secret ws)".to_string(),
                    true
                ),
                (
                    "B",
                    "envFrom[1] (Secret ws)".to_string(),
                    "env[0]".to_string(),
                    true
                ),
            ]
        );
    }

    #[test]
    fn prefixes_optional_sources_and_missing_keys() {
        let cm = data(&[("X", "1")]);
        let c = container(json!({
            "envFrom": [
                {"configMapRef": {"name": "cm"}, "prefix": "P_"},
                {"secretRef": {"name": "gone", "optional": true}},
                {"secretRef": {"name": "needed"}},
            ],
            "env": [
                {"name": "K", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k", "optional": true}}},
                {"name": "L", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "nope"}}},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            ],
        }));
        let e = container_env(&c, NameRules::Relaxed, |k, n| {
            (k == SourceKind::ConfigMap && n == "cm").then_some(&cm)
        });
        assert_eq!(value(&e, "P_X").as_deref(), Some("1"));
        assert!(!e.vars.contains_key("X"));
        assert!(!e.vars.contains_key("K"));
        assert_eq!(e.vars["POD"].value, None);
        assert_eq!(
            e.blocking,
            vec![
                "envFrom[2]: Secret needed does not exist".to_string(),
                "env[1] L: key nope of ConfigMap cm".to_string()
            ]
        );
        assert_eq!(e.skipped.len(), 2);
    }

    #[test]
    fn names_are_judged_by_the_clusters_rules() {
        let s = data(&[("datasources.json", "{}"), ("1ST", "x"), ("OK_NAME", "y")]);
        let c = container(json!({"envFrom": [{"secretRef": {"name": "s"}}]}));
        let relaxed = container_env(&c, NameRules::Relaxed, |_, _| Some(&s));
        // Kubernetes 1.32+ takes a Secret's every key in: datasources.json becomes a variable.
        assert_eq!(relaxed.vars.len(), 3);
        let strict = container_env(&c, NameRules::Strict, |_, _| Some(&s));
        assert_eq!(
            strict.vars.keys().collect::<Vec<_>>(),
            vec!["OK_NAME", "datasources.json"]
        );
        assert!(!NameRules::Relaxed.valid("A=B"));
        assert!(!NameRules::Relaxed.valid(""));
        assert!(!NameRules::Relaxed.valid("tab\there"));
    }

    #[test]
    fn env_values_expand_earlier_variables() {
        let s = data(&[("HOST", "db")]);
        let c = container(json!({
            "envFrom": [{"secretRef": {"name": "s"}}],
            "env": [
                {"name": "URL", "value": "pg://$(HOST):5432/$(LATER) $$(HOST) $5"},
                {"name": "LATER", "value": "x"},
            ],
        }));
        let e = container_env(&c, NameRules::Relaxed, |_, _| Some(&s));
        assert_eq!(
            value(&e, "URL").as_deref(),
            Some("pg://db:5432/$(LATER) $(HOST) $5")
        );
    }
}
