//! `ipckit bench`: every mechanism measured side by side between two real
//! processes, with a table, JSON, CSV and SVG plots.
//!
//! The parent (this process) times; the child is this binary re-executed as
//! `ipckit __bench-child <mechanism> --size N [--cpu C] [--name NAME]`
//! ([`mechanisms::run_child`]). Each (placement, mechanism, size) gets a
//! fresh child: round-trip latency first, then one-way throughput.
//! Placements: pinned to two different CPUs, both on one CPU, unpinned.
//!
//! - [`mechanisms`]: what is measured, both ends of each;
//! - `peers`: the peer libraries (feature `peers`); [`raw`]: libc calls of the raw rows;
//! - [`stats`]: percentiles and rates; [`output`]: table, JSON, CSV;
//! - [`goals`]: the goals as ratios, with verdicts; [`plot`]: SVG plots.

pub mod goals;
pub mod mechanisms;
pub mod output;
#[cfg(feature = "peers")]
pub mod peers;
pub mod plot;
pub mod raw;
pub mod stats;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use rustix::thread::CpuSet;

use crate::error::{fail, Context, Result};
use mechanisms::{Class, Link, Mechanism, ECHO, SINK};
use output::Record;
use stats::{Latency, Throughput};

pub use mechanisms::{run_child, ChildArgs};

/// Default message sizes.
pub const DEFAULT_SIZES: &[usize] = &[8, 64, 4096, 65536, 1 << 20];
/// Message sizes with `--quick`.
pub const QUICK_SIZES: &[usize] = &[8, 4096, 65536];
/// Default seconds per measurement.
const DEFAULT_DURATION: f64 = 0.25;
/// Seconds per measurement with `--quick`.
const QUICK_DURATION: f64 = 0.04;
/// Fewest round trips a latency measurement takes, whatever the duration.
const MIN_SAMPLES: usize = 10;
/// Most round trips kept per measurement.
const MAX_SAMPLES: usize = 2_000_000;

/// Where parent and child run (`--placement`, comma-separated).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PlacementArg {
    /// Pinned to two different CPUs.
    Pinned,
    /// Both pinned to one CPU.
    SameCpu,
    /// Wherever the scheduler puts them.
    Unpinned,
    /// pinned and unpinned.
    Both,
    /// pinned, same-cpu and unpinned.
    All,
}

impl PlacementArg {
    /// Whether this choice includes the placement called `name`.
    fn includes(self, name: &str) -> bool {
        match self {
            PlacementArg::Pinned => name == PINNED,
            PlacementArg::SameCpu => name == SAME_CPU,
            PlacementArg::Unpinned => name == UNPINNED,
            PlacementArg::Both => name == PINNED || name == UNPINNED,
            PlacementArg::All => true,
        }
    }
}

/// Placement name: pinned to two different CPUs.
pub const PINNED: &str = "pinned";
/// Placement name: both processes pinned to one CPU.
pub const SAME_CPU: &str = "same-cpu";
/// Placement name: not pinned.
pub const UNPINNED: &str = "unpinned";

/// `ipckit bench` arguments.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Short run (well under a minute): sizes 8, 4096, 65536 and short measurements
    #[arg(long)]
    pub quick: bool,
    /// Only mechanisms whose name contains one of these substrings, comma-separated
    /// (e.g. `pipe`, `raw`, `shm-rpc,iceoryx2`)
    #[arg(long, value_delimiter = ',', value_name = "SUBSTR")]
    pub filter: Option<Vec<String>>,
    /// Message sizes in bytes, comma-separated [default: 8,64,4096,65536,1048576]
    #[arg(long, value_delimiter = ',', value_name = "BYTES")]
    pub sizes: Option<Vec<usize>>,
    /// Seconds per measurement (latency and throughput each) [default: 0.25, --quick 0.04]
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// CPU placements of the two processes: pinned (two different CPUs), same-cpu,
    /// unpinned, both (pinned,unpinned) or all, comma-separated
    #[arg(long, value_enum, value_delimiter = ',', default_value = "all")]
    pub placement: Vec<PlacementArg>,
    /// Directory for results.json, results.csv, verdicts.csv, latency.svg, throughput.svg
    /// [default: ./ipckit-bench-<timestamp>]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// List the mechanisms and what each measures, then exit
    #[arg(long)]
    pub list: bool,
}

/// A placement as run: its name and the CPUs of parent and child.
#[derive(Clone, Copy, Debug)]
struct Placement {
    name: &'static str,
    cpus: Option<(usize, usize)>,
}

/// The placements chosen by `--placement`, in the order pinned, same-cpu,
/// unpinned, on the CPUs `cpus` this process may use (pinned needs two).
fn placements(chosen: &[PlacementArg], cpus: &[usize]) -> Vec<Placement> {
    let wanted = |name: &str| chosen.iter().any(|c| c.includes(name));
    let mut out = Vec::new();
    if wanted(PINNED) {
        match cpus {
            [a, b, ..] => out.push(Placement { name: PINNED, cpus: Some((*a, *b)) }),
            _ => eprintln!("only {} CPU allowed: no pinned placement", cpus.len()),
        }
    }
    if wanted(SAME_CPU) {
        if let [a, ..] = cpus {
            out.push(Placement { name: SAME_CPU, cpus: Some((*a, *a)) });
        }
    }
    if wanted(UNPINNED) {
        out.push(Placement { name: UNPINNED, cpus: None });
    }
    out
}

/// The sizes `mech` is measured with: those it allows, or its largest when
/// none fits (the payload-less mechanisms carry one 8-byte word).
pub fn sizes_for(mech: &Mechanism, sizes: &[usize]) -> Vec<usize> {
    let fit: Vec<usize> = sizes.iter().copied().filter(|&s| s >= 1 && s <= mech.max_size).collect();
    if !fit.is_empty() {
        fit
    } else if mech.max_size <= 8 {
        vec![mech.max_size]
    } else {
        Vec::new()
    }
}

/// `ipckit bench`.
pub fn run(args: &BenchArgs) -> Result<()> {
    if args.list {
        for m in mechanisms::ALL {
            println!("{:<22} {:<8} up to {:>7} B  {}", m.name, m.class.name(), m.max_size, m.what);
        }
        return Ok(());
    }
    let duration = args.duration.unwrap_or(if args.quick { QUICK_DURATION } else { DEFAULT_DURATION });
    if !(duration > 0.0 && duration.is_finite()) {
        fail!("--duration must be a positive number of seconds");
    }
    let mut sizes =
        args.sizes.clone().unwrap_or_else(|| (if args.quick { QUICK_SIZES } else { DEFAULT_SIZES }).to_vec());
    sizes.sort_unstable();
    sizes.dedup();
    if sizes.is_empty() || sizes[0] == 0 {
        fail!("--sizes must be positive byte counts");
    }
    let mechs: Vec<&Mechanism> = mechanisms::ALL
        .iter()
        .filter(|m| args.filter.as_ref().is_none_or(|f| f.iter().any(|f| m.name.contains(f.as_str()))))
        .collect();
    if mechs.is_empty() {
        fail!(
            "--filter {:?} matches no mechanism (see `ipckit bench --list`)",
            args.filter.as_deref().unwrap_or_default().join(",")
        );
    }

    let original = rustix::thread::sched_getaffinity(None).context("sched_getaffinity")?;
    let cpus: Vec<usize> = (0..CpuSet::MAX_CPU).filter(|&c| original.is_set(c)).collect();
    let placements = placements(&args.placement, &cpus);
    if placements.is_empty() {
        fail!("no placement to run: pinned needs two CPUs (see `--placement`)");
    }

    let out =
        args.out.clone().unwrap_or_else(|| PathBuf::from(format!("ipckit-bench-{}", output::timestamp())));
    std::fs::create_dir_all(&out).context(format!("creating {}", out.display()))?;

    // Units of work and an estimate of the total.
    let mut units = Vec::new();
    for &place in &placements {
        for &mech in &mechs {
            for size in sizes_for(mech, &sizes) {
                units.push((place, mech, size));
            }
        }
    }
    let per_unit = |place: &Placement, m: &Mechanism| {
        if m.class == Class::Memory {
            return duration;
        }
        let mut latency = f64::from(u8::from(m.latency)) * 1.2 * duration;
        let mut throughput = f64::from(u8::from(m.throughput)) * duration;
        if place.name == SAME_CPU && m.class == Class::Polling {
            // Each round trip waits for a time slice (~10 ms): at least
            // MIN_SAMPLES of them, and one closing each throughput window.
            latency = latency.max(MIN_SAMPLES as f64 * 0.012);
            throughput += f64::from(u8::from(m.throughput)) * WINDOWS as f64 * 0.012;
        }
        // Starting the child and getting its "ready".
        latency + throughput + 0.03
    };
    let estimate: f64 = units.iter().map(|(p, m, _)| per_unit(p, m)).sum();
    eprintln!(
        "ipckit bench: {} mechanisms, sizes {:?}, placements {}, {duration} s per measurement; \
         {} measurements, estimated {:.0} s; results in {}",
        mechs.len(),
        sizes,
        placements.iter().map(|p| p.name).collect::<Vec<_>>().join("+"),
        units.len(),
        estimate.ceil(),
        out.display()
    );
    let bar = ProgressBar::new((estimate * 1000.0) as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {percent:>3}% elapsed {elapsed} eta {eta} {msg}")
            .expect("a valid template"),
    );

    let mut records = Vec::new();
    for (place, mech, size) in units {
        bar.set_message(format!("{} {} {}B", place.name, mech.name, size));
        let set = match place.cpus {
            Some((parent, _)) => {
                let mut s = CpuSet::new();
                s.set(parent);
                s
            }
            None => original,
        };
        rustix::thread::sched_setaffinity(None, &set).context("sched_setaffinity")?;
        let rec = measure_one(mech, size, place, duration);
        if let Some(e) = &rec.error {
            bar.suspend(|| eprintln!("{} {} {size} B: {e}", place.name, mech.name));
        }
        records.push(rec);
        bar.inc((per_unit(&place, mech) * 1000.0) as u64);
    }
    rustix::thread::sched_setaffinity(None, &original).context("restoring the affinity")?;
    bar.finish_and_clear();

    output::add_ratios(&mut records);
    let verdicts = goals::evaluate(&records);
    print!("{}", output::table(&records));
    print!("{}", goals::table(&verdicts));
    let json = out.join("results.json");
    let csv = out.join("results.csv");
    let vcsv = out.join("verdicts.csv");
    let machine = output::machine_note(&cpus);
    std::fs::write(&json, output::json(&records, &verdicts, &machine, duration).to_string())
        .context(format!("writing {}", json.display()))?;
    std::fs::write(&csv, output::csv(&records)).context(format!("writing {}", csv.display()))?;
    std::fs::write(&vcsv, goals::csv(&verdicts)).context(format!("writing {}", vcsv.display()))?;
    let lat = out.join("latency.svg");
    let thr = out.join("throughput.svg");
    plot::latency(&records, &lat)?;
    plot::throughput(&records, &thr)?;
    println!(
        "\nwrote {}, {}, {}, {}, {}",
        json.display(),
        csv.display(),
        vcsv.display(),
        lat.display(),
        thr.display()
    );
    Ok(())
}

/// One (mechanism, size, placement): a fresh child, latency, then throughput.
fn measure_one(mech: &Mechanism, size: usize, place: Placement, duration: f64) -> Record {
    let mut rec = Record::new(mech, place.name, size);
    let dur = Duration::from_secs_f64(duration);
    if mech.class == Class::Memory {
        rec.throughput = Some(memcpy(size, dur));
        return rec;
    }
    let result = (|| -> Result<()> {
        let mut session = mechanisms::open(mech, size, place.cpus.map(|c| c.1))?;
        let link = session.link.as_mut();
        if mech.latency {
            rec.latency = latency(link, size, dur)?;
        }
        if mech.throughput {
            rec.throughput = Some(throughput(link, size, dur)?);
        }
        Ok(())
    })();
    if let Err(e) = result {
        rec.error = Some(e.to_string());
    }
    rec
}

/// Round trips for `dur` (after a fifth of that as warm-up).
fn latency(link: &mut dyn Link, size: usize, dur: Duration) -> Result<Option<Latency>> {
    let mut msg = vec![0x5a; size];
    let warm = Instant::now();
    while warm.elapsed() < dur / 5 {
        msg[0] = ECHO;
        link.round_trip(&mut msg)?;
    }
    let mut samples = Vec::new();
    let start = Instant::now();
    loop {
        msg[0] = ECHO;
        let t0 = Instant::now();
        link.round_trip(&mut msg)?;
        samples.push(t0.elapsed().as_nanos() as f64);
        let elapsed = start.elapsed();
        if (elapsed >= dur && samples.len() >= MIN_SAMPLES)
            || elapsed >= dur * 20
            || samples.len() >= MAX_SAMPLES
        {
            break;
        }
    }
    Ok(Latency::from_samples(samples))
}

/// Windows a throughput measurement is cut into: the median window's rate
/// is reported, so one stall (a preemption on a busy machine) does not
/// decide the figure.
const WINDOWS: usize = 5;

/// One-way messages for `dur`, in [`WINDOWS`] windows each closed by one
/// round trip (so all its messages were taken); the median window's rate.
fn throughput(link: &mut dyn Link, size: usize, dur: Duration) -> Result<Throughput> {
    let mut msg = vec![0x5a; size];
    let mut windows = Vec::with_capacity(WINDOWS);
    for _ in 0..WINDOWS {
        msg[0] = SINK;
        let start = Instant::now();
        let mut count = 0u64;
        loop {
            link.send(&msg)?;
            count += 1;
            if count % 8 == 0 && start.elapsed() >= dur / WINDOWS as u32 {
                break;
            }
        }
        msg[0] = ECHO;
        link.round_trip(&mut msg)?;
        count += 1;
        windows.push(Throughput::new(count, size, start.elapsed().as_secs_f64()));
    }
    Ok(Throughput::median_of(windows).expect("at least one window"))
}

/// In-process memory copy bandwidth (the ceiling of any one-way transfer).
fn memcpy(size: usize, dur: Duration) -> Throughput {
    let src = vec![0x5au8; size];
    let mut dst = vec![0u8; size];
    let start = Instant::now();
    let mut count = 0u64;
    loop {
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
        count += 1;
        if count % 8 == 0 && start.elapsed() >= dur {
            break;
        }
    }
    Throughput::new(count, size, start.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_respect_each_mechanism() {
        let spin = mechanisms::by_name("floor-spin").unwrap();
        let msgq = mechanisms::by_name("raw-sysv-msgq").unwrap();
        let pipe = mechanisms::by_name("raw-pipe").unwrap();
        assert_eq!(sizes_for(spin, DEFAULT_SIZES), vec![8]);
        assert_eq!(sizes_for(spin, &[4096]), vec![8]);
        assert_eq!(sizes_for(msgq, DEFAULT_SIZES), vec![8, 64, 4096]);
        assert_eq!(sizes_for(pipe, DEFAULT_SIZES), DEFAULT_SIZES.to_vec());
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = mechanisms::ALL.iter().map(|m| m.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), mechanisms::ALL.len());
    }

    #[test]
    fn memcpy_measures_something() {
        let t = memcpy(4096, Duration::from_millis(5));
        assert!(t.messages >= 8);
    }
}
