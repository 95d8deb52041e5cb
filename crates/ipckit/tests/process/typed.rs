//! Serde-typed channels across processes, and what a receiver does with
//! bytes that are not a valid encoding.

use serde::{Deserialize, Serialize};

use ipckit::spawn::{self, Inherit};
use ipckit::{pipe, Capacity, Receiver, RecvTimeoutError, Sender, TypedReceiver, TypedSender};

use super::harness::{spawn, LONG};

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Job {
    id: u32,
    name: String,
    weights: Vec<f64>,
    note: Option<String>,
}

fn job(i: u32) -> Job {
    Job {
        id: i,
        name: format!("job number {i}"),
        weights: (0..i).map(|k| f64::from(k) * 0.5 - 1.25).collect(),
        note: (i % 3 == 0).then(|| "ü and ∑ survive".repeat(i as usize)),
    }
}

/// What the echoing child does to a job.
fn transform(j: Job) -> Job {
    Job { id: j.id * 2, name: j.name.to_uppercase(), ..j }
}

/// Child: receives jobs on "jobs" and sends each back, transformed, on "results".
pub(super) fn child_echo() {
    let mut rx = TypedReceiver::<Job>::new(spawn::inherited::<Receiver>("jobs").expect("jobs"));
    let mut tx = TypedSender::<Job>::new(spawn::inherited::<Sender>("results").expect("results"));
    loop {
        match rx.recv_timeout(LONG) {
            Ok(j) => tx.send_timeout(transform(j), LONG).expect("send result"),
            Err(RecvTimeoutError::Disconnected) => break,
            Err(e) => panic!("recv: {e:?}"),
        }
    }
}

#[test]
fn typed_values_round_trip_through_a_child() {
    let (jobs_tx, jobs_rx) = pipe::channel(Capacity::Bounded(4)).unwrap();
    let (results_tx, results_rx) = pipe::channel(Capacity::Kernel).unwrap();
    let mut kit = Inherit::new();
    kit.pass("jobs", jobs_rx).unwrap().pass("results", results_tx).unwrap();
    let mut kid = spawn("typed-echo", &[], kit);
    let mut jobs = TypedSender::<Job>::new(jobs_tx);
    let mut results = TypedReceiver::<Job>::new(results_rx);
    for i in 0..20 {
        jobs.send_timeout(job(i), LONG).unwrap();
        assert_eq!(results.recv_timeout(LONG).unwrap(), transform(job(i)));
    }
    drop(jobs);
    assert!(matches!(results.recv_timeout(LONG), Err(RecvTimeoutError::Disconnected)));
    kid.wait_success();
}

/// Child: sends a valid job, three messages that are not jobs, and another valid job.
pub(super) fn child_garbage() {
    let mut tx = TypedSender::<Job>::new(spawn::inherited::<Sender>("out").expect("out"));
    tx.send_timeout(job(1), LONG).expect("send");
    let mut raw = tx.into_inner();
    let encoded = postcard::to_stdvec(&job(5)).expect("encode");
    let garbage: [&[u8]; 3] = [b"", &[0xff; 7], &encoded[..encoded.len() / 2]];
    for g in garbage {
        raw.send_timeout(g, LONG).expect("send garbage");
    }
    let mut tx = TypedSender::<Job>::new(raw);
    tx.send_timeout(job(2), LONG).expect("send");
}

#[test]
fn undecodable_messages_are_errors_and_the_channel_goes_on() {
    let (tx, rx) = pipe::channel(Capacity::Kernel).unwrap();
    let mut kit = Inherit::new();
    kit.pass("out", tx).unwrap();
    let mut kid = spawn("typed-garbage", &[], kit);
    let mut rx = TypedReceiver::<Job>::new(rx);
    assert_eq!(rx.recv_timeout(LONG).unwrap(), job(1));
    for i in 0..3 {
        let r = rx.recv_timeout(LONG);
        assert!(matches!(r, Err(RecvTimeoutError::Decode(_))), "garbage message {i}: {r:?}");
    }
    assert_eq!(rx.recv_timeout(LONG).unwrap(), job(2));
    assert!(matches!(rx.recv_timeout(LONG), Err(RecvTimeoutError::Disconnected)));
    kid.wait_success();
}
