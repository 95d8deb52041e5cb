//! The goals of `ipckit bench` (issue 7), checked as ratios in one run: for
//! each goal and placement, the measured ratio and whether it was met.
//!
//! - ipckit's shared-memory RPC (spin) at or below iceoryx2's
//!   request-response latency, copying (`call`/`recv`/`reply`) and in place
//!   (loans both ways, as iceoryx2's own API is);
//! - the RPC in busy-poll mode within 1.5x of the spin floor;
//! - the RPC in blocking mode within 1.3x of the futex floor;
//! - every ipckit transport within 10% of the raw kernel primitive it wraps
//!   (latency, and messages/s where both carry a payload);
//! - ipckit's typed queue at least 10x the System V queue (messages/s).
//!
//! A ratio is the worst over the sizes both sides were measured with (the
//! size is reported): against a floor (one 8-byte word) that is 8 bytes.

use std::fmt::Write as _;

use super::mechanisms::Class;
use super::output::{fmt_size, Record};
use super::SAME_CPU;

/// The columns of verdicts.csv (and the keys of each JSON verdict), in order.
pub const COLUMNS: &[&str] = &[
    "goal",
    "placement",
    "subject",
    "baseline",
    "metric",
    "size",
    "ratio",
    "bound",
    "limit",
    "verdict",
    "note",
];

/// What a ratio is compared with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Bound {
    /// The goal is met when the ratio is at most this.
    AtMost(f64),
    /// The goal is met when the ratio is at least this.
    AtLeast(f64),
}

impl Bound {
    fn holds(self, ratio: f64) -> bool {
        match self {
            Bound::AtMost(x) => ratio <= x,
            Bound::AtLeast(x) => ratio >= x,
        }
    }

    fn limit(self) -> f64 {
        match self {
            Bound::AtMost(x) | Bound::AtLeast(x) => x,
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            Bound::AtMost(_) => "<=",
            Bound::AtLeast(_) => ">=",
        }
    }

    /// The worse of two ratios under this bound.
    fn worse(self, a: f64, b: f64) -> f64 {
        match self {
            Bound::AtMost(_) => a.max(b),
            Bound::AtLeast(_) => a.min(b),
        }
    }
}

/// Which figure a goal compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// Median round trip: subject / baseline (lower is better).
    Latency,
    /// One-way messages/s: baseline / subject (so lower is better, like latency).
    ThroughputCost,
    /// One-way messages/s: subject / baseline (higher is better).
    ThroughputGain,
}

impl Metric {
    /// The metric as written in the outputs.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Latency => "rtt median, subject/baseline",
            Metric::ThroughputCost => "msgs/s, baseline/subject",
            Metric::ThroughputGain => "msgs/s, subject/baseline",
        }
    }

    fn ratio(self, subject: &Record, baseline: &Record) -> Option<f64> {
        let r = match self {
            Metric::Latency => subject.latency?.median / baseline.latency?.median,
            Metric::ThroughputCost => baseline.throughput?.msgs_per_s / subject.throughput?.msgs_per_s,
            Metric::ThroughputGain => subject.throughput?.msgs_per_s / baseline.throughput?.msgs_per_s,
        };
        r.is_finite().then_some(r)
    }
}

/// One goal: `subject` against `baseline` on `metric`, within `bound`.
#[derive(Clone, Copy, Debug)]
pub struct Goal {
    /// Short id of the goal (the same for every pair under one goal).
    pub id: &'static str,
    /// The mechanism the goal is about.
    pub subject: &'static str,
    /// What it is compared with.
    pub baseline: &'static str,
    /// The figure compared.
    pub metric: Metric,
    /// The bound on the ratio.
    pub bound: Bound,
}

const fn goal(
    id: &'static str,
    subject: &'static str,
    baseline: &'static str,
    metric: Metric,
    bound: Bound,
) -> Goal {
    Goal { id, subject, baseline, metric, bound }
}

const WITHIN_10: Bound = Bound::AtMost(1.10);

/// Every goal, in the order they are reported.
pub const GOALS: &[Goal] = &[
    goal("rpc-vs-iceoryx2", "ipckit-shm-rpc-spin", "peer-iceoryx2-rr", Metric::Latency, Bound::AtMost(1.0)),
    goal("rpc-vs-iceoryx2", "ipckit-shm-rpc-loan", "peer-iceoryx2-rr", Metric::Latency, Bound::AtMost(1.0)),
    goal("rpc-spin-vs-floor", "ipckit-shm-rpc-spin", "floor-spin", Metric::Latency, Bound::AtMost(1.5)),
    goal("rpc-block-vs-futex", "ipckit-shm-rpc-block", "floor-futex", Metric::Latency, Bound::AtMost(1.3)),
    goal("transport-vs-raw", "ipckit-pipe", "raw-pipe", Metric::Latency, WITHIN_10),
    goal("transport-vs-raw", "ipckit-pipe", "raw-pipe", Metric::ThroughputCost, WITHIN_10),
    goal("transport-vs-raw", "ipckit-fifo", "raw-pipe", Metric::Latency, WITHIN_10),
    goal("transport-vs-raw", "ipckit-fifo", "raw-pipe", Metric::ThroughputCost, WITHIN_10),
    goal("transport-vs-raw", "ipckit-unix-stream", "raw-socketpair", Metric::Latency, WITHIN_10),
    goal("transport-vs-raw", "ipckit-unix-stream", "raw-socketpair", Metric::ThroughputCost, WITHIN_10),
    goal("transport-vs-raw", "ipckit-seqpacket", "raw-seqpacket", Metric::Latency, WITHIN_10),
    goal("transport-vs-raw", "ipckit-seqpacket", "raw-seqpacket", Metric::ThroughputCost, WITHIN_10),
    goal("transport-vs-raw", "ipckit-shm-ring-block", "floor-futex", Metric::Latency, WITHIN_10),
    goal("transport-vs-raw", "ipckit-event", "floor-futex", Metric::Latency, WITHIN_10),
    goal("transport-vs-raw", "ipckit-semaphore", "floor-futex", Metric::Latency, WITHIN_10),
    goal("transport-vs-raw", "ipckit-loan", "floor-futex", Metric::Latency, WITHIN_10),
    goal("transport-vs-raw", "ipckit-signal", "raw-signal", Metric::Latency, WITHIN_10),
    goal("transport-vs-raw", "ipckit-signal-blocked", "raw-signal", Metric::Latency, WITHIN_10),
    goal(
        "typed-queue-vs-sysv",
        "ipckit-typed-queue",
        "raw-sysv-msgq",
        Metric::ThroughputGain,
        Bound::AtLeast(10.0),
    ),
];

/// A goal's outcome in one placement.
#[derive(Clone, Debug)]
pub struct Verdict {
    /// The goal.
    pub goal: Goal,
    /// Where both ran.
    pub placement: &'static str,
    /// The size of the (worst) ratio.
    pub size: Option<usize>,
    /// The ratio, if both sides were measured.
    pub ratio: Option<f64>,
    /// Why there is no ratio.
    pub note: Option<String>,
    /// The ratio at each size both sides were measured with.
    pub per_size: Vec<(usize, f64)>,
}

impl Verdict {
    /// `Some(true)` met, `Some(false)` missed, `None` not measured (or not applicable).
    pub fn met(&self) -> Option<bool> {
        self.ratio.map(|r| self.goal.bound.holds(r))
    }

    /// "met", "missed", "n/a" (not meaningful in this placement) or "not measured".
    pub fn word(&self) -> &'static str {
        match self.met() {
            Some(true) => "met",
            Some(false) => "missed",
            None if self.placement == SAME_CPU && self.note.as_deref() == Some(SPIN_ON_ONE_CPU) => "n/a",
            None => "not measured",
        }
    }

    /// How far from the bound ("missed by 23%", "12% to spare", "needs 4.2x
    /// more"), or why there is no ratio.
    pub fn margin(&self) -> String {
        let Some(r) = self.ratio else { return self.note.clone().unwrap_or_default() };
        let limit = self.goal.bound.limit();
        match self.goal.bound {
            Bound::AtMost(_) if r <= limit => format!("{:.0}% to spare", (1.0 - r / limit) * 100.0),
            Bound::AtMost(_) => format!("missed by {:.0}%", (r / limit - 1.0) * 100.0),
            Bound::AtLeast(_) if r >= limit => format!("{:.0}% to spare", (r / limit - 1.0) * 100.0),
            Bound::AtLeast(_) => format!("needs {:.1}x more", limit / r),
        }
    }
}

/// Why a polling goal has no verdict on one CPU.
const SPIN_ON_ONE_CPU: &str =
    "busy-polling on one CPU measures the scheduler's time slice, not the mechanism";

/// The verdicts for the goals whose subject was measured (and not failed) in
/// `records`, for every placement present.
pub fn evaluate(records: &[Record]) -> Vec<Verdict> {
    let mut placements: Vec<&'static str> = Vec::new();
    for r in records {
        if !placements.contains(&r.placement) {
            placements.push(r.placement);
        }
    }
    let mut out = Vec::new();
    for goal in GOALS {
        for &place in &placements {
            let of = |name: &str| -> Vec<&Record> {
                records
                    .iter()
                    .filter(|r| r.mechanism == name && r.placement == place && r.error.is_none())
                    .collect()
            };
            let (subject, baseline) = (of(goal.subject), of(goal.baseline));
            let measured = |r: &&Record| goal.metric.ratio(r, r).is_some();
            if !subject.iter().any(measured) {
                continue;
            }
            let mut v = Verdict {
                goal: *goal,
                placement: place,
                size: None,
                ratio: None,
                note: None,
                per_size: Vec::new(),
            };
            if place == SAME_CPU && subject.iter().any(|r| r.class == Class::Polling) {
                v.note = Some(SPIN_ON_ONE_CPU.to_owned());
                out.push(v);
                continue;
            }
            if !baseline.iter().any(measured) {
                v.note = Some(format!(
                    "{} not measured (--filter, or built without --features peers)",
                    goal.baseline
                ));
                out.push(v);
                continue;
            }
            // The sizes both were measured with; against a floor measured at
            // another size only (`--sizes`), the subject's smallest size.
            let mut pairs: Vec<(&Record, &Record)> = subject
                .iter()
                .filter_map(|s| baseline.iter().find(|b| b.size == s.size).map(|b| (*s, *b)))
                .collect();
            if pairs.is_empty() && baseline.len() == 1 {
                if let Some(s) = subject.iter().filter(|r| measured(r)).min_by_key(|r| r.size) {
                    pairs.push((*s, baseline[0]));
                }
            }
            for (s, b) in pairs {
                let Some(r) = goal.metric.ratio(s, b) else { continue };
                v.per_size.push((s.size, r));
                let worse = v.ratio.map_or(r, |w| goal.bound.worse(w, r));
                if v.ratio != Some(worse) {
                    v.ratio = Some(worse);
                    v.size = Some(s.size);
                }
            }
            if v.ratio.is_none() {
                v.note = Some("no size measured by both".to_owned());
            }
            out.push(v);
        }
    }
    out
}

/// The verdicts as a table for the terminal.
pub fn table(verdicts: &[Verdict]) -> String {
    let mut s = String::new();
    if verdicts.is_empty() {
        return s;
    }
    let _ = writeln!(
        s,
        "\nGoals (issue 7), as ratios in this run:\n{:<20} {:<8} {:<44} {:<26} {:>5} {:>8} {:>8}  verdict",
        "goal", "place", "subject vs baseline", "metric", "size", "ratio", "bound"
    );
    let _ = writeln!(s, "{}", "-".repeat(140));
    for v in verdicts {
        let g = &v.goal;
        let ratio = v.ratio.map_or_else(|| "-".to_owned(), fmt_ratio);
        let size = v.size.map_or_else(|| "-".to_owned(), fmt_size);
        let _ = writeln!(
            s,
            "{:<20} {:<8} {:<44} {:<26} {size:>5} {ratio:>8} {:>8}  {}: {}",
            g.id,
            v.placement,
            format!("{} vs {}", g.subject, g.baseline),
            g.metric.name(),
            format!("{} {:.2}", g.bound.symbol(), g.bound.limit()),
            v.word(),
            v.margin(),
        );
    }
    s
}

/// A ratio with two decimals, or three significant digits below 0.1.
pub fn fmt_ratio(r: f64) -> String {
    if r != 0.0 && r.abs() < 0.1 {
        let decimals = (2 - r.abs().log10().floor() as i32).max(0) as usize;
        format!("{r:.decimals$}x")
    } else {
        format!("{r:.2}x")
    }
}

fn num(x: Option<f64>) -> serde_json::Value {
    x.filter(|x| x.is_finite()).map_or(serde_json::Value::Null, serde_json::Value::from)
}

/// One verdict as a JSON object with the keys of [`COLUMNS`] (`met` as a
/// boolean, or null when not measured).
pub fn verdict_json(v: &Verdict) -> serde_json::Value {
    serde_json::json!({
        "goal": v.goal.id,
        "placement": v.placement,
        "subject": v.goal.subject,
        "baseline": v.goal.baseline,
        "metric": v.goal.metric.name(),
        "size": v.size,
        "ratio": num(v.ratio),
        "bound": v.goal.bound.symbol(),
        "limit": v.goal.bound.limit(),
        "verdict": v.word(),
        "met": v.met(),
        "note": v.margin(),
        "per_size": v.per_size.iter().map(|&(size, r)| serde_json::json!({"size": size, "ratio": r})).collect::<Vec<_>>(),
    })
}

/// verdicts.csv: a header of [`COLUMNS`], then one line per verdict.
pub fn csv(verdicts: &[Verdict]) -> String {
    super::output::csv_of(COLUMNS, verdicts.iter().map(verdict_json))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::mechanisms::by_name;
    use crate::bench::stats::{Latency, Throughput};

    fn rec(name: &str, place: &'static str, size: usize, rtt: f64, msgs: Option<f64>) -> Record {
        let mut r = Record::new(by_name(name).unwrap(), place, size);
        r.latency = Some(Latency { median: rtt, p99: rtt, p999: rtt, samples: 10 });
        r.throughput = msgs.map(|m| Throughput::new(m as u64, size, 1.0));
        r
    }

    fn sample() -> Vec<Record> {
        vec![
            rec("floor-spin", "pinned", 8, 100.0, None),
            rec("ipckit-shm-rpc-spin", "pinned", 8, 140.0, None),
            rec("ipckit-shm-rpc-spin", "pinned", 4096, 900.0, None),
            rec("raw-pipe", "pinned", 8, 100.0, Some(1000.0)),
            rec("raw-pipe", "pinned", 4096, 100.0, Some(1000.0)),
            rec("ipckit-pipe", "pinned", 8, 105.0, Some(500.0)),
            rec("ipckit-pipe", "pinned", 4096, 200.0, Some(1000.0)),
            rec("ipckit-typed-queue", "unpinned", 8, 50.0, Some(2000.0)),
            rec("raw-sysv-msgq", "unpinned", 8, 50.0, Some(100.0)),
        ]
    }

    fn q_of(v: &[Verdict]) -> &Verdict {
        find(v, "typed-queue-vs-sysv", "ipckit-typed-queue", Metric::ThroughputGain)
    }

    fn find<'a>(v: &'a [Verdict], id: &str, subject: &str, metric: Metric) -> &'a Verdict {
        v.iter()
            .find(|x| x.goal.id == id && x.goal.subject == subject && x.goal.metric == metric)
            .unwrap_or_else(|| panic!("no verdict {id} {subject} {metric:?}"))
    }

    #[test]
    fn ratios_bounds_and_worst_sizes() {
        let v = evaluate(&sample());
        // Against the spin floor: 8 bytes only (the floor's size).
        let spin = find(&v, "rpc-spin-vs-floor", "ipckit-shm-rpc-spin", Metric::Latency);
        assert_eq!((spin.ratio, spin.size, spin.met()), (Some(1.4), Some(8), Some(true)));
        assert_eq!(spin.margin(), "7% to spare");
        // The worst size: 4096 (2x), not 8 (1.05x).
        let lat = find(&v, "transport-vs-raw", "ipckit-pipe", Metric::Latency);
        assert_eq!((lat.ratio, lat.size, lat.met()), (Some(2.0), Some(4096), Some(false)));
        assert_eq!(lat.per_size, vec![(8, 1.05), (4096, 2.0)]);
        assert_eq!(verdict_json(lat)["per_size"][1]["ratio"], 2.0);
        assert_eq!(lat.word(), "missed");
        assert_eq!(lat.margin(), "missed by 82%");
        let mut short = q_of(&v).clone();
        short.ratio = Some(2.5);
        assert_eq!((short.word(), short.margin()), ("missed", "needs 4.0x more".to_owned()));
        // Throughput as a cost: raw/ipckit, worst at 8 bytes.
        let thr = find(&v, "transport-vs-raw", "ipckit-pipe", Metric::ThroughputCost);
        assert_eq!((thr.ratio, thr.size, thr.met()), (Some(2.0), Some(8), Some(false)));
        // At least 10x: 20x is met.
        let q = q_of(&v);
        assert_eq!((q.ratio, q.placement, q.met()), (Some(20.0), "unpinned", Some(true)));
        assert_eq!(q.margin(), "100% to spare");
    }

    #[test]
    fn a_missing_baseline_is_not_measured_and_a_missing_subject_has_no_verdict() {
        let v = evaluate(&sample());
        let ice = find(&v, "rpc-vs-iceoryx2", "ipckit-shm-rpc-spin", Metric::Latency);
        assert_eq!((ice.ratio, ice.met(), ice.word()), (None, None, "not measured"));
        assert!(ice.margin().contains("peer-iceoryx2-rr not measured"), "{}", ice.margin());
        assert!(!v.iter().any(|x| x.goal.subject == "ipckit-fifo"));
        assert!(!v.iter().any(|x| x.goal.id == "rpc-block-vs-futex"));
        // Only the placements a subject was measured in.
        assert!(!v.iter().any(|x| x.goal.subject == "ipckit-pipe" && x.placement == "unpinned"));
    }

    #[test]
    fn polling_on_one_cpu_is_not_applicable() {
        let mut records = sample();
        records.push(rec("floor-spin", "same-cpu", 8, 4e6, None));
        records.push(rec("ipckit-shm-rpc-spin", "same-cpu", 8, 4e6, None));
        let v = evaluate(&records);
        let one = v.iter().find(|x| x.goal.id == "rpc-spin-vs-floor" && x.placement == "same-cpu").unwrap();
        assert_eq!((one.ratio, one.word()), (None, "n/a"));
    }

    #[test]
    fn a_failed_measurement_gives_no_ratio() {
        let mut records = sample();
        records[3].error = Some("broken".into());
        records[4].error = Some("broken".into());
        let v = evaluate(&records);
        let lat = find(&v, "transport-vs-raw", "ipckit-pipe", Metric::Latency);
        assert_eq!(lat.met(), None);
    }

    #[test]
    fn every_goal_names_known_mechanisms() {
        for g in GOALS {
            for name in [g.subject, g.baseline] {
                assert!(
                    by_name(name).is_some() || name.starts_with("peer-"),
                    "goal {} names unknown mechanism {name}",
                    g.id
                );
            }
        }
    }

    #[test]
    fn csv_json_and_table() {
        let v = evaluate(&sample());
        let text = csv(&v);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0].split(',').collect::<Vec<_>>(), COLUMNS);
        assert_eq!(lines.len(), v.len() + 1);
        for l in &lines[1..] {
            assert_eq!(l.split(',').count(), COLUMNS.len(), "{l}");
        }
        let j = verdict_json(&v[0]);
        for c in COLUMNS {
            assert!(j.get(c).is_some(), "missing {c}");
        }
        assert!(j["met"].is_null() || j["met"].is_boolean());
        let t = table(&v);
        assert!(t.contains("rpc-spin-vs-floor") && t.contains("1.40x") && t.contains("missed"), "{t}");
        assert_eq!(table(&[]), "");
        assert_eq!(fmt_ratio(1.4), "1.40x");
        assert_eq!(fmt_ratio(0.0123), "0.0123x");
        assert_eq!(fmt_ratio(0.000456), "0.000456x");
    }
}
