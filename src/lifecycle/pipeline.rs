//! An app's stages, in order: which is first (where versions are made), which is last (what may
//! be released), what comes next, and whether a change of stage is a promotion.

use crate::api::ToolJetApp;

/// An app's pipeline: its stages (`spec.environments`), in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pipeline<'a>(&'a [String]);

/// What a change of a version's stage from one stage to another is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Move<'a> {
    /// To the next stage: a promotion.
    Forward,
    /// To an earlier stage (or the same one).
    Backward,
    /// Past the next stage, which is `next`.
    Skips { next: &'a str },
    /// `stage` (the one left, or the one entered) is not a stage of the pipeline.
    Unknown { stage: &'a str },
}

/// Whether a version may be an app's release ([`Pipeline::release_check`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseCheck<'a> {
    Releasable,
    /// Not a version of this app (in this namespace).
    NotAVersion,
    /// A version of this app, in `stage`, which is not the last.
    NotInLastStage {
        stage: &'a str,
    },
}

impl<'a> Pipeline<'a> {
    pub fn new(stages: &'a [String]) -> Pipeline<'a> {
        Pipeline(stages)
    }

    /// `app`'s pipeline.
    pub fn of(app: &'a ToolJetApp) -> Pipeline<'a> {
        Pipeline(&app.spec.environments)
    }

    /// The stage where versions are created and edited.
    pub fn first(self) -> &'a str {
        self.0.first().map(String::as_str).unwrap_or_default()
    }

    /// The stage whose versions may be released.
    pub fn last(self) -> &'a str {
        self.0.last().map(String::as_str).unwrap_or_default()
    }

    /// Where `stage` is (`None`: not a stage of the pipeline).
    pub fn index(self, stage: &str) -> Option<usize> {
        self.0.iter().position(|s| s == stage)
    }

    pub fn contains(self, stage: &str) -> bool {
        self.index(stage).is_some()
    }

    /// The stage after `stage` (`None`: `stage` is the last, or not in the pipeline).
    pub fn next(self, stage: &str) -> Option<&'a str> {
        self.0.get(self.index(stage)? + 1).map(String::as_str)
    }

    /// What moving a version from stage `from` to stage `to` is.
    pub fn step<'s>(self, from: &'s str, to: &'s str) -> Move<'s>
    where
        'a: 's,
    {
        let (Some(i), Some(j)) = (self.index(from), self.index(to)) else {
            let stage = if self.contains(to) { from } else { to };
            return Move::Unknown { stage };
        };
        match j {
            j if j <= i => Move::Backward,
            j if j == i + 1 => Move::Forward,
            _ => Move::Skips {
                next: self.0[i + 1].as_str(),
            },
        }
    }

    /// Whether a version in `stage` may be released (`None`: no such version of this app).
    pub fn release_check<'v>(self, stage: Option<&'v str>) -> ReleaseCheck<'v> {
        match stage {
            None => ReleaseCheck::NotAVersion,
            Some(stage) if stage != self.last() => ReleaseCheck::NotInLastStage { stage },
            Some(_) => ReleaseCheck::Releasable,
        }
    }
}

/// `a -> b -> c`, as messages show a pipeline.
impl std::fmt::Display for Pipeline<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(" -> "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stages(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn stages_are_found_in_order() {
        let s = stages(&["dev", "qa", "uat", "prod"]);
        let p = Pipeline::new(&s);
        assert_eq!((p.first(), p.last()), ("dev", "prod"));
        assert_eq!(p.next("qa"), Some("uat"));
        assert_eq!(p.next("prod"), None);
        assert_eq!(p.next("staging"), None);
        assert_eq!(p.index("uat"), Some(2));
        assert_eq!(p.to_string(), "dev -> qa -> uat -> prod");
        let empty = Pipeline::new(&[]);
        assert_eq!(
            (empty.first(), empty.last(), empty.next("")),
            ("", "", None)
        );
    }

    #[test]
    fn only_one_stage_forward_is_a_promotion() {
        let s = stages(&["dev", "qa", "uat", "prod"]);
        let p = Pipeline::new(&s);
        assert_eq!(p.step("dev", "qa"), Move::Forward);
        assert_eq!(p.step("uat", "prod"), Move::Forward);
        assert_eq!(p.step("qa", "dev"), Move::Backward);
        assert_eq!(p.step("qa", "qa"), Move::Backward);
        assert_eq!(p.step("dev", "uat"), Move::Skips { next: "qa" });
        assert_eq!(p.step("dev", "staging"), Move::Unknown { stage: "staging" });
        assert_eq!(p.step("staging", "qa"), Move::Unknown { stage: "staging" });
    }

    #[test]
    fn only_a_version_in_the_last_stage_is_releasable() {
        let s = stages(&["dev", "prod"]);
        let p = Pipeline::new(&s);
        assert_eq!(p.release_check(Some("prod")), ReleaseCheck::Releasable);
        assert_eq!(
            p.release_check(Some("dev")),
            ReleaseCheck::NotInLastStage { stage: "dev" }
        );
        assert_eq!(p.release_check(None), ReleaseCheck::NotAVersion);
    }
}
