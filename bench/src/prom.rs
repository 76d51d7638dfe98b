//! Reading the Prometheus text exposition of the apiserver and of the operator: counters summed
//! over label sets, and histograms differenced between two scrapes with their quantiles estimated
//! the way Prometheus' `histogram_quantile` does (linear inside the bucket).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub type Labels = BTreeMap<String, String>;

struct Sample {
    name: String,
    labels: Labels,
    value: f64,
}

/// One scrape of a `/metrics` endpoint.
pub struct Scrape {
    samples: Vec<Sample>,
}

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(parse_line)
            .collect();
        Scrape { samples }
    }

    /// Whether any sample of the family `name` is present.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }

    /// The sum of the samples named `name` whose labels `keep` accepts.
    pub fn sum(&self, name: &str, keep: impl Fn(&Labels) -> bool) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name && keep(&s.labels))
            .map(|s| s.value)
            .sum()
    }

    /// The samples named `name` whose labels `keep` accepts, by label set.
    pub fn series(&self, name: &str, keep: impl Fn(&Labels) -> bool) -> Vec<(Labels, f64)> {
        self.samples
            .iter()
            .filter(|s| s.name == name && keep(&s.labels))
            .map(|s| (s.labels.clone(), s.value))
            .collect()
    }

    /// Every histogram of the family `base` (`<base>_bucket`, `_count`, `_sum`) whose labels
    /// (without `le`) `keep` accepts, by label set.
    pub fn histograms(
        &self,
        base: &str,
        keep: impl Fn(&Labels) -> bool,
    ) -> BTreeMap<Labels, Histogram> {
        let (bucket, count, sum) = (
            format!("{base}_bucket"),
            format!("{base}_count"),
            format!("{base}_sum"),
        );
        let mut out: BTreeMap<Labels, Histogram> = BTreeMap::new();
        for s in &self.samples {
            let mut labels = s.labels.clone();
            let le = labels.remove("le");
            if !keep(&labels) {
                continue;
            }
            if s.name == bucket {
                let Some(le) = le.and_then(|le| parse_value(&le)) else {
                    continue;
                };
                out.entry(labels).or_default().buckets.push((le, s.value));
            } else if s.name == count {
                out.entry(labels).or_default().count = s.value;
            } else if s.name == sum {
                out.entry(labels).or_default().sum = s.value;
            }
        }
        for h in out.values_mut() {
            h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        out
    }
}

fn parse_value(v: &str) -> Option<f64> {
    match v {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        v => v.parse().ok(),
    }
}

/// `name{a="x",b="y"} value [timestamp]`; label values may hold escaped quotes.
fn parse_line(line: &str) -> Option<Sample> {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => return None,
    };
    let mut labels = Labels::new();
    let rest = if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let mut end = None;
        loop {
            // Label name up to '='.
            let mut key = String::new();
            for (i, c) in chars.by_ref() {
                match c {
                    '=' => break,
                    '}' => {
                        end = Some(i);
                        break;
                    }
                    ',' | ' ' => {}
                    c => key.push(c),
                }
            }
            if end.is_some() {
                break;
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return None;
            }
            let mut value = String::new();
            while let Some((_, c)) = chars.next() {
                match c {
                    '\\' => match chars.next().map(|(_, c)| c) {
                        Some('n') => value.push('\n'),
                        Some(c) => value.push(c),
                        None => return None,
                    },
                    '"' => break,
                    c => value.push(c),
                }
            }
            labels.insert(key, value);
        }
        &body[end? + 1..]
    } else {
        rest
    };
    let value = parse_value(rest.split_whitespace().next()?)?;
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// A cumulative histogram: `(le, count of observations <= le)`, ascending, ending with `+Inf`.
#[derive(Clone, Debug, Default)]
pub struct Histogram {
    pub buckets: Vec<(f64, f64)>,
    pub count: f64,
    pub sum: f64,
}

/// A quantile estimated from histogram buckets: linear inside the bucket that holds it, and the
/// bucket's bounds, which are all the histogram really knows.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Quantile {
    pub estimate_ms: f64,
    pub bucket_lower_ms: f64,
    /// `None` for the `+Inf` bucket.
    pub bucket_upper_ms: Option<f64>,
}

impl Histogram {
    /// The observations made between `before` and `self` (two scrapes of one series).
    pub fn minus(&self, before: &Histogram) -> Histogram {
        self.combine(before, -1.0)
    }

    /// Two series' observations together (same buckets).
    pub fn plus(&self, other: &Histogram) -> Histogram {
        self.combine(other, 1.0)
    }

    /// `self + sign * other`, bucket by bucket (a bucket `other` lacks counts as 0).
    fn combine(&self, other: &Histogram, sign: f64) -> Histogram {
        let theirs = |le: f64| {
            other
                .buckets
                .iter()
                .find(|(l, _)| *l == le)
                .map(|(_, c)| *c)
                .unwrap_or(0.0)
        };
        Histogram {
            buckets: self
                .buckets
                .iter()
                .map(|(le, c)| (*le, c + sign * theirs(*le)))
                .collect(),
            count: self.count + sign * other.count,
            sum: self.sum + sign * other.sum,
        }
    }

    pub fn mean_ms(&self) -> Option<f64> {
        (self.count > 0.0).then(|| self.sum / self.count * 1000.0)
    }

    /// The `q`-quantile, as Prometheus' `histogram_quantile` estimates it; `None` without
    /// observations.
    pub fn quantile(&self, q: f64) -> Option<Quantile> {
        let total = self.buckets.last().map(|(_, c)| *c).unwrap_or(0.0);
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut lower = (0.0, 0.0);
        for &(le, cumulative) in &self.buckets {
            if cumulative >= rank {
                if le.is_infinite() {
                    return Some(Quantile {
                        estimate_ms: lower.0 * 1000.0,
                        bucket_lower_ms: lower.0 * 1000.0,
                        bucket_upper_ms: None,
                    });
                }
                let inside = cumulative - lower.1;
                let fraction = if inside > 0.0 {
                    (rank - lower.1) / inside
                } else {
                    1.0
                };
                return Some(Quantile {
                    estimate_ms: (lower.0 + (le - lower.0) * fraction) * 1000.0,
                    bucket_lower_ms: lower.0 * 1000.0,
                    bucket_upper_ms: Some(le * 1000.0),
                });
            }
            lower = (le, cumulative);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP x_seconds A histogram.
# TYPE x_seconds histogram
x_seconds_bucket{name="a.b",operation="UPDATE",le="0.005"} 10
x_seconds_bucket{name="a.b",operation="UPDATE",le="0.025"} 20
x_seconds_bucket{name="a.b",operation="UPDATE",le="+Inf"} 20
x_seconds_count{name="a.b",operation="UPDATE"} 20
x_seconds_sum{name="a.b",operation="UPDATE"} 0.2
requests_total{verb="APPLY",resource="secrets",note="say \"hi\", ok"} 7
requests_total{verb="POST",resource="secrets"} 3
plain 1.5
"#;

    #[test]
    fn counters_are_summed_over_the_label_sets_kept() {
        let s = Scrape::parse(TEXT);
        assert_eq!(s.sum("requests_total", |_| true), 10.0);
        assert_eq!(s.sum("requests_total", |l| l["verb"] == "APPLY"), 7.0);
        assert_eq!(
            s.series("requests_total", |l| l["verb"] == "APPLY")[0].0["note"],
            "say \"hi\", ok"
        );
        assert_eq!(s.sum("plain", |_| true), 1.5);
        assert!(!s.has("absent"));
    }

    #[test]
    fn histogram_quantiles_interpolate_inside_the_bucket() {
        let s = Scrape::parse(TEXT);
        let all = s.histograms("x_seconds", |_| true);
        let h = &all.values().next().unwrap();
        assert_eq!(h.count, 20.0);
        let p50 = h.quantile(0.5).unwrap();
        assert_eq!((p50.estimate_ms, p50.bucket_upper_ms), (5.0, Some(5.0)));
        let p99 = h.quantile(0.99).unwrap();
        assert!((p99.estimate_ms - 24.6).abs() < 1e-9, "{p99:?}");
        assert_eq!(p99.bucket_lower_ms, 5.0);
        let none = h.minus(h);
        assert_eq!(none.quantile(0.5), None);
        assert_eq!(none.count, 0.0);
    }
}
