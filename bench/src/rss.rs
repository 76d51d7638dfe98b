//! The resident memory (VmRSS) of processes, sampled every 250 ms on a thread of its own for
//! as long as the sampler lives, and summarised per phase: the peak and the median of the samples
//! taken between two instants.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

pub const PERIOD: Duration = Duration::from_millis(250);

/// One process's memory over a phase.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct PhaseRss {
    pub peak_mib: f64,
    pub median_mib: f64,
    pub samples: usize,
}

struct Sample {
    at: Instant,
    name: &'static str,
    kib: u64,
}

/// Samples the processes it is told about, by name.
pub struct Sampler {
    pids: Arc<Mutex<BTreeMap<&'static str, u32>>>,
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS:`, `VmHWM:`); `None` when unreadable.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

impl Sampler {
    pub fn start() -> Sampler {
        let sampler = Sampler {
            pids: Arc::default(),
            samples: Arc::default(),
            stop: Arc::default(),
        };
        let (pids, samples, stop) = (
            sampler.pids.clone(),
            sampler.samples.clone(),
            sampler.stop.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let now = Instant::now();
                let watched: Vec<(&'static str, u32)> = pids
                    .lock()
                    .expect("lock")
                    .iter()
                    .map(|(n, p)| (*n, *p))
                    .collect();
                let taken: Vec<Sample> = watched
                    .into_iter()
                    .filter_map(|(name, pid)| {
                        Some(Sample {
                            at: now,
                            name,
                            kib: rss_kib(pid)?,
                        })
                    })
                    .collect();
                samples.lock().expect("lock").extend(taken);
                std::thread::sleep(PERIOD);
            }
        });
        sampler
    }

    /// From now on, `name` is the process `pid` (a restarted replica replaces the old one).
    pub fn watch(&self, name: &'static str, pid: u32) {
        self.pids.lock().expect("lock").insert(name, pid);
    }

    /// The peak (MiB) of `name` since `from`: its samples and a reading now.
    pub fn peak_since(&self, name: &str, from: Instant) -> f64 {
        let now = self
            .pids
            .lock()
            .expect("lock")
            .get(name)
            .and_then(|pid| rss_kib(*pid))
            .map_or(0.0, |k| k as f64 / 1024.0);
        let sampled = self.phase(name, from, Instant::now()).peak_mib;
        if sampled.is_nan() {
            now
        } else {
            sampled.max(now)
        }
    }

    /// Peak and median of `name`'s samples between `from` and `to`.
    pub fn phase(&self, name: &str, from: Instant, to: Instant) -> PhaseRss {
        let mut kib: Vec<u64> = self
            .samples
            .lock()
            .expect("lock")
            .iter()
            .filter(|s| s.name == name && s.at >= from && s.at <= to)
            .map(|s| s.kib)
            .collect();
        kib.sort_unstable();
        let mib = |k: u64| k as f64 / 1024.0;
        PhaseRss {
            peak_mib: kib.last().copied().map(mib).unwrap_or(f64::NAN),
            median_mib: if kib.is_empty() {
                f64::NAN
            } else {
                mib(kib[kib.len() / 2])
            },
            samples: kib.len(),
        }
    }
}

/// The median and range of some figures (NaN ignored).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Spread {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Spread {
        let mut v: Vec<f64> = values.into_iter().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return Spread {
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
                n: 0,
            };
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Spread {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        }
    }

    /// `median (min-max)` with `decimals` decimals.
    pub fn show(&self, decimals: usize) -> String {
        if self.n <= 1 {
            return format!("{:.*}", decimals, self.median);
        }
        format!(
            "{:.*} ({:.*}-{:.*})",
            decimals, self.median, decimals, self.min, decimals, self.max
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spread_is_the_median_and_the_range() {
        let s = Spread::of([3.0, 1.0, 2.0, f64::NAN]);
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        assert_eq!(s.show(1), "2.0 (1.0-3.0)");
        assert_eq!(Spread::of([1.0, 2.0]).median, 1.5);
        assert!(Spread::of([]).median.is_nan());
    }
}
