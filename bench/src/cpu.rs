//! CPU seconds per process and phase, read from `/proc/<pid>/stat` (utime + stime, in clock
//! ticks of `sysconf(_SC_CLK_TCK)`), so that a phase can say which process used the machine and
//! how much of it was busy.

use std::{collections::BTreeMap, time::Instant};

use serde::{Deserialize, Serialize};

/// A process whose CPU time is accounted, by the name it has in the results.
#[derive(Clone, Debug)]
pub struct Process {
    pub name: String,
    pub pid: u32,
}

/// utime + stime of `pid` (every thread), in clock ticks; `None` once it is gone.
fn ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from after the last ')',
    // where field 3 (state) starts; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The whole machine's (busy, total) ticks over every core, from the `cpu` line of `/proc/stat`:
/// busy is user + nice + system + irq + softirq + steal, total adds idle and iowait.
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let busy = v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)? + v.get(7)?;
    Some((busy, busy + v.get(3)? + v.get(4)?))
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// The CPU time of a set of processes at one instant.
pub struct Snapshot {
    at: Instant,
    ticks: BTreeMap<String, (u32, u64)>,
    machine: Option<(u64, u64)>,
}

impl Snapshot {
    pub fn take(processes: &[Process]) -> Snapshot {
        Snapshot {
            at: Instant::now(),
            ticks: processes
                .iter()
                .filter_map(|p| Some((p.name.clone(), (p.pid, ticks(p.pid)?))))
                .collect(),
            machine: machine_ticks(),
        }
    }

    /// The CPU used from `before` to this snapshot. A process that was not there before, or had
    /// another pid (the operator restarted), counts with its whole life.
    pub fn since(&self, before: &Snapshot) -> PhaseCpu {
        let per_tick = ticks_per_second();
        let seconds: BTreeMap<String, f64> = self
            .ticks
            .iter()
            .map(|(name, (pid, after))| {
                let used = match before.ticks.get(name) {
                    Some((old_pid, earlier)) if old_pid == pid => after.saturating_sub(*earlier),
                    _ => *after,
                };
                (name.clone(), used as f64 / per_tick)
            })
            .collect();
        let wall_seconds = self.at.duration_since(before.at).as_secs_f64();
        let total_seconds = seconds.values().sum();
        let machine_busy = match (before.machine, self.machine) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
                b1.saturating_sub(b0) as f64 / (t1 - t0) as f64
            }
            _ => f64::NAN,
        };
        PhaseCpu {
            wall_seconds,
            seconds,
            total_seconds,
            machine_share: total_seconds / (wall_seconds * cores() as f64).max(f64::EPSILON),
            machine_busy,
        }
    }
}

/// CPU used during one phase.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct PhaseCpu {
    pub wall_seconds: f64,
    /// CPU seconds (user + system, every thread) per process.
    pub seconds: BTreeMap<String, f64>,
    pub total_seconds: f64,
    /// `total_seconds / (wall_seconds x cores)`: 1.0 means every core was busy the whole phase
    /// with the processes measured.
    pub machine_share: f64,
    /// How busy the whole machine was (every process, ours or not), from `/proc/stat`.
    pub machine_busy: f64,
}

impl PhaseCpu {
    /// Two phases together (e.g. the blocks of one series): CPU and wall time add up, the shares
    /// are of the combined wall time.
    pub fn plus(&self, other: &PhaseCpu) -> PhaseCpu {
        let mut seconds = self.seconds.clone();
        for (name, s) in &other.seconds {
            *seconds.entry(name.clone()).or_default() += s;
        }
        let wall_seconds = self.wall_seconds + other.wall_seconds;
        let total_seconds = self.total_seconds + other.total_seconds;
        PhaseCpu {
            wall_seconds,
            seconds,
            total_seconds,
            machine_share: total_seconds / (wall_seconds * cores() as f64).max(f64::EPSILON),
            machine_busy: (self.machine_busy * self.wall_seconds
                + other.machine_busy * other.wall_seconds)
                / wall_seconds.max(f64::EPSILON),
        }
    }

    /// `operator 1.2, kube-apiserver 3.4, ... = 5.0 s: 83% of 2 cores over 3.0 s (machine busy 90%)`.
    pub fn describe(&self) -> String {
        let each: Vec<String> = self
            .seconds
            .iter()
            .map(|(name, s)| format!("{name} {s:.1}"))
            .collect();
        format!(
            "{} = {:.1} s: {:.0}% of {} cores over {:.1} s (machine busy {:.0}%)",
            each.join(", "),
            self.total_seconds,
            self.machine_share * 100.0,
            cores(),
            self.wall_seconds,
            self.machine_busy * 100.0
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_add_up_with_shares_of_their_combined_time() {
        let phase = |wall: f64, operator: f64, busy: f64| PhaseCpu {
            wall_seconds: wall,
            seconds: [("operator".to_string(), operator)].into(),
            total_seconds: operator,
            machine_share: operator / (wall * cores() as f64),
            machine_busy: busy,
        };
        let both = phase(10.0, 2.0, 0.5).plus(&PhaseCpu {
            seconds: [("operator".to_string(), 1.0), ("etcd".to_string(), 3.0)].into(),
            total_seconds: 4.0,
            ..phase(30.0, 0.0, 0.1)
        });
        assert_eq!(both.wall_seconds, 40.0);
        assert_eq!(both.seconds["operator"], 3.0);
        assert_eq!(both.seconds["etcd"], 3.0);
        assert_eq!(both.total_seconds, 6.0);
        assert!((both.machine_share - 6.0 / (40.0 * cores() as f64)).abs() < 1e-12);
        assert!((both.machine_busy - 0.2).abs() < 1e-12);
        assert_eq!(PhaseCpu::default().plus(&both), both);
    }

    #[test]
    fn this_process_has_cpu_ticks() {
        let me = Process {
            name: "bench".into(),
            pid: std::process::id(),
        };
        let before = Snapshot::take(std::slice::from_ref(&me));
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let cpu = Snapshot::take(&[me]).since(&before);
        assert!(cpu.seconds.contains_key("bench"));
        assert!(cpu.total_seconds >= 0.0 && cpu.wall_seconds > 0.0);
    }
}
