//! The crash states of the ring, made by hand: each half-done step a
//! killed sender or receiver can leave behind, and what the survivors make
//! of it (the table in `ring.rs`).

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::ring::Head;
use super::*;

fn queue(tag: &str) -> MessageQueue {
    let name = format!("unit-mq-{}-{tag}", std::process::id());
    let _ = MessageQueue::remove_name(&name);
    MessageQueue::create(&name, QueueConfig::default()).unwrap()
}

/// The pid of a process that has exited and been reaped.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    assert!(!sys::process_alive(pid));
    pid
}

fn counts(q: &MessageQueue) -> (usize, usize) {
    let st = q.stat().unwrap();
    (st.messages, st.bytes)
}

/// Does what a sender does up to the tail's move, as `pid`, and stops.
fn half_send(q: &MessageQueue, pid: u32, mtype: i64, len: usize, move_tail: bool) -> u32 {
    let m = q.map();
    let ring = q.ring();
    let t = u64_at(m, TAILW).load(Ordering::Acquire);
    let (tpos, tbytes) = unpack(t);
    let w = ring.word(tpos).load(Ordering::Acquire);
    assert!(ring.free_for(tpos, w) && ring.claim_from(tpos, w, pid).is_ok());
    ring.describe(tpos, mtype, len, 0);
    if move_tail {
        u64_at(m, TAILW).store(pack(tpos + 1, tbytes + len as u32), Ordering::SeqCst);
    }
    tpos
}

#[test]
fn a_slot_whose_sender_died_after_moving_the_tail_is_skipped() {
    let q = queue("skip");
    q.send(1, b"before").unwrap();
    half_send(&q, dead_pid(), 2, 10, true);
    q.send(3, b"after").unwrap();
    assert_eq!(counts(&q), (3, 21), "the reserved message counts until it is skipped");
    assert_eq!(q.try_recv(Select::ANY, 64).unwrap(), (1, b"before".to_vec()));
    // The receiver waits out the filling slot, finds its sender dead, skips it.
    assert_eq!(q.recv_timeout(Select::ANY, 64, Duration::from_secs(5)).unwrap(), (3, b"after".to_vec()));
    assert_eq!(counts(&q), (0, 0));
    q.send(4, b"again").unwrap();
    assert_eq!(q.try_recv(Select::of(4), 64).unwrap(), (4, b"again".to_vec()));
    q.remove().unwrap();
}

#[test]
fn a_selective_receive_behind_a_dead_senders_slot_skips_it_too() {
    let q = queue("skipsel");
    half_send(&q, dead_pid(), 5, 3, true);
    q.send(7, b"seven").unwrap();
    assert_eq!(q.recv_timeout(Select::of(7), 64, Duration::from_secs(5)).unwrap(), (7, b"seven".to_vec()));
    assert_eq!(counts(&q), (0, 0));
    q.remove().unwrap();
}

#[test]
fn a_claim_left_by_a_dead_sender_is_taken_over() {
    let q = queue("claim");
    half_send(&q, dead_pid(), 2, 10, false);
    assert_eq!(counts(&q), (0, 0), "nothing was reserved");
    q.send_timeout(1, b"through", Duration::from_secs(5)).unwrap();
    assert_eq!(q.try_recv(Select::ANY, 64).unwrap(), (1, b"through".to_vec()));
    assert_eq!(counts(&q), (0, 0));
    q.remove().unwrap();
}

/// Leaves the lock held by a dead process, so the next locker repairs.
fn die_holding_the_lock(q: &MessageQueue) {
    u32_at(q.map(), LOCK).store(dead_pid(), Ordering::SeqCst);
}

#[test]
fn a_receive_that_read_the_message_but_did_not_move_the_head_leaves_it_queued() {
    let q = queue("pop");
    q.send(1, b"keep me").unwrap();
    {
        let g = q.lock(Deadline::after(Duration::from_secs(20))).unwrap();
        let head = g.settle_head(Deadline::after(Duration::from_secs(20))).unwrap();
        assert!(matches!(head, Head::Ready { mtype: 1, len: 7, .. }), "{head:?}");
        let mut text = [0u8; 7];
        q.ring().read(g.headw().0, &mut text);
        assert_eq!(&text, b"keep me");
        std::mem::forget(g);
    }
    die_holding_the_lock(&q);
    assert_eq!(q.recv_timeout(Select::ANY, 64, Duration::from_secs(5)).unwrap(), (1, b"keep me".to_vec()));
    assert_eq!(counts(&q), (0, 0));
    q.remove().unwrap();
}

#[test]
fn a_drain_interrupted_at_each_step_delivers_the_message_once() {
    for step in 0..2 {
        let q = queue(&format!("drain{step}"));
        q.send(1, b"head").unwrap();
        q.send(2, b"next").unwrap();
        {
            let g = q.lock(Deadline::after(Duration::from_secs(20))).unwrap();
            let head = g.settle_head(Deadline::after(Duration::from_secs(20))).unwrap();
            let Head::Ready { mtype, len, .. } = head else { panic!("{head:?}") };
            let ring = q.ring();
            let (hpos, hbytes) = g.headw();
            let mut text = vec![0; len];
            ring.read(hpos, &mut text);
            let c = g.build(mtype, &text).unwrap();
            g.set_link(c, C_ORIG, hpos);
            g.set_link(c, C_FROM, 1);
            g.put(HEAD, c);
            g.put(TAIL, c);
            g.put64(LISTW, 1, len as u32);
            if step == 1 {
                // Also moved the head (all but the unlock).
                g.put64(HEADW, hpos + 1, hbytes + len as u32);
            }
            std::mem::forget(g);
        }
        die_holding_the_lock(&q);
        assert_eq!(counts(&q), (2, 8), "step {step}");
        assert_eq!(q.try_recv(Select::ANY, 64).unwrap(), (1, b"head".to_vec()), "step {step}");
        assert_eq!(q.try_recv(Select::ANY, 64).unwrap(), (2, b"next".to_vec()), "step {step}");
        assert!(q.try_recv(Select::ANY, 64).is_err());
        assert_eq!(counts(&q), (0, 0));
        // The ring goes on working over the repaired slots, for laps.
        for i in 0..3 * q.slots {
            q.send(1 + i64::from(i % 3), &i.to_le_bytes()).unwrap();
            let want = if i % 2 == 0 { Select::ANY } else { Select::of(1 + i64::from(i % 3)) };
            assert_eq!(q.try_recv(want, 8).unwrap().1, i.to_le_bytes());
        }
        q.remove().unwrap();
    }
}

#[test]
fn long_texts_go_through_the_ring_by_reference_in_order() {
    let q = queue("long");
    let long = vec![9u8; 1000];
    q.send(1, b"short").unwrap();
    q.send(2, &long).unwrap();
    q.send(1, b"short again").unwrap();
    assert_eq!(counts(&q), (3, 1016));
    assert_eq!(q.try_recv(Select::of(-2), 2000).unwrap(), (1, b"short".to_vec()));
    assert_eq!(q.try_recv(Select::ANY, 2000).unwrap(), (2, long));
    assert_eq!(q.try_recv(Select::ANY, 2000).unwrap(), (1, b"short again".to_vec()));
    // A dead lock holder's repair keeps the chunks of a queued long text.
    q.send(3, &[5u8; 300]).unwrap();
    die_holding_the_lock(&q);
    assert_eq!(counts(&q), (1, 300));
    assert_eq!(q.try_recv(Select::ANY, 300).unwrap(), (3, vec![5u8; 300]));
    q.remove().unwrap();
}

/// A long text's sender reserves its ring position and chunks under the
/// lock and copies the text in after releasing it: killed before it
/// publishes, its slot is skipped and its chunks come back; a repair by
/// the next lock holder while it copies (alive) keeps them.
#[test]
fn a_long_text_whose_sender_died_copying_it_in_is_skipped_and_its_chunks_freed() {
    let q = queue("longdead");
    let deadline = || Deadline::after(Duration::from_secs(20));
    q.send(1, b"before").unwrap();
    let pos = {
        let g = q.lock(deadline()).unwrap();
        let mut chunks = Vec::new();
        let Pushed::Reserved(pos) = g.push_chained(2, &[7u8; 500], false, &mut chunks).unwrap() else {
            panic!("a long text is reserved, not sent");
        };
        assert_eq!(g.get(USED) as usize, chunks.len());
        pos
    };
    // Still alive and copying: a repair keeps its chunks.
    die_holding_the_lock(&q);
    assert_eq!(counts(&q), (2, 506));
    assert_eq!(q.lock(deadline()).unwrap().get(USED) as usize, 1 + 500usize.div_ceil(DATA));
    // Now it dies before publishing.
    q.ring().word(pos).store(pack(pos, dead_pid()), Ordering::SeqCst);
    q.send(3, &[8u8; 300]).unwrap();
    assert_eq!(q.try_recv(Select::ANY, 1000).unwrap(), (1, b"before".to_vec()));
    assert_eq!(q.recv_timeout(Select::ANY, 1000, Duration::from_secs(5)).unwrap(), (3, vec![8u8; 300]));
    assert_eq!(counts(&q), (0, 0));
    assert_eq!(q.lock(deadline()).unwrap().get(USED), 0, "the dead sender's chunks are free");
    // And they are used again, whole.
    for i in 0..20u8 {
        q.send(1, &[i; 700]).unwrap();
        assert_eq!(q.try_recv(Select::ANY, 1000).unwrap(), (1, vec![i; 700]));
    }
    q.remove().unwrap();
}

/// Receivers never write a slot: the next lap's senders take whatever the
/// last one left (a taken message, a dead sender's skipped slot, a slot
/// drained into the list), lap after lap, and every message arrives once.
#[test]
fn slots_left_by_every_kind_of_receive_are_reused_on_the_next_laps() {
    let q = queue("laps");
    let n = q.slots;
    for lap in 0..3u32 {
        // A dead sender's slot at a different position each lap.
        for i in 0..n {
            if i == lap * 5 {
                half_send(&q, dead_pid(), 9, 4, true);
            } else {
                q.send_timeout(1 + i64::from(i % 2), &i.to_le_bytes(), Duration::from_secs(5)).unwrap();
            }
        }
        let mut got = Vec::new();
        for k in 0..n - 1 {
            // Type 2 first now and then: the type-1 messages before it are drained into the list.
            let want = if k % 7 == 3 { Select::of(2) } else { Select::ANY };
            let (t, text) = q.recv_timeout(want, 8, Duration::from_secs(5)).unwrap();
            let i = u32::from_le_bytes(text.try_into().unwrap());
            assert_eq!(t, 1 + i64::from(i % 2));
            got.push(i);
        }
        got.sort_unstable();
        let want: Vec<u32> = (0..n).filter(|&i| i != lap * 5).collect();
        assert_eq!(got, want, "lap {lap}");
        assert_eq!(counts(&q), (0, 0), "lap {lap}");
    }
    q.remove().unwrap();
}

/// A receiver that looks at the head slot, then at the tail, can see the
/// last lap's word and a tail a sender moved in between: it looks at the
/// word again (the claim came before the tail's move) and waits for the
/// message instead of calling the slot corrupted.
#[test]
fn a_claim_made_between_the_receivers_two_looks_is_seen() {
    let q = queue("race");
    let n = q.slots;
    // A lap, so that the head slot holds the last lap's (taken) word.
    for i in 0..n {
        q.send(1, &i.to_le_bytes()).unwrap();
        assert_eq!(q.try_recv(Select::ANY, 8).unwrap().1, i.to_le_bytes());
    }
    let hpos = unpack(u64_at(q.map(), HEADW).load(Ordering::Acquire)).0;
    assert_eq!(q.ring().word(hpos).load(Ordering::Acquire), q.ring().taken_word(hpos));
    let me = sys::pid();
    let sender = || {
        half_send(&q, me, 5, 3, true);
        unpack(u64_at(q.map(), TAILW).load(Ordering::SeqCst)).0
    };
    assert_eq!(q.ring().head(hpos, sender, 1 << 20, false), Ok(Head::Filling(me)));
    q.ring().publish(hpos, b"abc");
    assert_eq!(q.try_recv(Select::ANY, 8).unwrap(), (5, b"abc".to_vec()));
    assert_eq!(counts(&q), (0, 0));
    q.remove().unwrap();
}
