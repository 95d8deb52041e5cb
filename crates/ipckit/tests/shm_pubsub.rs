//! Publish-subscribe over shared memory: every subscriber sees every
//! message, history for late joiners, the two overflow policies, and
//! subscribers and publishers that die.

use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use ipckit::shm::pubsub::{Overflow, Publisher, Subscriber};
use ipckit::{RecvTimeoutError, SendTimeoutError};

mod support;

use support::{unique_name, Cleanup, Kid};

const LONG: Duration = Duration::from_secs(20);
const ROLE: &str = "IPCKIT_SHM_PUBSUB_ROLE";

fn name(tag: &str) -> String {
    unique_name("t-ps", tag)
}

fn kid(role: &str, seg: &str, n: u64) -> Kid {
    Kid(Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_main", "--nocapture", "--test-threads=1"])
        .env(ROLE, format!("{role}:{seg}:{n}"))
        .spawn()
        .unwrap())
}

fn exit_code(k: &mut Kid) -> i32 {
    k.code_within(LONG * 3)
}

#[test]
fn child_main() {
    let Ok(role) = std::env::var(ROLE) else { return };
    let mut parts = role.split(':');
    let (role, seg, n) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
    let n: u64 = n.parse().unwrap();
    let mut sub = Subscriber::subscribe(seg, 0).unwrap();
    match role {
        // Read n messages 0..n in order, then exit 0.
        "reader" => {
            for i in 0..n {
                let m = sub.recv_timeout(LONG).unwrap();
                if m.bytes() != i.to_le_bytes() {
                    std::process::exit(3);
                }
            }
            std::process::exit(if sub.lost() == 0 { 0 } else { 4 });
        }
        // Subscribe and never read (until killed).
        "sleeper" => {
            println!("subscribed");
            thread::sleep(LONG * 10);
        }
        other => panic!("unknown role {other}"),
    }
}

#[test]
fn every_subscriber_sees_every_message() {
    let n = name("all");
    let _c = Cleanup(n.clone());
    let mut publisher = Publisher::create(&n, 16, 64, 8, Overflow::Block, 0o600).unwrap();
    let subs: Vec<_> = (0..3)
        .map(|_| {
            let mut s = Subscriber::subscribe(&n, 0).unwrap();
            thread::spawn(move || {
                for i in 0..10_000u64 {
                    assert_eq!(s.recv_timeout(LONG).unwrap().bytes(), i.to_le_bytes());
                }
                s.lost()
            })
        })
        .collect();
    for i in 0..10_000u64 {
        publisher.send_timeout(i.to_le_bytes().to_vec(), LONG).unwrap();
    }
    for s in subs {
        assert_eq!(s.join().unwrap(), 0, "a subscriber lost messages under Overflow::Block");
    }
}

#[test]
fn subscriber_processes_see_every_message() {
    let n = name("procs");
    let _c = Cleanup(n.clone());
    let mut publisher = Publisher::create(&n, 64, 8, 8, Overflow::Block, 0o600).unwrap();
    let count = if cfg!(debug_assertions) { 50_000 } else { 200_000 };
    let mut kids: Vec<Kid> = (0..2).map(|_| kid("reader", &n, count)).collect();
    let until = Instant::now() + LONG;
    while publisher.subscribers() < 2 {
        assert!(Instant::now() < until, "subscribers did not attach");
        thread::sleep(Duration::from_millis(5));
    }
    for i in 0..count {
        publisher.send_timeout(i.to_le_bytes().to_vec(), LONG).unwrap();
    }
    for k in &mut kids {
        assert_eq!(exit_code(k), 0, "a subscriber process saw a gap, a duplicate or a loss");
    }
}

#[test]
fn a_slow_subscriber_loses_its_oldest_and_is_told() {
    let n = name("drop");
    let _c = Cleanup(n.clone());
    let mut publisher = Publisher::create(&n, 8, 16, 2, Overflow::DropOldest, 0o600).unwrap();
    let mut slow = Subscriber::subscribe(&n, 0).unwrap();
    for i in 0..100u64 {
        publisher.try_send(i.to_le_bytes().to_vec()).unwrap();
    }
    for i in 92..100u64 {
        assert_eq!(slow.recv_timeout(LONG).unwrap().bytes(), i.to_le_bytes());
    }
    assert_eq!(slow.lost(), 92);
    assert!(matches!(slow.try_recv(), Err(ipckit::TryRecvError::Empty)));
}

#[test]
fn late_joiners_get_bounded_history() {
    let n = name("history");
    let _c = Cleanup(n.clone());
    let mut publisher = Publisher::create(&n, 8, 16, 4, Overflow::DropOldest, 0o600).unwrap();
    for i in 0..20u64 {
        publisher.send(i.to_le_bytes().to_vec()).unwrap();
    }
    let mut three = Subscriber::subscribe(&n, 3).unwrap();
    let mut all = Subscriber::subscribe(&n, 1000).unwrap();
    let mut none = Subscriber::subscribe(&n, 0).unwrap();
    publisher.send(20u64.to_le_bytes().to_vec()).unwrap();
    for i in 17..=20u64 {
        assert_eq!(three.recv_timeout(LONG).unwrap().bytes(), i.to_le_bytes());
    }
    // History is bounded by the ring: 8 slots.
    assert_eq!(all.recv_timeout(LONG).unwrap().bytes(), 13u64.to_le_bytes());
    assert_eq!(none.recv_timeout(LONG).unwrap().bytes(), 20u64.to_le_bytes());
}

#[test]
fn a_blocking_publisher_waits_for_the_slowest_and_not_for_the_dead() {
    let n = name("block");
    let _c = Cleanup(n.clone());
    let mut publisher = Publisher::create(&n, 4, 16, 4, Overflow::Block, 0o600).unwrap();
    let mut sub = Subscriber::subscribe(&n, 0).unwrap();
    for i in 0..4u64 {
        publisher.send_timeout(i.to_le_bytes().to_vec(), LONG).unwrap();
    }
    match publisher.send_timeout(b"fifth".to_vec(), Duration::from_millis(100)) {
        Err(SendTimeoutError::Timeout(m)) => assert_eq!(m.bytes(), b"fifth"),
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert_eq!(sub.recv_timeout(LONG).unwrap().bytes(), 0u64.to_le_bytes());
    publisher.send_timeout(b"fifth".to_vec(), LONG).unwrap();
    drop(sub);
    // A subscriber process that never reads and is killed holds nobody up.
    let mut sleeper = kid("sleeper", &n, 0);
    let until = Instant::now() + LONG;
    while publisher.subscribers() < 1 {
        assert!(Instant::now() < until, "sleeper did not attach");
        thread::sleep(Duration::from_millis(5));
    }
    let start = Instant::now();
    for i in 0..4u64 {
        publisher.send_timeout(i.to_le_bytes().to_vec(), LONG).unwrap();
    }
    assert!(
        publisher.send_timeout(b"x".to_vec(), Duration::from_millis(100)).is_err(),
        "the sleeper is alive"
    );
    let _ = sleeper.0.kill();
    let _ = sleeper.0.wait();
    publisher.send_timeout(b"after".to_vec(), LONG).unwrap();
    assert!(start.elapsed() < LONG);
}

#[test]
fn subscribers_drain_then_see_the_publisher_gone() {
    let n = name("gone");
    let _c = Cleanup(n.clone());
    let mut publisher = Publisher::create(&n, 8, 16, 2, Overflow::Block, 0o600).unwrap();
    let mut sub = Subscriber::subscribe(&n, 0).unwrap();
    publisher.send("last words").unwrap();
    drop(publisher);
    assert_eq!(sub.recv_timeout(LONG).unwrap().bytes(), b"last words");
    assert!(matches!(sub.recv_timeout(LONG), Err(RecvTimeoutError::Disconnected)));
}
