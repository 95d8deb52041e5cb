//! The results: records, ratios to the floors, the terminal table, JSON and CSV.

use std::fmt::Write as _;

use super::goals::{self, Verdict};
use super::mechanisms::{Class, Mechanism};
use super::stats::{Latency, Throughput};

/// The columns of results.csv (and the keys of each JSON result), in order.
pub const COLUMNS: &[&str] = &[
    "mechanism",
    "class",
    "placement",
    "size",
    "rtt_median_ns",
    "rtt_p99_ns",
    "rtt_p999_ns",
    "rtt_samples",
    "rtt_vs_floor",
    "msgs_per_s",
    "bytes_per_s",
    "bytes_vs_memcpy",
    "error",
];

/// One measurement: a mechanism at one size and placement.
#[derive(Clone, Debug)]
pub struct Record {
    /// Mechanism name.
    pub mechanism: &'static str,
    /// Its class.
    pub class: Class,
    /// "pinned" or "unpinned".
    pub placement: &'static str,
    /// Message size in bytes.
    pub size: usize,
    /// Round-trip latency, if measured.
    pub latency: Option<Latency>,
    /// One-way throughput, if measured.
    pub throughput: Option<Throughput>,
    /// Median round trip over the floor of its class (same placement).
    pub rtt_vs_floor: Option<f64>,
    /// Bytes per second over memcpy's at the same size.
    pub bytes_vs_memcpy: Option<f64>,
    /// Why the measurement failed.
    pub error: Option<String>,
}

impl Record {
    /// An empty record for `mech`.
    pub fn new(mech: &Mechanism, placement: &'static str, size: usize) -> Record {
        Record {
            mechanism: mech.name,
            class: mech.class,
            placement,
            size,
            latency: None,
            throughput: None,
            rtt_vs_floor: None,
            bytes_vs_memcpy: None,
            error: None,
        }
    }
}

/// Fills in the ratios: each median round trip against the floor of its
/// class (floor-spin for polling, floor-futex for blocking) in the same
/// placement, each byte rate against memcpy at the same size.
pub fn add_ratios(records: &mut [Record]) {
    let floor = |records: &[Record], name: &str, place: &str| {
        records
            .iter()
            .find(|r| r.mechanism == name && r.placement == place)
            .and_then(|r| r.latency)
            .map(|l| l.median)
    };
    let memcpy = |records: &[Record], size: usize, place: &str| {
        records
            .iter()
            .find(|r| r.mechanism == "memcpy" && r.size == size && r.placement == place)
            .and_then(|r| r.throughput)
            .map(|t| t.bytes_per_s)
    };
    for i in 0..records.len() {
        let r = &records[i];
        let floor_name = match r.class {
            Class::Polling => "floor-spin",
            Class::Blocking => "floor-futex",
            Class::Memory => "",
        };
        let f = floor(records, floor_name, r.placement);
        let m = memcpy(records, r.size, r.placement);
        let r = &mut records[i];
        r.rtt_vs_floor = r.latency.zip(f).map(|(l, f)| l.median / f);
        r.bytes_vs_memcpy = r.throughput.zip(m).map(|(t, m)| t.bytes_per_s / m);
    }
}

/// A duration in ns, in a readable unit.
pub fn fmt_ns(ns: f64) -> String {
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.2} us", ns / 1e3)
    } else {
        format!("{:.2} ms", ns / 1e6)
    }
}

/// A rate in a readable unit (k, M, G).
pub fn fmt_rate(x: f64) -> String {
    if x < 1e3 {
        format!("{x:.0}")
    } else if x < 1e6 {
        format!("{:.1}k", x / 1e3)
    } else if x < 1e9 {
        format!("{:.1}M", x / 1e6)
    } else {
        format!("{:.2}G", x / 1e9)
    }
}

/// A size in bytes, short (8, 4K, 1M).
pub fn fmt_size(n: usize) -> String {
    if n >= 1 << 20 && n % (1 << 20) == 0 {
        format!("{}M", n >> 20)
    } else if n >= 1024 && n % 1024 == 0 {
        format!("{}K", n >> 10)
    } else {
        n.to_string()
    }
}

/// The terminal table.
pub fn table(records: &[Record]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<22} {:<8} {:<8} {:>5} | {:>10} {:>10} {:>10} {:>8} | {:>8} {:>9} {:>8}",
        "mechanism",
        "class",
        "place",
        "size",
        "rtt med",
        "p99",
        "p99.9",
        "x floor",
        "msg/s",
        "bytes/s",
        "x memcpy"
    );
    let _ = writeln!(s, "{}", "-".repeat(122));
    let dash = || "-".to_owned();
    for r in records {
        let (med, p99, p999) =
            r.latency.map_or((dash(), dash(), dash()), |l| (fmt_ns(l.median), fmt_ns(l.p99), fmt_ns(l.p999)));
        let ratio = r.rtt_vs_floor.map_or_else(dash, |x| format!("{x:.2}x"));
        let (mps, bps) =
            r.throughput.map_or((dash(), dash()), |t| (fmt_rate(t.msgs_per_s), fmt_rate(t.bytes_per_s)));
        let mem = r.bytes_vs_memcpy.map_or_else(dash, |x| format!("{x:.3}"));
        let _ = write!(
            s,
            "{:<22} {:<8} {:<8} {:>5} | {med:>10} {p99:>10} {p999:>10} {ratio:>8} | {mps:>8} {bps:>9} {mem:>8}",
            r.mechanism,
            r.class.name(),
            r.placement,
            fmt_size(r.size),
        );
        if let Some(e) = &r.error {
            let _ = write!(s, "  error: {e}");
        }
        s.push('\n');
    }
    s.push_str(
        "x floor: median round trip over floor-spin (polling) or floor-futex (blocking), same placement; \
         x memcpy: bytes/s over in-process memcpy of the same size\n",
    );
    s
}

fn num(x: Option<f64>) -> serde_json::Value {
    x.filter(|x| x.is_finite()).map_or(serde_json::Value::Null, serde_json::Value::from)
}

/// One record as a JSON object with the keys of [`COLUMNS`].
pub fn record_json(r: &Record) -> serde_json::Value {
    serde_json::json!({
        "mechanism": r.mechanism,
        "class": r.class.name(),
        "placement": r.placement,
        "size": r.size,
        "rtt_median_ns": num(r.latency.map(|l| l.median)),
        "rtt_p99_ns": num(r.latency.map(|l| l.p99)),
        "rtt_p999_ns": num(r.latency.map(|l| l.p999)),
        "rtt_samples": r.latency.map(|l| l.samples),
        "rtt_vs_floor": num(r.rtt_vs_floor),
        "msgs_per_s": num(r.throughput.map(|t| t.msgs_per_s)),
        "bytes_per_s": num(r.throughput.map(|t| t.bytes_per_s)),
        "bytes_vs_memcpy": num(r.bytes_vs_memcpy),
        "error": r.error,
    })
}

/// results.json: the machine, the settings, every record and the goals' verdicts.
pub fn json(records: &[Record], verdicts: &[Verdict], machine: &str, duration: f64) -> serde_json::Value {
    serde_json::json!({
        "tool": "ipckit bench",
        "version": env!("CARGO_PKG_VERSION"),
        "machine": machine,
        "duration_s": duration,
        "columns": COLUMNS,
        "results": records.iter().map(record_json).collect::<Vec<_>>(),
        "verdict_columns": goals::COLUMNS,
        "verdicts": verdicts.iter().map(goals::verdict_json).collect::<Vec<_>>(),
    })
}

/// results.csv: a header of [`COLUMNS`], then one line per record (empty
/// cells for what was not measured).
pub fn csv(records: &[Record]) -> String {
    csv_of(COLUMNS, records.iter().map(record_json))
}

/// A CSV text: a header of `columns`, then one line per JSON object, its
/// values in column order (empty for null; commas, newlines and quotes in
/// strings become spaces).
pub fn csv_of(columns: &[&str], rows: impl Iterator<Item = serde_json::Value>) -> String {
    let mut s = columns.join(",");
    s.push('\n');
    for v in rows {
        let cells: Vec<String> = columns
            .iter()
            .map(|c| match &v[c] {
                serde_json::Value::Null => String::new(),
                serde_json::Value::String(t) => t.replace([',', '\n', '"'], " "),
                other => other.to_string(),
            })
            .collect();
        s.push_str(&cells.join(","));
        s.push('\n');
    }
    s
}

/// A line on the machine: kernel, CPUs, load.
pub fn machine_note(cpus: &[usize]) -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "Linux {}, {model}, {} CPUs allowed, loadavg {}",
        kernel.trim(),
        cpus.len(),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    )
}

/// Now in UTC as `YYYYMMDD-HHMMSS`.
pub fn timestamp() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86400) as i64, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}-{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::mechanisms::by_name;

    fn sample() -> Vec<Record> {
        let lat = |m| Some(Latency { median: m, p99: m * 2.0, p999: m * 3.0, samples: 100 });
        let mut v = vec![
            Record::new(by_name("floor-futex").unwrap(), "pinned", 8),
            Record::new(by_name("raw-pipe").unwrap(), "pinned", 8),
            Record::new(by_name("memcpy").unwrap(), "pinned", 8),
            Record::new(by_name("raw-pipe").unwrap(), "pinned", 64),
        ];
        v[0].latency = lat(1000.0);
        v[1].latency = lat(5000.0);
        v[1].throughput = Some(Throughput::new(100, 8, 1.0));
        v[2].throughput = Some(Throughput::new(1000, 8, 1.0));
        v[3].error = Some("broken, badly\nreally".into());
        v
    }

    #[test]
    fn ratios_against_floor_and_memcpy() {
        let mut v = sample();
        add_ratios(&mut v);
        assert_eq!(v[0].rtt_vs_floor, Some(1.0));
        assert_eq!(v[1].rtt_vs_floor, Some(5.0));
        assert_eq!(v[1].bytes_vs_memcpy, Some(0.1));
        assert_eq!(v[3].rtt_vs_floor, None);
    }

    #[test]
    fn csv_has_the_columns_and_one_line_per_record() {
        let mut v = sample();
        add_ratios(&mut v);
        let text = csv(&v);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0].split(',').collect::<Vec<_>>(), COLUMNS);
        assert_eq!(lines.len(), v.len() + 1);
        for l in &lines[1..] {
            assert_eq!(l.split(',').count(), COLUMNS.len(), "{l}");
        }
        assert!(lines[2].starts_with("raw-pipe,blocking,pinned,8,5000.0,"));
    }

    #[test]
    fn json_parses_back_with_every_column() {
        let v = sample();
        let text = json(&v, &[], "test machine", 0.1).to_string();
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        let results = back["results"].as_array().unwrap();
        assert_eq!(results.len(), v.len());
        for r in results {
            for c in COLUMNS {
                assert!(r.get(c).is_some(), "missing {c}");
            }
        }
        assert_eq!(results[1]["rtt_median_ns"], 5000.0);
    }

    #[test]
    fn table_and_formats() {
        let mut v = sample();
        add_ratios(&mut v);
        let t = table(&v);
        assert!(t.contains("raw-pipe"));
        assert!(t.contains("5.00x"));
        assert_eq!(fmt_ns(850.0), "850 ns");
        assert_eq!(fmt_ns(1500.0), "1.50 us");
        assert_eq!(fmt_size(1 << 20), "1M");
        assert_eq!(fmt_size(4096), "4K");
        assert_eq!(fmt_size(8), "8");
        assert_eq!(timestamp().len(), 15);
    }
}
