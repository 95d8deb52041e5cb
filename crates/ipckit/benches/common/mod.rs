//! Pieces shared by the benches in this directory: CPU placement, the
//! re-executed child processes, statistics and machine-load notes.
//!
//! Each bench is a crate of its own (`mod common;`) and uses only some of
//! these helpers, hence `dead_code` is allowed here.

#![allow(dead_code)]

use std::error::Error;
use std::fmt::Display;
use std::io::{self, Write};
use std::os::fd::BorrowedFd;
use std::process::{Child, Command, ExitStatus};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rustix::mm::{MapFlags, ProtFlags};
use rustix::thread::CpuSet;

// ---------------------------------------------------------------------------
// CPU placement
// ---------------------------------------------------------------------------

/// Where the parent (the timing end) runs and where its child (the answering
/// end) is told to run.
#[derive(Clone, Copy, Debug)]
pub enum Placement {
    /// Parent and child each pinned, to different CPUs.
    Pinned { parent: usize, child: usize },
    /// No affinity: wherever the scheduler puts them.
    Unpinned,
    /// Both pinned to the same CPU.
    SameCpu { cpu: usize },
}

impl Placement {
    pub fn name(self) -> &'static str {
        match self {
            Placement::Pinned { .. } => "pinned",
            Placement::Unpinned => "unpinned",
            Placement::SameCpu { .. } => "samecpu",
        }
    }

    /// The CPU of the parent (the timing end).
    pub fn parent_cpu(self) -> Option<usize> {
        match self {
            Placement::Pinned { parent, .. } => Some(parent),
            Placement::SameCpu { cpu } => Some(cpu),
            Placement::Unpinned => None,
        }
    }

    /// The CPU of the child (the answering end).
    pub fn child_cpu(self) -> Option<usize> {
        match self {
            Placement::Pinned { child, .. } => Some(child),
            Placement::SameCpu { cpu } => Some(cpu),
            Placement::Unpinned => None,
        }
    }
}

/// This thread's current affinity mask, to restore later.
pub fn original_affinity() -> CpuSet {
    rustix::thread::sched_getaffinity(None).expect("sched_getaffinity")
}

/// The CPUs set in `mask`, in order.
pub fn allowed_cpus(mask: &CpuSet) -> Vec<usize> {
    (0..CpuSet::MAX_CPU).filter(|&c| mask.is_set(c)).collect()
}

/// `pinned` (first two allowed CPUs; left out, saying "only N CPU(s)
/// allowed: skipping {skipping}", with fewer than two), `unpinned`, `samecpu`.
pub fn placements(original: &CpuSet, skipping: &str) -> Vec<Placement> {
    let cpus = allowed_cpus(original);
    let mut placements = Vec::new();
    if let [parent, child, ..] = cpus[..] {
        placements.push(Placement::Pinned { parent, child });
    } else {
        eprintln!("only {} CPU(s) allowed: skipping {skipping}", cpus.len());
    }
    placements.push(Placement::Unpinned);
    placements.push(Placement::SameCpu { cpu: cpus[0] });
    placements
}

/// The placement called `name` (a probe's argument), or a panic naming `var`.
pub fn find_placement(placements: &[Placement], name: &str, var: &str) -> Placement {
    *placements
        .iter()
        .find(|p| p.name() == name)
        .unwrap_or_else(|| panic!("{var}: unknown placement {name:?}"))
}

pub fn one_cpu(cpu: usize) -> CpuSet {
    let mut set = CpuSet::new();
    set.set(cpu);
    set
}

/// Pins the calling thread (the parent) for `place`, or restores the original mask.
pub fn place_self(place: Placement, original: &CpuSet) {
    let set = place.parent_cpu().map_or(*original, one_cpu);
    rustix::thread::sched_setaffinity(None, &set).expect("sched_setaffinity (parent)");
}

/// Restores the mask saved by [`original_affinity`].
pub fn restore_affinity(original: &CpuSet) {
    rustix::thread::sched_setaffinity(None, original).expect("restore affinity");
}

/// In a child: pins this thread to the CPU named by `var`, if it is set.
pub fn pin_from_env(var: &str) -> Result<(), Box<dyn Error>> {
    if let Ok(cpu) = std::env::var(var) {
        rustix::thread::sched_setaffinity(None, &one_cpu(cpu.parse()?))?;
    }
    Ok(())
}

/// Tells a child (through `var`) which CPU to pin itself to, or that it is not pinned.
pub fn set_cpu_env(cmd: &mut Command, var: &str, cpu: Option<usize>) {
    match cpu {
        Some(cpu) => cmd.env(var, cpu.to_string()),
        None => cmd.env_remove(var),
    };
}

/// The CPU process `pid` last ran on (`/proc/<pid>/stat`, field 39).
pub fn last_cpu_of(pid: u32) -> Option<usize> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields 3.. follow the ")" that ends the command name; "processor" is field 39.
    stat.rsplit_once(')')?.1.split_whitespace().nth(36)?.parse().ok()
}

/// Whether process `pid` last ran on the CPU this thread is on now.
pub fn shares_cpu_with(pid: u32) -> Option<bool> {
    Some(last_cpu_of(pid)? == rustix::thread::sched_getcpu())
}

// ---------------------------------------------------------------------------
// Run mode and the re-executed children
// ---------------------------------------------------------------------------

/// Whether this is a real benchmark run. `cargo test --benches` runs the
/// binary without `--bench` (criterion's test mode): the long summary loops
/// are only for real benchmark runs.
pub fn criterion_benchmarking() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--bench")
        && !args.iter().any(|a| a == "--test" || a == "--list" || a.starts_with("--profile-time"))
}

/// Ends a re-executed child with the outcome of its role: 0, or 1 after
/// printing "`what` (`role`): error".
pub fn exit_child<E: Display>(what: &str, role: &str, outcome: Result<(), E>) -> ! {
    std::process::exit(match outcome {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{what} ({role}): {e}");
            1
        }
    })
}

/// `PR_SET_PDEATHSIG(SIGKILL)`, then checks that the parent (its pid in
/// `parent_var`) did not exit before it was armed; `gone` is the error then.
pub fn die_with_parent(parent_var: &str, gone: &str) -> Result<(), Box<dyn Error>> {
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
    let parent: i32 = std::env::var(parent_var)?.parse()?;
    if rustix::process::getppid().map(|p| p.as_raw_nonzero().get()) != Some(parent) {
        return Err(gone.into());
    }
    Ok(())
}

/// Says "ready" on stdout.
pub fn say_ready() -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()
}

/// A name unique to this run: `{prefix}-{what}-{pid}-{counter}`.
pub fn unique_name(prefix: &str, what: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}-{what}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// How a child ended in [`wait_or_kill`].
pub enum Reaped {
    Exited(ExitStatus),
    /// Still running at the deadline (or not waitable): killed and reaped.
    Killed,
}

/// Polls `child` every `poll` until it exits or `deadline` passes; then kills and reaps it.
pub fn wait_or_kill(child: &mut Child, deadline: Instant, poll: Duration) -> Reaped {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Reaped::Exited(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(poll),
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Reaped::Killed;
            }
        }
    }
}

/// Gives `child` `grace` to exit, then kills it; says so on stderr
/// ("`what` exited with ..." / "`what` did not exit: killing it").
pub fn reap(mut child: Child, grace: Duration, what: &str) {
    let deadline = Instant::now() + grace;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                if !status.success() {
                    eprintln!("{what} exited with {status}");
                }
                return;
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
            Ok(None) | Err(_) => {
                eprintln!("{what} did not exit: killing it");
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
        }
    }
}

/// A new shared read-write mapping of the first `len` bytes of `fd` (the
/// caller makes sure the object is at least that long), unmapped by the caller.
pub fn map_shared(fd: BorrowedFd<'_>, len: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: a new shared mapping of `len` bytes of `fd` at an address the
    // kernel chooses: it overlaps no Rust object.
    let p = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED,
            fd,
            0,
        )?
    };
    Ok(NonNull::new(p.cast()).expect("mmap does not return null on success"))
}

// ---------------------------------------------------------------------------
// Statistics and machine load
// ---------------------------------------------------------------------------

/// The median of `xs`, sorting it in place (NaN when empty).
pub fn median_in_place(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// The median of `xs` (NaN when empty).
pub fn median(xs: &[f64]) -> f64 {
    median_in_place(&mut xs.to_vec())
}

/// Nearest-rank percentile of sorted `xs` (NaN when empty).
pub fn percentile_nearest_rank(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Percentile of `xs` (any order) at the rounded index `q * (len - 1)` (NaN when empty).
pub fn percentile_rounded(xs: &[f64], q: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// `/proc/loadavg` as it stands ("?" if unreadable).
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or_else(|_| "?".into(), |s| s.trim().to_owned())
}

/// The load average and the CPU pressure (share of time some task waited for a CPU), for judging noise.
pub fn load_note() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    let psi = std::fs::read_to_string("/proc/pressure/cpu").unwrap_or_default();
    let some10 = psi.lines().next().and_then(|l| l.split_whitespace().nth(1)).unwrap_or("avg10=?");
    format!("loadavg {load}, cpu pressure {some10}%")
}
