//! `ipckit bench` end to end: a quick, filtered run writes its table, JSON,
//! CSV and SVG files. Never asserts on speed.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const COLUMNS: &[&str] = &[
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

fn ipckit() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ipckit"))
}

fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ipckit-bench-test-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Starts with `<svg` (after an optional XML declaration) and every tag is closed in order.
fn balanced_svg(text: &str) -> bool {
    let mut body = text.trim_start();
    if let Some(rest) = body.strip_prefix("<?xml") {
        body = rest.split_once("?>").map_or("", |(_, b)| b.trim_start());
    }
    if !body.starts_with("<svg") {
        return false;
    }
    let mut stack = Vec::new();
    let mut rest = body;
    while let Some(open) = rest.find('<') {
        let Some(len) = rest[open..].find('>') else { return false };
        let tag = &rest[open + 1..open + len];
        rest = &rest[open + len + 1..];
        if tag.starts_with('!') || tag.starts_with('?') || tag.ends_with('/') {
            continue;
        }
        let name: String = tag.trim_start_matches('/').chars().take_while(|c| c.is_alphanumeric()).collect();
        if tag.starts_with('/') {
            if stack.pop() != Some(name) {
                return false;
            }
        } else {
            stack.push(name);
        }
    }
    stack.is_empty()
}

#[test]
fn quick_pipe_run_writes_every_file() {
    let out = temp_dir("quick");
    let mut child = ipckit()
        .args(["bench", "--quick", "--filter", "pipe", "--out"])
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ipckit bench");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ipckit bench --quick --filter pipe did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("raw-pipe") && stdout.contains("ipckit-pipe"), "{stdout}");
    assert!(stdout.contains("x floor"), "{stdout}");

    // JSON: parses, has every column in every result, only pipe mechanisms.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let results = json["results"].as_array().expect("results array");
    assert!(!results.is_empty());
    for r in results {
        for c in COLUMNS {
            assert!(r.get(c).is_some(), "result without {c}: {r}");
        }
        assert!(r["mechanism"].as_str().unwrap().contains("pipe"));
        assert!(r["error"].is_null(), "a measurement failed: {r}");
        assert!(r["rtt_median_ns"].as_f64().unwrap() > 0.0);
        assert!(r["rtt_p999_ns"].as_f64().unwrap() >= r["rtt_median_ns"].as_f64().unwrap());
        assert!(r["bytes_per_s"].as_f64().unwrap() > 0.0);
    }

    // CSV: the header, then one line per result with as many cells.
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next().unwrap().split(',').collect::<Vec<_>>(), COLUMNS);
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), results.len());
    for row in rows {
        let cells: Vec<&str> = row.split(',').collect();
        assert_eq!(cells.len(), COLUMNS.len(), "{row}");
        assert!(cells[3].parse::<usize>().is_ok(), "{row}");
        assert!(cells[4].parse::<f64>().is_ok(), "{row}");
    }

    // SVG plots: well-formed, with the mechanisms in the legend.
    for name in ["latency.svg", "throughput.svg"] {
        let svg = std::fs::read_to_string(out.join(name)).unwrap();
        assert!(balanced_svg(&svg), "{name} is not balanced SVG");
        assert!(svg.contains("raw-pipe"), "{name} has no raw-pipe line");
    }
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn list_names_the_mechanisms() {
    let output = ipckit().args(["bench", "--list"]).output().unwrap();
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    for m in [
        "floor-spin",
        "floor-futex",
        "raw-pipe",
        "ipckit-shm-rpc-spin",
        "ipckit-signal",
        "raw-signal",
        "ipckit-loan",
        "ipckit-naming-stat",
        "ipckit-naming-lookup",
        "raw-sysv-sem",
        "memcpy",
    ] {
        assert!(text.contains(m), "{text}");
    }
}

#[test]
fn a_filter_matching_nothing_is_an_error() {
    let out = temp_dir("none");
    let output =
        ipckit().args(["bench", "--filter", "no-such-mechanism", "--out"]).arg(&out).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("matches no mechanism"));
    assert!(!out.exists());
}

/// Runs `ipckit bench --quick --filter <filter>` plus `extra` (120 s at most)
/// and returns its JSON results, after checking that none failed.
fn quick_results(filter: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    let out = temp_dir(filter);
    let mut child = ipckit()
        .args(["bench", "--quick", "--filter", filter])
        .args(extra)
        .arg("--out")
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ipckit bench");
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ipckit bench --quick --filter {filter} did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "stderr:\n{}", String::from_utf8_lossy(&output.stderr));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    std::fs::remove_dir_all(&out).unwrap();
    let results = json["results"].as_array().expect("results array").clone();
    for r in &results {
        assert!(r["error"].is_null(), "a measurement failed: {r}");
        assert!(r["rtt_median_ns"].as_f64().unwrap() > 0.0, "{r}");
    }
    results
}

#[test]
fn quick_signal_run_measures_ipckit_and_raw_signals() {
    let results = quick_results("signal", &[]);
    for m in ["ipckit-signal", "raw-signal"] {
        assert!(results.iter().any(|r| r["mechanism"] == m), "no {m} row: {results:?}");
    }
}

#[test]
fn quick_loan_run_carries_a_mebibyte() {
    let results = quick_results("ipckit-loan", &["--sizes", "8,1048576", "--placement", "unpinned"]);
    assert_eq!(results.len(), 2, "{results:?}");
    for r in &results {
        assert!(r["bytes_per_s"].as_f64().unwrap() > 0.0, "{r}");
    }
    assert!(results.iter().any(|r| r["size"] == 1_048_576), "{results:?}");
}
