//! The admission rule of Notifications: sending the events of apps tells whoever reads the
//! endpoint who promoted, approved and released what, so creating or changing one needs what
//! configuring those apps needs: `configure` on `tooljetapps`, namespace-wide (a selector can
//! match apps created later). Its endpoint's URL is read by the operator from a Secret, so a new
//! or changed reference needs `get` on that Secret, as an EnvironmentConfig's does. Deleting one
//! is RBAC's (`delete` on `notifications`).

use std::collections::BTreeSet;

use kube::ResourceExt;

use super::{
    metadata::{deletion_metadata_changed, deletion_metadata_rule},
    vocabulary::{Access, Facts, MALFORMED, Op, Review, Verdict, forbidden},
};
use crate::api::{Notification, SecretKeySelector};

/// Why configuring a Notification needs `configure` on the apps (the denial's words, shared with
/// the ValidatingAdmissionPolicy in [`super::config`]).
pub(super) const SENDING_EVENTS: &str = "sending the events of the apps spec.appSelector selects (who promoted, approved and \
     released what; with no selector, every app of the namespace, including apps created later)";
/// Whom to ask.
pub(super) const ASK_ADMIN: &str =
    "ask a workspace admin (e.g. tooljet-admin or tooljet-environment-admin) to create it";
/// Why referencing a Secret needs `get` on it.
pub(super) const READING_SECRET: &str = "spec.endpoint.urlFrom.secretKeyRef makes the operator read that value and send events \
     to it, which";
/// What to do instead.
pub(super) const ASK_SECRET_OWNER: &str =
    "reference a Secret you may read, or ask whoever manages that Secret to add the reference";

/// The Secret reference of a Notification.
fn secret_of(n: &Notification) -> &SecretKeySelector {
    &n.spec.endpoint.url_from.secret_key_ref
}

/// What a Notification request needs: `configure` on every app of the namespace when the spec is
/// new or changes, `get` on the endpoint's Secret when the reference is new or changes, and
/// `delete` on the Notification when its owners or finalizers change.
pub fn needed_for_notification(
    op: Op,
    old: Option<&Notification>,
    new: Option<&Notification>,
) -> Vec<Access> {
    let Some(new) = new.filter(|_| op != Op::Delete) else {
        return vec![];
    };
    let mut needed = BTreeSet::new();
    if old.is_none_or(|o| o.spec != new.spec) {
        needed.insert(Access::configure_apps());
    }
    if old.is_none_or(|o| secret_of(o) != secret_of(new)) {
        needed.insert(Access::read_secret(&secret_of(new).name));
    }
    if deletion_metadata_changed(old, Some(new)) {
        needed.insert(Access::delete("notifications", &new.name_any()));
    }
    needed.into_iter().collect()
}

/// The verdict on a Notification request.
pub fn review_notification(
    op: Op,
    old: Option<&Notification>,
    new: Option<&Notification>,
    user: &str,
    facts: &Facts,
) -> Verdict {
    let Some(r) = Review::of(old, new, user, facts) else {
        return Deny(MALFORMED.into());
    };
    let Some(new) = new.filter(|_| op != Op::Delete) else {
        return Allow;
    };
    invalid_selector(&r, new)
        .or_else(|| configuring_not_permitted(&r, op, old, new))
        .or_else(|| secret_read_not_permitted(&r, old, new))
        .or_else(|| {
            deletion_metadata_rule(
                "Notification",
                "notifications",
                old,
                Some(new),
                user,
                None,
                facts,
            )
        })
        .unwrap_or(Allow)
}

use Verdict::{Allow, Deny};

/// A selector the label machinery cannot evaluate (an unknown operator, `In` without values).
fn invalid_selector(r: &Review<Notification>, new: &Notification) -> Option<Verdict> {
    let selector = new.spec.app_selector.clone()?;
    let problem = kube::core::Selector::try_from(selector).err()?;
    Some(Deny(format!(
        "Notification {}: spec.appSelector: {problem}; use In, NotIn, Exists or DoesNotExist",
        r.name
    )))
}

/// A new or changed spec without `configure` on the namespace's apps.
fn configuring_not_permitted(
    r: &Review<Notification>,
    op: Op,
    old: Option<&Notification>,
    new: &Notification,
) -> Option<Verdict> {
    let access = Access::configure_apps();
    let changed = old.is_none_or(|o| o.spec != new.spec);
    if !changed || r.facts.may(&access) {
        return None;
    }
    let verb = if op == Op::Create { "create" } else { "change" };
    Some(forbidden(
        r.user,
        &format!("{verb} Notification {}", r.name),
        SENDING_EVENTS,
        &access,
        &r.ns,
        ASK_ADMIN,
    ))
}

/// A new or changed endpoint Secret the requester may not read.
fn secret_read_not_permitted(
    r: &Review<Notification>,
    old: Option<&Notification>,
    new: &Notification,
) -> Option<Verdict> {
    let secret = secret_of(new);
    let access = Access::read_secret(&secret.name);
    if old.is_some_and(|o| secret_of(o) == secret) || r.facts.may(&access) {
        return None;
    }
    Some(forbidden(
        r.user,
        &format!(
            "reference Secret {} (key {}) from Notification {}",
            secret.name, secret.key, r.name
        ),
        READING_SECRET,
        &access,
        &r.ns,
        ASK_SECRET_OWNER,
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;

    const USER: &str = "dave";

    fn notification(secret: &str, selector: serde_json::Value) -> Notification {
        let spec = json!({
            "appSelector": selector,
            "endpoint": { "format": "Slack", "urlFrom": { "secretKeyRef": { "name": secret, "key": "url" } } },
        });
        let mut n = Notification::new("team-chat", serde_json::from_value(spec).unwrap());
        n.metadata.namespace = Some("acme".into());
        n
    }

    fn facts(grants: &[Access]) -> Facts {
        Facts {
            granted: grants
                .iter()
                .map(|a| (a.clone(), true))
                .collect::<BTreeMap<_, _>>(),
            ..Default::default()
        }
    }

    fn denied_with(v: Verdict, needle: &str) {
        match v {
            Deny(m) => assert!(m.contains(needle), "{m:?} lacks {needle:?}"),
            Allow => panic!("allowed, expected a denial with {needle:?}"),
        }
    }

    #[test]
    fn creating_one_needs_configure_on_every_app_and_get_on_its_secret() {
        let n = notification("slack-webhook", json!({}));
        assert_eq!(
            needed_for_notification(Op::Create, None, Some(&n)),
            [
                Access::configure_apps(),
                Access::read_secret("slack-webhook")
            ]
        );
        let admin = facts(&[
            Access::configure_apps(),
            Access::read_secret("slack-webhook"),
        ]);
        assert_eq!(
            review_notification(Op::Create, None, Some(&n), USER, &admin),
            Allow
        );
        denied_with(
            review_notification(Op::Create, None, Some(&n), USER, &facts(&[])),
            "user dave may not create Notification team-chat: sending the events of the apps spec.appSelector \
             selects (who promoted, approved and released what; with no selector, every app of the namespace, \
             including apps created later) needs verb configure on every object of resource tooljetapps \
             (group tooljet.io) in namespace acme; ask a workspace admin",
        );
        denied_with(
            review_notification(
                Op::Create,
                None,
                Some(&n),
                USER,
                &facts(&[Access::configure_apps()]),
            ),
            "may not reference Secret slack-webhook (key url) from Notification team-chat: \
             spec.endpoint.urlFrom.secretKeyRef makes the operator read that value",
        );
    }

    #[test]
    fn changing_the_spec_needs_configure_and_a_new_secret_needs_get_on_it() {
        let n = notification("slack-webhook", json!({}));
        let narrowed = notification("slack-webhook", json!({ "matchLabels": { "team": "crm" } }));
        assert_eq!(
            needed_for_notification(Op::Update, Some(&n), Some(&narrowed)),
            [Access::configure_apps()]
        );
        denied_with(
            review_notification(Op::Update, Some(&n), Some(&narrowed), USER, &facts(&[])),
            "may not change Notification team-chat",
        );
        let moved = notification("other-hook", json!({}));
        assert_eq!(
            needed_for_notification(Op::Update, Some(&n), Some(&moved)),
            [Access::configure_apps(), Access::read_secret("other-hook")]
        );
        denied_with(
            review_notification(
                Op::Update,
                Some(&n),
                Some(&moved),
                USER,
                &facts(&[Access::configure_apps()]),
            ),
            "reference Secret other-hook",
        );
    }

    #[test]
    fn an_unreadable_selector_is_refused_with_its_field() {
        let bad = notification(
            "slack-webhook",
            json!({ "matchExpressions": [{ "key": "team", "operator": "Matches", "values": ["crm"] }] }),
        );
        let admin = facts(&[
            Access::configure_apps(),
            Access::read_secret("slack-webhook"),
        ]);
        denied_with(
            review_notification(Op::Create, None, Some(&bad), USER, &admin),
            "Notification team-chat: spec.appSelector: ",
        );
    }

    #[test]
    fn labels_and_deletion_are_rbacs_but_owners_need_delete() {
        let n = notification("slack-webhook", json!({}));
        let mut labelled = n.clone();
        labelled.metadata.labels = Some([("team".to_string(), "crm".to_string())].into());
        assert!(needed_for_notification(Op::Update, Some(&n), Some(&labelled)).is_empty());
        assert_eq!(
            review_notification(Op::Update, Some(&n), Some(&labelled), USER, &facts(&[])),
            Allow
        );
        assert_eq!(
            review_notification(Op::Delete, Some(&n), None, USER, &facts(&[])),
            Allow
        );
        let mut owned = n.clone();
        owned.metadata.owner_references = Some(vec![Default::default()]);
        assert_eq!(
            needed_for_notification(Op::Update, Some(&n), Some(&owned)),
            [Access::delete("notifications", "team-chat")]
        );
        denied_with(
            review_notification(Op::Update, Some(&n), Some(&owned), USER, &facts(&[])),
            "notifications",
        );
    }
}
