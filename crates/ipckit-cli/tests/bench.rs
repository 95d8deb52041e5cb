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

const VERDICT_COLUMNS: &[&str] = &[
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

    // Placements: same-cpu and unpinned always, pinned with two CPUs or more.
    let placements: Vec<&str> = results.iter().map(|r| r["placement"].as_str().unwrap()).collect();
    let two_cpus = std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2);
    for p in ["same-cpu", "unpinned"].into_iter().chain(two_cpus.then_some("pinned")) {
        assert!(placements.contains(&p), "no {p} results: {placements:?}");
    }

    // Verdicts: ipckit-pipe against raw-pipe (latency and messages/s) in every
    // placement, each with a ratio and met true or false (whatever the speed).
    assert!(stdout.contains("Goals (issue 7)"), "{stdout}");
    let verdicts = json["verdicts"].as_array().expect("verdicts array");
    for p in ["same-cpu", "unpinned"].into_iter().chain(two_cpus.then_some("pinned")) {
        let of_p: Vec<_> = verdicts.iter().filter(|v| v["placement"] == p).collect();
        assert_eq!(of_p.len(), 2, "{p}: {of_p:?}");
        for v in of_p {
            for c in VERDICT_COLUMNS {
                assert!(v.get(c).is_some(), "verdict without {c}: {v}");
            }
            assert_eq!(
                (v["goal"].as_str(), v["subject"].as_str()),
                (Some("transport-vs-raw"), Some("ipckit-pipe"))
            );
            assert_eq!(v["baseline"], "raw-pipe");
            assert!(v["ratio"].as_f64().unwrap() > 0.0, "{v}");
            assert!(v["met"].is_boolean(), "{v}");
            assert_eq!(v["verdict"], if v["met"] == true { "met" } else { "missed" });
        }
    }
    let vcsv = std::fs::read_to_string(out.join("verdicts.csv")).unwrap();
    let mut vlines = vcsv.lines();
    assert_eq!(vlines.next().unwrap().split(',').collect::<Vec<_>>(), VERDICT_COLUMNS);
    let vrows: Vec<&str> = vlines.collect();
    assert_eq!(vrows.len(), verdicts.len());
    for row in vrows {
        let cells: Vec<&str> = row.split(',').collect();
        assert_eq!(cells.len(), VERDICT_COLUMNS.len(), "{row}");
        assert!(cells[6].parse::<f64>().is_ok(), "{row}");
        assert!(cells[9] == "met" || cells[9] == "missed", "{row}");
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
        "raw-seqpacket",
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
    quick_run(filter, extra)["results"].as_array().expect("results array").clone()
}

/// Runs `ipckit bench --quick --filter <filter>` plus `extra` (120 s at most)
/// and returns its whole JSON, after checking that no measurement failed.
fn quick_run(filter: &str, extra: &[&str]) -> serde_json::Value {
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
    for r in json["results"].as_array().expect("results array") {
        assert!(r["error"].is_null(), "a measurement failed: {r}");
        assert!(r["rtt_median_ns"].as_f64().unwrap() > 0.0, "{r}");
    }
    json
}

#[test]
fn quick_signal_run_measures_ipckit_and_raw_signals() {
    let results = quick_results("signal", &[]);
    for m in ["ipckit-signal", "ipckit-signal-blocked", "raw-signal"] {
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

#[test]
fn naming_rows_run_the_server_in_the_peer_process() {
    let results = quick_results("naming", &["--placement", "pinned,unpinned"]);
    for m in ["ipckit-naming-stat", "ipckit-naming-stat-server", "ipckit-naming-lookup"] {
        assert!(results.iter().any(|r| r["mechanism"] == m), "no {m} row: {results:?}");
    }
}

#[test]
fn same_cpu_placement_alone() {
    let results = quick_results("raw-pipe,floor", &["--placement", "same-cpu", "--sizes", "8"]);
    assert!(results.iter().all(|r| r["placement"] == "same-cpu"), "{results:?}");
    for m in ["raw-pipe", "floor-spin", "floor-futex"] {
        assert!(results.iter().any(|r| r["mechanism"] == m), "no {m} row: {results:?}");
    }
}

#[test]
fn shm_rpc_goals_have_verdicts() {
    let json = quick_run("shm-rpc,floor", &["--placement", "unpinned", "--sizes", "8,4096"]);
    let verdicts = json["verdicts"].as_array().expect("verdicts array");
    for goal in ["rpc-spin-vs-floor", "rpc-block-vs-futex"] {
        let v =
            verdicts.iter().find(|v| v["goal"] == goal).unwrap_or_else(|| panic!("no {goal}: {verdicts:?}"));
        assert!(v["met"].is_boolean() && v["ratio"].as_f64().unwrap() > 0.0, "{v}");
        assert_eq!(v["size"], 8, "{v}");
    }
    // iceoryx2 is a peer library: measured only with --features peers.
    let ice = verdicts.iter().find(|v| v["goal"] == "rpc-vs-iceoryx2").expect("an iceoryx2 verdict");
    assert_eq!(ice["verdict"], "not measured", "{ice}");
    assert!(ice["met"].is_null(), "{ice}");
}

#[cfg(feature = "peers")]
#[test]
fn quick_iceoryx2_run_compares_with_the_shm_rpc() {
    let json = quick_run("iceoryx2,shm-rpc-spin", &["--placement", "unpinned", "--sizes", "8,4096"]);
    let results = json["results"].as_array().unwrap();
    for m in ["peer-iceoryx2-rr", "peer-iceoryx2-pubsub"] {
        let rows: Vec<_> = results.iter().filter(|r| r["mechanism"] == m).collect();
        assert_eq!(rows.len(), 2, "{m}: {results:?}");
        for r in rows {
            assert!(r["bytes_per_s"].as_f64().unwrap() > 0.0, "{r}");
        }
    }
    let verdicts = json["verdicts"].as_array().unwrap();
    let v = verdicts.iter().find(|v| v["goal"] == "rpc-vs-iceoryx2").expect("an iceoryx2 verdict");
    assert!(v["met"].is_boolean() && v["ratio"].as_f64().unwrap() > 0.0, "{v}");
}
