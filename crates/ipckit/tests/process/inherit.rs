//! Inheritance: a child gets exactly the handles it is given, by name, and
//! nothing else the parent has open, even descriptors without close-on-exec.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsFd;

use ipckit::spawn::{self, Inherit};
use ipckit::{pipe, Capacity, Connection, Error, Receiver, SocketKind};
use rustix::io::{fcntl_getfd, fcntl_setfd, FdFlags};

use super::harness::{param, report, spawn, TempDir, LONG};

/// The descriptors open in this process, by number, with what they point to.
///
/// Listing `/proc/self/fd` itself needs a descriptor; it is closed again
/// before the links are read, so it is the one entry that no longer
/// resolves and is left out (its count is returned too).
fn open_fds() -> (BTreeMap<i32, String>, usize) {
    let numbers: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .map(|e| e.expect("dir entry").file_name().to_str().expect("utf-8").parse().expect("fd number"))
        .collect();
    let mut fds = BTreeMap::new();
    let mut gone = 0;
    for fd in numbers {
        match std::fs::read_link(format!("/proc/self/fd/{fd}")) {
            Ok(target) => {
                fds.insert(fd, target.display().to_string());
            }
            Err(_) => gone += 1,
        }
    }
    (fds, gone)
}

fn encode_fds(fds: &BTreeMap<i32, String>) -> String {
    fds.iter().map(|(fd, t)| format!("{fd}={t}")).collect::<Vec<_>>().join("\t")
}

fn decode_fds(s: &str) -> BTreeMap<i32, String> {
    s.split('\t')
        .filter(|e| !e.is_empty())
        .map(|e| {
            let (fd, t) = e.split_once('=').expect("fd=target");
            (fd.parse().expect("fd number"), t.to_owned())
        })
        .collect()
}

/// Child: lists its descriptors before touching any handle, then uses the
/// handles (`MODE`: `receiver`, or `conn+receiver`).
pub(super) fn child_list_fds() {
    let (fds, gone) = open_fds();
    report(format!("transient {gone}"));
    report(format!("fds {}", encode_fds(&fds)));
    report(format!("names {}", spawn::inherited_names().join(",")));
    match param("MODE").as_str() {
        "receiver" => {
            let mut rx: Receiver = spawn::inherited("jobs").expect("inherited jobs");
            let m = rx.recv_timeout(LONG).expect("recv on the inherited receiver");
            report(format!("got {}", String::from_utf8_lossy(m.bytes())));
        }
        "conn+receiver" => {
            let mut conn: Connection = spawn::inherited("conn").expect("inherited conn");
            let mut rx: Receiver = spawn::inherited("jobs").expect("inherited jobs");
            conn.send_timeout(encode_fds(&fds), LONG).expect("send fds over the inherited connection");
            let got: Vec<String> = (0..3)
                .map(|_| String::from_utf8_lossy(rx.recv_timeout(LONG).expect("recv").bytes()).into_owned())
                .collect();
            conn.send_timeout(format!("got {}", got.join(",")), LONG).expect("send");
        }
        other => panic!("unknown MODE {other}"),
    }
}

/// Opens a file and clears its close-on-exec flag: the kind of descriptor a
/// careless library leaves behind, which a child must still not inherit.
fn leaky_file(dir: &TempDir) -> File {
    let f = File::create(dir.join("leaky-file")).expect("create");
    fcntl_setfd(&f, FdFlags::empty()).expect("clear FD_CLOEXEC");
    assert!(!fcntl_getfd(&f).unwrap().contains(FdFlags::CLOEXEC));
    f
}

/// Checks a child's descriptor table: stdio plus `extra` descriptors whose
/// link targets start with the given prefixes, and nothing of the leaks.
fn check_fds(fds: &BTreeMap<i32, String>, mut want: Vec<&str>, leak: &str) {
    for std in 0..3 {
        assert!(fds.contains_key(&std), "child lacks stdio descriptor {std}: {fds:?}");
    }
    let mut extra: Vec<&str> = fds.range(3..).map(|(_, t)| t.as_str()).collect();
    extra.sort();
    want.sort();
    assert_eq!(extra.len(), want.len(), "child has other descriptors than the ones handed to it: {fds:?}");
    for (got, prefix) in extra.iter().zip(&want) {
        assert!(got.starts_with(prefix), "descriptor {got} is not a {prefix}: {fds:?}");
    }
    assert!(!fds.values().any(|t| t.contains(leak)), "the parent's leaky file reached the child: {fds:?}");
}

#[test]
fn a_child_inherits_only_the_receiver_it_is_given() {
    let dir = TempDir::new("inh-rx");
    let leak = leaky_file(&dir);
    // A whole pipe without close-on-exec, too.
    let (leak_r, leak_w) = rustix::pipe::pipe().expect("pipe");
    let (mut tx, rx) = pipe::channel(Capacity::Kernel).unwrap();
    let mut kit = Inherit::new();
    kit.pass("jobs", rx).unwrap();
    let mut kid = spawn("inherit-fds", &[("MODE", "receiver")], kit);

    let transient: usize = kid.expect("transient").parse().unwrap();
    assert!(transient <= 1, "more than the listing's own descriptor vanished: {transient}");
    let fds = decode_fds(&kid.expect("fds"));
    check_fds(&fds, vec!["pipe:["], "leaky-file");
    assert_eq!(kid.expect("names"), "jobs");
    tx.send_timeout("hello child", LONG).unwrap();
    assert_eq!(kid.expect("got"), "hello child");
    kid.wait_success();
    // The leaks were open (and inheritable) in the parent all along.
    for fd in [leak.as_fd(), leak_r.as_fd(), leak_w.as_fd()] {
        assert!(!fcntl_getfd(fd).unwrap().contains(FdFlags::CLOEXEC));
    }
}

#[test]
fn a_child_inherits_a_connection_and_a_bounded_receiver() {
    let dir = TempDir::new("inh-conn");
    let _leak = leaky_file(&dir);
    let (mut mine, theirs) = Connection::pair(SocketKind::SeqPacket).unwrap();
    // A bounded pipe receiver owns two descriptors (data in, credit out).
    let (mut tx, rx) = pipe::channel(Capacity::Bounded(2)).unwrap();
    let mut kit = Inherit::new();
    kit.pass("conn", theirs).unwrap().pass("jobs", rx).unwrap();
    let mut kid = spawn("inherit-fds", &[("MODE", "conn+receiver")], kit);

    let transient: usize = kid.expect("transient").parse().unwrap();
    assert!(transient <= 1, "more than the listing's own descriptor vanished: {transient}");
    let fds = decode_fds(&kid.expect("fds"));
    check_fds(&fds, vec!["socket:[", "pipe:[", "pipe:["], "leaky-file");
    assert_eq!(kid.expect("names"), "conn,jobs");
    // The same table, sent over the inherited connection.
    let over_conn = mine.recv_timeout(LONG).unwrap();
    assert_eq!(decode_fds(&String::from_utf8_lossy(over_conn.bytes())), fds);
    // Three messages through a window of two: credits flow back over the second pipe.
    for m in ["a", "b", "c"] {
        tx.send_timeout(m, LONG).unwrap();
    }
    assert_eq!(mine.recv_timeout(LONG).unwrap().bytes(), b"got a,b,c");
    kid.wait_success();
}

fn outcome<T>(r: &Result<T, Error>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(Error::NotFound(_)) => "NotFound".into(),
        Err(Error::BadHandle(_)) => "BadHandle".into(),
        Err(e) => format!("{e:?}"),
    }
}

/// Child: takes handles by name, including ones that are not there.
pub(super) fn child_take_by_name() {
    report(format!("missing {}", outcome(&spawn::inherited::<Receiver>("missing"))));
    let first = spawn::inherited::<Receiver>("jobs");
    report(format!("first {}", outcome(&first)));
    report(format!("second {}", outcome(&spawn::inherited::<Receiver>("jobs"))));
    report(format!("wrong-kind {}", outcome(&spawn::inherited::<Connection>("other"))));
    report(format!("left {}", spawn::inherited_names().join(",")));
    let m = first.expect("jobs").recv_timeout(LONG).expect("recv");
    report(format!("got {}", String::from_utf8_lossy(m.bytes())));
}

#[test]
fn inherited_handles_are_found_by_name_once() {
    let (mut tx, rx) = pipe::channel(Capacity::Kernel).unwrap();
    let (_tx2, rx2) = pipe::channel(Capacity::Kernel).unwrap();
    let mut kit = Inherit::new();
    kit.pass("jobs", rx).unwrap().pass("other", rx2).unwrap();
    let mut kid = spawn("inherit-names", &[], kit);
    assert_eq!(kid.expect("missing"), "NotFound");
    assert_eq!(kid.expect("first"), "ok");
    assert_eq!(kid.expect("second"), "NotFound");
    assert_eq!(kid.expect("wrong-kind"), "BadHandle");
    assert_eq!(kid.expect("left"), "", "a handle taken (even as the wrong kind) is gone");
    tx.send_timeout("still works", LONG).unwrap();
    assert_eq!(kid.expect("got"), "still works");
    kid.wait_success();
}

#[test]
fn a_name_cannot_be_passed_twice() {
    let (_tx, rx) = pipe::channel(Capacity::Kernel).unwrap();
    let (_tx2, rx2) = pipe::channel(Capacity::Kernel).unwrap();
    let mut kit = Inherit::new();
    kit.pass("jobs", rx).unwrap();
    assert!(matches!(kit.pass("jobs", rx2), Err(Error::AlreadyExists(_))));
    // And without a table from a parent, nothing is inherited at all.
    assert!(matches!(spawn::inherited::<Receiver>("jobs"), Err(Error::NotFound(_))));
}
