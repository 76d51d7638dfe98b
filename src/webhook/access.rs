//! Whether a requester holds an access: a SubjectAccessReview asked of the apiserver, with the
//! answers that allowed remembered for a short time.
//!
//! A burst of requests by one user (a pipeline promoting fifty apps) so asks once per access and
//! TTL instead of once per request. Only answers that allowed are remembered: a denial is asked
//! again every time, so a grant takes effect at once. The price is that a revoked grant keeps
//! allowing for up to the TTL (`--access-review-ttl`; `0s` asks every time). The kube-apiserver's
//! own webhook authorizer makes the same trade, for 5 minutes by default.
//!
//! An answer is remembered for exactly the user (name, uid, groups and extra) and the access
//! (namespace, group, resource, verb, name) it was asked for; the key is the whole of both, never
//! a hash of them, so two requests can share an answer only when the apiserver would be asked the
//! very same question.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    authentication::v1::UserInfo,
    authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
};
use kube::{Api, Client, api::PostParams};

use super::vocabulary::Access;
use crate::metrics::{AccessAnswer, Metrics};

/// The TTL when none is given.
pub const DEFAULT_TTL: Duration = Duration::from_secs(5);

/// Answers remembered at most; at the bound the expired ones go, then all of them. Each is a
/// user's name, groups and an access: a few hundred bytes.
pub const MAX_REMEMBERED: usize = 4096;

/// The question a SubjectAccessReview asks.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Question {
    username: Option<String>,
    uid: Option<String>,
    groups: Option<Vec<String>>,
    extra: Option<BTreeMap<String, Vec<String>>>,
    namespace: String,
    access: Access,
}

impl Question {
    fn new(user: &UserInfo, namespace: &str, access: &Access) -> Question {
        Question {
            username: user.username.clone(),
            uid: user.uid.clone(),
            groups: user.groups.clone(),
            extra: user.extra.clone(),
            namespace: namespace.to_string(),
            access: access.clone(),
        }
    }

    fn review(&self) -> SubjectAccessReview {
        SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: self.username.clone(),
                uid: self.uid.clone(),
                groups: self.groups.clone(),
                extra: self.extra.clone(),
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(self.namespace.clone()),
                    group: Some(self.access.group.to_string()),
                    resource: Some(self.access.resource.to_string()),
                    verb: Some(self.access.verb.to_string()),
                    name: self.access.name.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        }
    }
}

/// Answers that allowed, by question, with when they were given.
#[derive(Debug)]
pub struct Allowed {
    ttl: Duration,
    answers: Mutex<HashMap<Question, Instant>>,
}

impl Allowed {
    pub fn new(ttl: Duration) -> Allowed {
        Allowed {
            ttl,
            answers: Mutex::default(),
        }
    }

    /// Whether `question` was allowed less than the TTL before `now`.
    fn recalls(&self, question: &Question, now: Instant) -> bool {
        let answers = self.answers.lock().expect("access answers lock");
        answers
            .get(question)
            .is_some_and(|given| now.saturating_duration_since(*given) < self.ttl)
    }

    /// Remembers that `question` was allowed at `given`.
    fn remember(&self, question: Question, given: Instant) {
        if self.ttl.is_zero() {
            return;
        }
        let mut answers = self.answers.lock().expect("access answers lock");
        if answers.len() >= MAX_REMEMBERED && !answers.contains_key(&question) {
            let ttl = self.ttl;
            answers.retain(|_, at| given.saturating_duration_since(*at) < ttl);
            if answers.len() >= MAX_REMEMBERED {
                answers.clear();
            }
        }
        answers.insert(question, given);
    }
}

/// Whether `user` holds `access` in `namespace`: remembered, or asked of the apiserver.
pub async fn holds(
    client: &Client,
    allowed: &Allowed,
    metrics: &Metrics,
    user: &UserInfo,
    namespace: &str,
    access: &Access,
) -> Result<bool, String> {
    let question = Question::new(user, namespace, access);
    if allowed.recalls(&question, Instant::now()) {
        metrics.access_review(AccessAnswer::Remembered);
        return Ok(true);
    }
    // The time the question was asked, not answered: the TTL runs from before the apiserver
    // looked at its grants.
    let asked = Instant::now();
    let api: Api<SubjectAccessReview> = Api::all(client.clone());
    let answer = api
        .create(&PostParams::default(), &question.review())
        .await
        .map_err(|e| {
            format!(
                "could not check whether the requester holds {}: {e}",
                access.describe()
            )
        })?;
    let yes = answer.status.is_some_and(|s| s.allowed);
    metrics.access_review(if yes {
        AccessAnswer::Allowed
    } else {
        AccessAnswer::Denied
    });
    if yes {
        allowed.remember(question, asked);
    }
    Ok(yes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo {
            username: Some(name.into()),
            groups: Some(groups.iter().map(|g| g.to_string()).collect()),
            ..Default::default()
        }
    }

    fn promote(stage: &str) -> Access {
        Access::environment("promote", stage)
    }

    #[test]
    fn an_answer_is_recalled_for_the_same_question_within_the_ttl_only() {
        let allowed = Allowed::new(Duration::from_secs(5));
        let t0 = Instant::now();
        let alice = user("alice", &["team"]);
        let q = Question::new(&alice, "ns", &promote("staging"));
        assert!(!allowed.recalls(&q, t0));
        allowed.remember(q.clone(), t0);
        assert!(allowed.recalls(&q, t0 + Duration::from_secs(4)));
        assert!(!allowed.recalls(&q, t0 + Duration::from_secs(5)));

        // Any difference in the user or the access is another question.
        let others = [
            Question::new(&user("bob", &["team"]), "ns", &promote("staging")),
            Question::new(&user("alice", &["team", "x"]), "ns", &promote("staging")),
            Question::new(&user("alice", &[]), "ns", &promote("staging")),
            Question::new(&alice, "other", &promote("staging")),
            Question::new(&alice, "ns", &promote("production")),
            Question::new(&alice, "ns", &Access::environment("release", "staging")),
            Question::new(
                &UserInfo {
                    uid: Some("1".into()),
                    ..alice.clone()
                },
                "ns",
                &promote("staging"),
            ),
            Question::new(
                &UserInfo {
                    extra: Some(BTreeMap::from([("scopes".into(), vec!["a".into()])])),
                    ..alice.clone()
                },
                "ns",
                &promote("staging"),
            ),
        ];
        for other in others {
            assert!(!allowed.recalls(&other, t0), "{other:?}");
        }
    }

    #[test]
    fn a_zero_ttl_remembers_nothing() {
        let allowed = Allowed::new(Duration::ZERO);
        let t0 = Instant::now();
        let q = Question::new(&user("alice", &[]), "ns", &promote("staging"));
        allowed.remember(q.clone(), t0);
        assert!(!allowed.recalls(&q, t0));
        assert!(allowed.answers.lock().unwrap().is_empty());
    }

    #[test]
    fn the_memory_is_bounded() {
        let allowed = Allowed::new(Duration::from_secs(5));
        let t0 = Instant::now();
        let q = |i: usize| Question::new(&user(&format!("u{i}"), &[]), "ns", &promote("staging"));
        for i in 0..MAX_REMEMBERED {
            allowed.remember(q(i), t0);
        }
        assert_eq!(allowed.answers.lock().unwrap().len(), MAX_REMEMBERED);
        // Full of live answers: they all go, and the new one stays.
        allowed.remember(q(MAX_REMEMBERED), t0 + Duration::from_secs(1));
        assert_eq!(allowed.answers.lock().unwrap().len(), 1);
        assert!(allowed.recalls(&q(MAX_REMEMBERED), t0 + Duration::from_secs(1)));

        // Full with expired answers among them: only the expired ones go.
        for i in 0..MAX_REMEMBERED - 1 {
            allowed.remember(q(i), t0 + Duration::from_secs(2));
        }
        allowed.remember(q(MAX_REMEMBERED + 1), t0 + Duration::from_secs(6));
        let answers = allowed.answers.lock().unwrap();
        assert_eq!(answers.len(), MAX_REMEMBERED);
        assert!(!answers.contains_key(&q(MAX_REMEMBERED)));
    }
}
