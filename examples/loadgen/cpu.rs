//! CPU time that processes used during the measured window, read from Linux's
//! `/proc/<pid>/stat`: `--cpu-of` names the processes (the servers under load), and loadgen
//! counts itself too. Divided by the operations measured, it shows what each operation cost
//! each side, whatever else the machine was doing.

use std::time::Instant;

use serde::Serialize;

/// The CPU time of each process at one moment.
pub struct Snapshot {
    at: Instant,
    /// `(pid, name, seconds of CPU)`; `None` for a process that could not be read.
    processes: Vec<(u32, Option<(String, f64)>)>,
}

/// What one process used over the window.
#[derive(Debug, Serialize)]
pub struct ProcessCpu {
    pub pid: u32,
    /// Its command name (`comm`).
    pub name: String,
    pub cpu_secs: f64,
    /// Microseconds of CPU per measured operation.
    pub us_per_op: f64,
}

#[derive(Debug, Serialize)]
pub struct CpuReport {
    pub window_secs: f64,
    pub loadgen: ProcessCpu,
    /// The `--cpu-of` processes, in the order given.
    pub processes: Vec<ProcessCpu>,
}

impl Snapshot {
    /// The CPU time of loadgen itself and then of each of `pids`, now.
    pub fn take(pids: &[u32]) -> Snapshot {
        let own = std::process::id();
        let processes = std::iter::once(own)
            .chain(pids.iter().copied())
            .map(|pid| (pid, read(pid)))
            .collect();
        Snapshot {
            at: Instant::now(),
            processes,
        }
    }

    /// What each process used from `self` to `later`, per operation of `ops`. Fails if a
    /// process could not be read at either end (it exited, or this is not Linux).
    pub fn until(&self, later: &Snapshot, ops: u64) -> Result<CpuReport, String> {
        let mut used = self
            .processes
            .iter()
            .zip(&later.processes)
            .map(|((pid, before), (_, after))| match (before, after) {
                (Some((name, a)), Some((_, b))) => Ok(ProcessCpu {
                    pid: *pid,
                    name: name.clone(),
                    cpu_secs: b - a,
                    us_per_op: per_op(b - a, ops),
                }),
                _ => Err(format!("cannot read the CPU time of process {pid}")),
            })
            .collect::<Result<Vec<_>, String>>()?;
        let loadgen = used.remove(0);
        Ok(CpuReport {
            window_secs: (later.at - self.at).as_secs_f64(),
            loadgen,
            processes: used,
        })
    }
}

/// Fails, naming it, if a process of `pids` cannot be read now.
pub fn check(pids: &[u32]) -> Result<(), String> {
    match pids.iter().find(|&&pid| read(pid).is_none()) {
        Some(pid) => Err(format!("cannot read the CPU time of process {pid}")),
        None => Ok(()),
    }
}

fn per_op(secs: f64, ops: u64) -> f64 {
    if ops == 0 {
        0.0
    } else {
        secs * 1e6 / ops as f64
    }
}

/// `(name, seconds of user and system CPU)` of every thread of `pid`, living or ended.
fn read(pid: u32) -> Option<(String, f64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (name, ticks) = parse_stat(&text)?;
    Some((name, ticks as f64 / clock_ticks_per_sec()))
}

/// The command name and `utime + stime` (in clock ticks) of a `/proc/<pid>/stat` line. The
/// name sits in parentheses and may itself hold spaces and parentheses, so the fields are
/// counted from the last `)`.
fn parse_stat(text: &str) -> Option<(String, u64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let name = text.get(open + 1..close)?.to_string();
    // After the name: state (field 3), ..., utime (field 14), stime (field 15).
    let fields: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_give_the_name_and_the_cpu_ticks() {
        let line = "4242 (tokio (rt) 1) S 1 4242 4242 0 -1 4194560 900 0 0 0 \
                    150 35 0 0 20 0 3 0 123 4567 89 18446744073709551615";
        assert_eq!(parse_stat(line), Some(("tokio (rt) 1".into(), 185)));
        assert_eq!(parse_stat("4242 (x) S 1 2"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_reads_and_the_window_divides_by_operations() {
        let before = Snapshot::take(&[]);
        // Burn a little CPU so the window is not empty.
        let mut x = 0u64;
        let start = Instant::now();
        while start.elapsed().as_millis() < 50 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let after = Snapshot::take(&[]);
        let report = before.until(&after, 1000).unwrap();
        assert!(report.window_secs >= 0.05);
        assert!(report.loadgen.cpu_secs >= 0.0 && report.loadgen.cpu_secs < 1.0);
        let expected = report.loadgen.cpu_secs * 1e6 / 1000.0;
        assert!((report.loadgen.us_per_op - expected).abs() < 1e-9);
        assert!(report.processes.is_empty());
    }

    #[test]
    fn a_process_that_cannot_be_read_is_an_error() {
        // Pids are at most 2^22 on Linux.
        let before = Snapshot::take(&[u32::MAX]);
        let after = Snapshot::take(&[u32::MAX]);
        assert!(before.until(&after, 10).is_err());
        assert!(check(&[u32::MAX]).is_err());
        assert!(check(&[std::process::id()]).is_ok());
    }
}
