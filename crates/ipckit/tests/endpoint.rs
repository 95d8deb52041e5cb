//! Microkernel-style endpoints (`ipckit::endpoint`): badged capabilities
//! held by client processes, one-shot reply capabilities (also answered by
//! another process), capability transfer with and without the grant right,
//! rendezvous sends, a dying server, hostile holders, the CSpace table.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ipckit::endpoint::{CSpace, Cap, Endpoint, Object, ReplyCap, Rights};
use ipckit::spawn::{self, Inherit};
use ipckit::{CallError, Connection, Message, RecvError, SocketKind, Transferable};

mod support;

use support::Kid;

const LONG: Duration = Duration::from_secs(20);
const ROLE: &str = "IPCKIT_ENDPOINT_ROLE";

/// Child roles. Returns immediately in a normal test run.
#[test]
fn child_main() {
    let Ok(role) = std::env::var(ROLE) else { return };
    match role.as_str() {
        // 100 calls through the inherited capability; each answer must be
        // "badge <b> saw <n>" for the badge given in the role's argument.
        r if r.starts_with("caller:") => {
            let badge: u64 = r["caller:".len()..].parse().unwrap();
            let mut cap: Cap = spawn::inherited("cap").unwrap();
            for n in 0..100u32 {
                let got = cap.call(n.to_le_bytes().to_vec()).unwrap();
                assert_eq!(got.bytes(), format!("badge {badge} saw {n}").as_bytes());
            }
        }
        // Answer the call whose reply capability was inherited.
        "worker" => {
            let reply: ReplyCap = spawn::inherited("reply").unwrap();
            reply.reply(format!("answered by {}", std::process::id())).unwrap();
        }
        // Own an endpoint: hand a capability to the parent over the
        // inherited connection, take one call and exit without answering.
        "dying-server" => {
            let mut conn: Connection = spawn::inherited("conn").unwrap();
            let mut ep = Endpoint::new();
            let cap = ep.mint(1, Rights::SEND).unwrap();
            conn.send(Message::new(b"cap".to_vec()).with(cap).unwrap()).unwrap();
            let got = ep.recv_timeout(LONG).unwrap();
            assert!(got.reply.is_some());
            std::process::exit(0);
        }
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}

fn spawn_with<T: ipckit::Transferable>(role: &str, name: &str, object: T) -> Kid {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child_main", "--nocapture", "--test-threads=1"]).env(ROLE, role);
    let mut inherit = Inherit::new();
    inherit.pass(name, object).unwrap();
    Kid(inherit.spawn(&mut cmd).unwrap())
}

/// Three client processes, each holding a capability with its own badge;
/// the server learns every call's badge from the capability it came
/// through, answers in a `reply_recv` loop, and sees `Disconnected` once
/// every holder is gone.
#[test]
fn badged_calls_from_client_processes() {
    let mut ep = Endpoint::new();
    let mut kids = Vec::new();
    for badge in [10u64, 20, 30] {
        let cap = ep.mint(badge, Rights::SEND).unwrap();
        kids.push(spawn_with(&format!("caller:{badge}"), "cap", cap));
    }
    let mut counts = std::collections::BTreeMap::new();
    let mut got = ep.recv_timeout(LONG).unwrap();
    loop {
        let n = u32::from_le_bytes(got.message.bytes().try_into().unwrap());
        *counts.entry(got.badge).or_insert(0) += 1;
        let answer = format!("badge {} saw {n}", got.badge);
        match ep.reply_recv(got.reply.take().expect("a call"), answer) {
            Ok(next) => got = next,
            Err(RecvError::Disconnected) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(counts.into_iter().collect::<Vec<_>>(), vec![(10, 100), (20, 100), (30, 100)]);
    for mut k in kids {
        assert_eq!(k.code_within(LONG), 0, "a caller saw a wrong answer");
    }
    assert_eq!(ep.capabilities(), 0);
}

/// The server hands a call's one-shot reply capability to a worker process,
/// which answers the caller directly.
#[test]
fn a_reply_capability_answered_by_another_process() {
    let mut ep = Endpoint::new();
    let mut cap = ep.mint(1, Rights::SEND).unwrap();
    let caller = thread::spawn(move || cap.call("who answers?").unwrap());
    let got = ep.recv_timeout(LONG).unwrap();
    let mut worker = spawn_with("worker", "reply", got.reply.unwrap());
    let answer = caller.join().unwrap();
    assert_eq!(answer.bytes(), format!("answered by {}", worker.0.id()).as_bytes());
    assert_eq!(worker.code_within(LONG), 0);
}

/// Capabilities travel in messages only through a capability with the
/// grant right; the receiver gets them installed in its CSpace and can use
/// them.
#[test]
fn capabilities_travel_only_with_the_grant_right() {
    // Endpoint B, served by a thread: answers "b:<badge>".
    let mut b = Endpoint::new();
    let b_cap = b.mint(99, Rights::SEND).unwrap();
    let b_cap2 = b.mint(98, Rights::SEND).unwrap();
    let b_server = thread::spawn(move || loop {
        match b.recv_timeout(LONG) {
            Ok(r) => {
                let badge = r.badge;
                r.reply.unwrap().reply(format!("b:{badge}")).unwrap();
            }
            Err(_) => return,
        }
    });
    let mut cs = CSpace::new();
    let a = cs.insert(Object::Endpoint(Endpoint::new()));
    let granting = cs.mint(a, 1, Rights::GRANT).unwrap();
    let plain = cs.mint(a, 2, Rights::SEND).unwrap();
    let Some(Object::Cap(_)) = cs.get(granting) else { panic!("a cap in the slot") };
    let mut g = match cs.remove(granting) {
        Some(Object::Cap(c)) => c,
        _ => unreachable!(),
    };
    let mut p = match cs.remove(plain) {
        Some(Object::Cap(c)) => c,
        _ => unreachable!(),
    };
    let sender = thread::spawn(move || {
        // Without the grant right: refused, and the sender is told.
        let refused = p.call(Message::new(b"take this".to_vec()).with(b_cap2).unwrap());
        assert!(
            matches!(&refused, Err(CallError::Io(e)) if e.kind() == std::io::ErrorKind::PermissionDenied),
            "{refused:?}"
        );
        // With it: delivered.
        g.call(Message::new(b"take this".to_vec()).with(b_cap).unwrap()).unwrap()
    });
    let d = cs.recv(a, LONG).unwrap();
    assert_eq!(d.badge, 1, "only the granted message arrives");
    assert_eq!(d.caps.len(), 1);
    // Use the received capability: a call to B through our table.
    let via = cs.call(d.caps[0], "hello b").unwrap();
    assert_eq!(via.bytes(), b"b:99");
    cs.reply(d.reply.unwrap(), "thanks").unwrap();
    assert_eq!(sender.join().unwrap().bytes(), b"thanks");
    // Empty and wrong slots are errors.
    assert!(cs.call(d.reply.unwrap(), "x").is_err(), "the reply slot was used up");
    assert!(cs.reply(a, "x").is_err(), "an endpoint is not a reply capability");
    drop(cs);
    b_server.join().unwrap();
}

/// `send` is a rendezvous: it returns only once the server received the
/// message; with nobody receiving it times out.
#[test]
fn send_returns_once_the_server_received() {
    let mut ep = Endpoint::new();
    let mut cap = ep.mint(5, Rights::SEND).unwrap().with_timeout(LONG);
    let receiving = Arc::new(AtomicBool::new(false));
    let flag = receiving.clone();
    let sender = thread::spawn(move || {
        cap.send("one way").unwrap();
        assert!(flag.load(Ordering::SeqCst), "send returned before the server received");
        let mut cap = cap.with_timeout(Duration::from_millis(200));
        let t = Instant::now();
        let r = cap.send("nobody takes this");
        assert!(
            matches!(&r, Err(ipckit::SendError::Io { source, .. }) if source.kind() == std::io::ErrorKind::TimedOut),
            "{r:?}"
        );
        assert!(t.elapsed() >= Duration::from_millis(200));
    });
    thread::sleep(Duration::from_millis(200));
    receiving.store(true, Ordering::SeqCst);
    let got = ep.recv_timeout(LONG).unwrap();
    assert_eq!((got.badge, got.message.bytes(), got.reply.is_none()), (5, &b"one way"[..], true));
    sender.join().unwrap();
}

/// A server that dies (or drops a reply capability unanswered) ends the
/// call at once, not at its timeout.
#[test]
fn a_dying_server_ends_calls_at_once() {
    let (ours, theirs) = Connection::pair(SocketKind::Stream).unwrap();
    let mut kid = spawn_with("dying-server", "conn", theirs);
    let mut ours = ours;
    let mut msg = ours.recv_timeout(LONG).unwrap();
    let mut cap: Cap = msg.take().unwrap();
    let t = Instant::now();
    let r = cap.call_timeout("answer me", Duration::from_secs(60));
    assert!(matches!(r, Err(CallError::Disconnected)), "{r:?}");
    assert!(t.elapsed() < LONG, "took {:?}", t.elapsed());
    assert_eq!(kid.code_within(LONG), 0);
    let r = cap.call_timeout("again", Duration::from_secs(60));
    assert!(matches!(r, Err(CallError::Disconnected)), "{r:?}");
}

/// A holder that writes garbage on its capability's socket loses that
/// capability; the endpoint keeps serving the others.
#[test]
fn a_hostile_holder_loses_its_capability_and_nothing_else() {
    let mut ep = Endpoint::new();
    let hostile = ep.mint(66, Rights::GRANT).unwrap();
    let mut good = ep.mint(1, Rights::SEND).unwrap();
    // The raw socket under the capability.
    let mut raw = Connection::from_handle(hostile.into_handle().unwrap()).unwrap();
    raw.send(Vec::<u8>::new()).unwrap(); // no operation byte
    raw.send(vec![2u8, 1, 2, 3]).unwrap(); // a call without a reply capability
    raw.send(vec![9u8]).unwrap(); // an unknown operation
    let caller = thread::spawn(move || good.call("fine").unwrap());
    let got = ep.recv_timeout(LONG).unwrap();
    assert_eq!((got.badge, got.message.bytes()), (1, &b"fine"[..]), "garbage is never delivered");
    got.reply.unwrap().reply("ok").unwrap();
    assert_eq!(caller.join().unwrap().bytes(), b"ok");
    // Once every holder is gone, the endpoint says so.
    drop(raw);
    assert!(matches!(
        ep.recv_timeout(Duration::from_millis(300)),
        Err(ipckit::RecvTimeoutError::Disconnected)
    ));
}

/// A holder that floods sends without reading the answers cannot stall the
/// server: once its socket has no room for an answer it loses the
/// capability, and a good caller is still served.
#[test]
fn a_flooding_holder_cannot_stall_the_server() {
    let mut ep = Endpoint::new();
    let flood = ep.mint(66, Rights::SEND).unwrap();
    let mut good = ep.mint(1, Rights::SEND).unwrap().with_timeout(LONG);
    let mut raw = Connection::from_handle(flood.into_handle().unwrap()).unwrap();
    let flooder = thread::spawn(move || {
        // Sends, never reading an answer, until the endpoint hangs up.
        for _ in 0..1_000_000 {
            // A well-formed send (operation 1, number 0), answers never read.
            if raw.send_timeout(vec![1u8, 0, 0, 0, 0, 0, 0, 0, 0], Duration::from_secs(2)).is_err() {
                return;
            }
        }
        panic!("a million unanswered sends were all taken");
    });
    let caller = thread::spawn(move || good.call("still there?").unwrap());
    let t = Instant::now();
    let mut flooded = 0u64;
    loop {
        let got = ep.recv_timeout(LONG).unwrap();
        if got.badge == 1 {
            got.reply.unwrap().reply("yes").unwrap();
            break;
        }
        flooded += 1;
    }
    assert_eq!(caller.join().unwrap().bytes(), b"yes");
    assert!(t.elapsed() < LONG, "served after {:?} ({flooded} flood messages)", t.elapsed());
    // Drain until the flooder's capability is dropped (it stops being delivered).
    let until = Instant::now() + LONG;
    while ep.capabilities() > 0 && Instant::now() < until {
        match ep.recv_timeout(Duration::from_millis(100)) {
            Ok(_) | Err(ipckit::RecvTimeoutError::Timeout) => {}
            Err(_) => break,
        }
    }
    assert_eq!(ep.capabilities(), 0, "the flooder lost its capability (and the good one left)");
    flooder.join().unwrap();
}

/// Revoking a badge cuts its holders off at once; others keep working.
#[test]
fn revoking_a_badge_cuts_its_holders_off() {
    let mut ep = Endpoint::new();
    let mut doomed = ep.mint(13, Rights::SEND).unwrap();
    let mut kept = ep.mint(14, Rights::SEND).unwrap();
    assert_eq!(ep.revoke(13), 1);
    assert_eq!(ep.revoke(13), 0);
    let t = Instant::now();
    let r = doomed.call_timeout("still allowed?", Duration::from_secs(60));
    assert!(matches!(r, Err(CallError::Disconnected)), "{r:?}");
    assert!(t.elapsed() < LONG);
    let caller = thread::spawn(move || kept.call("and me?").unwrap());
    let got = ep.recv_timeout(LONG).unwrap();
    assert_eq!(got.badge, 14);
    got.reply.unwrap().reply("yes").unwrap();
    assert_eq!(caller.join().unwrap().bytes(), b"yes");
}
