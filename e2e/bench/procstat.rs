//! The operator process as the kernel sees it: resident memory and CPU time from `/proc`, sampled
//! in the background for the whole run so that every phase gets its peak and its CPU seconds.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

/// Clock ticks per second of /proc (USER_HZ), 100 on every Linux this runs on.
pub const CLOCK_TICKS: f64 = 100.0;

/// CPU seconds (user + system) a process has used so far.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / CLOCK_TICKS)
}

/// The process running `exe` among `root` and its descendants (a wrapper such as heaptrack runs
/// the program it is given as a child), waiting up to `timeout` for it to appear.
pub fn find_process(root: u32, exe: &std::path::Path, timeout: Duration) -> Option<u32> {
    let parent = |pid: u32| -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
    };
    let descends = |mut pid: u32| {
        for _ in 0..16 {
            if pid == root {
                return true;
            }
            match parent(pid) {
                Some(p) if p > 1 => pid = p,
                _ => return false,
            }
        }
        false
    };
    let exe = std::fs::canonicalize(exe).ok()?;
    let deadline = Instant::now() + timeout;
    loop {
        let found = std::fs::read_dir("/proc")
            .ok()?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .find(|&pid| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p == exe) && descends(pid));
        if found.is_some() || Instant::now() >= deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One reading of a process.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcStat {
    /// `VmRSS`: resident memory now, KiB.
    pub rss_kib: u64,
    /// `VmHWM`: the peak resident memory since the process started, KiB.
    pub hwm_kib: u64,
    /// utime + stime, seconds.
    pub cpu_s: f64,
}

impl ProcStat {
    pub fn read(pid: u32) -> Option<ProcStat> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib = |key: &str| {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        };
        Some(ProcStat { rss_kib: kib("VmRSS:")?, hwm_kib: kib("VmHWM:")?, cpu_s: process_cpu_seconds(pid)? })
    }
}

/// Reads a process every `period` on a thread of its own until stopped or the process is gone.
pub struct Sampler {
    pid: u32,
    samples: Arc<Mutex<Vec<(Instant, ProcStat)>>>,
    stop: Arc<AtomicBool>,
}

impl Sampler {
    pub fn start(pid: u32, period: Duration) -> Sampler {
        let samples: Arc<Mutex<Vec<(Instant, ProcStat)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (samples.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match ProcStat::read(pid) {
                    Some(p) => s.lock().unwrap().push((Instant::now(), p)),
                    None => break,
                }
                std::thread::sleep(period);
            }
        });
        Sampler { pid, samples, stop }
    }

    /// A reading now (also kept as a sample), so phase boundaries are exact.
    pub fn now(&self) -> Option<(Instant, ProcStat)> {
        let p = ProcStat::read(self.pid)?;
        let at = Instant::now();
        self.samples.lock().unwrap().push((at, p));
        Some((at, p))
    }

    pub fn samples(&self) -> Vec<(Instant, ProcStat)> {
        let mut v = self.samples.lock().unwrap().clone();
        v.sort_by_key(|(t, _)| *t);
        v
    }

    /// The highest `VmRSS` sampled between `from` and `to`.
    pub fn peak_rss_kib(&self, from: Instant, to: Instant) -> u64 {
        self.samples
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| *t >= from && *t <= to)
            .map(|(_, p)| p.rss_kib)
            .max()
            .unwrap_or(0)
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What the operator used during one phase of the run.
#[derive(Clone, Debug)]
pub struct PhaseUse {
    pub name: String,
    pub start: Instant,
    pub end: Instant,
    pub cpu_s: f64,
    /// Highest `VmRSS` sampled during the phase.
    pub peak_rss_kib: u64,
    /// `VmRSS` at the end of the phase.
    pub end_rss_kib: u64,
    /// `VmHWM` at the end of the phase: the process's peak so far.
    pub hwm_kib: u64,
}

/// Marks the start of a phase; `finish` turns it into a [`PhaseUse`].
pub struct PhaseStart {
    name: String,
    at: Instant,
    stat: ProcStat,
}

impl PhaseStart {
    pub fn begin(sampler: &Sampler, name: &str) -> PhaseStart {
        let (at, stat) = sampler.now().unwrap_or((Instant::now(), ProcStat::default()));
        PhaseStart { name: name.to_string(), at, stat }
    }

    /// A phase that began when the process did (at zero CPU time).
    pub fn since_process_start(name: &str, at: Instant) -> PhaseStart {
        PhaseStart { name: name.to_string(), at, stat: ProcStat::default() }
    }

    pub fn finish(self, sampler: &Sampler) -> PhaseUse {
        let (end, stat) = sampler.now().unwrap_or((Instant::now(), self.stat));
        PhaseUse {
            name: self.name,
            start: self.at,
            end,
            cpu_s: stat.cpu_s - self.stat.cpu_s,
            peak_rss_kib: sampler.peak_rss_kib(self.at, end),
            end_rss_kib: stat.rss_kib,
            hwm_kib: stat.hwm_kib,
        }
    }
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
