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
    // A message whose sender died before publishing it will never be
    // received: the statistics leave it out (the receivers skip it).
    assert_eq!(counts(&q), (2, 11), "a dead sender's reserved message is not counted");
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
    let long: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    for (step, first) in [(0, &b"head"[..]), (1, &b"head"[..]), (0, &long[..]), (1, &long[..])] {
        let q = queue(&format!("drain{step}-{}", first.len()));
        q.send(1, first).unwrap();
        q.send(2, b"next").unwrap();
        {
            let g = q.lock(Deadline::after(Duration::from_secs(20))).unwrap();
            let head = g.settle_head(Deadline::after(Duration::from_secs(20))).unwrap();
            let Head::Ready { mtype, len } = head else { panic!("{head:?}") };
            let (hpos, hbytes) = g.headw();
            let mut text = vec![0; len];
            g.read_head(hpos, hbytes, len, &mut text).unwrap();
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
        assert_eq!(counts(&q), (2, first.len() + 4), "step {step}");
        assert_eq!(q.try_recv(Select::ANY, 4096).unwrap(), (1, first.to_vec()), "step {step}");
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

/// A text of `len` bytes that says which message it is, byte by byte.
fn text(seed: u32, len: usize) -> Vec<u8> {
    (0..len as u32).map(|i| (i.wrapping_mul(31) ^ seed.wrapping_mul(0x9e37)) as u8).collect()
}

#[test]
fn long_texts_go_through_the_arena_in_order_and_whole_across_its_end() {
    let q = queue("long");
    let long = text(1, 1000);
    q.send(1, b"short").unwrap();
    q.send(2, &long).unwrap();
    q.send(1, b"short again").unwrap();
    assert_eq!(counts(&q), (3, 1016));
    assert_eq!(q.try_recv(Select::of(-2), 2000).unwrap(), (1, b"short".to_vec()));
    assert_eq!(q.try_recv(Select::ANY, 2000).unwrap(), (2, long));
    assert_eq!(q.try_recv(Select::ANY, 2000).unwrap(), (1, b"short again".to_vec()));
    // Sizes that are no divisor of the arena, so texts cross its end in two
    // pieces; some received directly, some after a drain into the list
    // (a selective receive past the head), some cut (MSG_NOERROR).
    let sizes = [105usize, 4096, 8192, 777, 3001, 6000, 200, 1025];
    let mut laps = 0;
    for round in 0..60u32 {
        let a = sizes[round as usize % sizes.len()];
        let b = sizes[(round as usize * 3 + 1) % sizes.len()];
        q.send(1, &text(round, a)).unwrap();
        q.send(2, &text(round + 1000, b)).unwrap();
        if round % 3 == 0 {
            // Type 2 first: the head (type 1) is drained into the list.
            assert_eq!(q.try_recv(Select::of(2), 8192).unwrap(), (2, text(round + 1000, b)), "round {round}");
            assert_eq!(q.try_recv(Select::ANY, 8192).unwrap(), (1, text(round, a)), "round {round}");
        } else if round % 3 == 1 {
            assert_eq!(
                q.try_recv(Select::ANY.truncating(), 100).unwrap(),
                (1, text(round, a)[..100].to_vec())
            );
            assert_eq!(q.try_recv(Select::ANY, 8192).unwrap(), (2, text(round + 1000, b)), "round {round}");
        } else {
            assert!(q.try_recv(Select::ANY, 50).is_err(), "too long: the message stays");
            assert_eq!(q.try_recv(Select::ANY, 8192).unwrap(), (1, text(round, a)), "round {round}");
            assert_eq!(q.try_recv(Select::ANY, 8192).unwrap(), (2, text(round + 1000, b)), "round {round}");
        }
        laps += a + b;
    }
    assert!(laps > 20 * q.arena, "the arena went round many times");
    assert_eq!(counts(&q), (0, 0));
    // A dead lock holder's repair keeps a queued long text.
    q.send(3, &text(7, 300)).unwrap();
    die_holding_the_lock(&q);
    assert_eq!(counts(&q), (1, 300));
    assert_eq!(q.try_recv(Select::ANY, 300).unwrap(), (3, text(7, 300)));
    assert_eq!(q.lock(Deadline::after(Duration::from_secs(20))).unwrap().get(USED), 0, "no chunk leaked");
    q.remove().unwrap();
}

/// The arena is exactly as large as `msg_qbytes` allows at most: a queue
/// full of long texts takes no more, and each comes back whole while
/// senders keep refilling it (the bytes a receive frees are the next
/// sender's).
#[test]
fn a_full_queue_of_long_texts_is_exact_and_nothing_is_overwritten() {
    let q = queue("fullong");
    assert_eq!(q.arena, 16384);
    for i in 0..4 {
        q.try_send(1, &text(i, 4096)).unwrap();
    }
    assert!(matches!(q.try_send(1, &text(9, 105)), Err(TrySendError::Full(_))));
    assert_eq!(counts(&q), (4, 16384));
    for i in 4..40u32 {
        assert_eq!(q.try_recv(Select::ANY, 8192).unwrap(), (1, text(i - 4, 4096)), "message {i}");
        q.try_send(1, &text(i, 4096)).unwrap();
    }
    q.remove().unwrap();
}

/// A long text's sender copies it into the arena after moving the tail,
/// without any lock: killed before it publishes, its slot is skipped and
/// its half-written bytes are free for the next texts.
#[test]
fn a_long_text_whose_sender_died_copying_it_in_is_skipped() {
    let q = queue("longdead");
    q.send(1, b"before").unwrap();
    let tbytes = unpack(u64_at(q.map(), TAILW).load(Ordering::Acquire)).1;
    half_send(&q, dead_pid(), 2, 5000, true);
    // Half of it written.
    assert!(q.arena().write(tbytes, &[0xee; 2500]));
    q.send(3, &text(3, 3000)).unwrap();
    assert_eq!(counts(&q), (2, 3006), "a dead sender's reserved message is not counted");
    assert_eq!(q.try_recv(Select::ANY, 8192).unwrap(), (1, b"before".to_vec()));
    assert_eq!(q.recv_timeout(Select::ANY, 8192, Duration::from_secs(5)).unwrap(), (3, text(3, 3000)));
    assert_eq!(counts(&q), (0, 0));
    // The whole arena is usable again, for laps.
    for i in 0..20u32 {
        q.send(1, &text(i, 7000)).unwrap();
        q.send(2, &text(i + 1, 7000)).unwrap();
        assert_eq!(q.try_recv(Select::ANY, 8192).unwrap(), (1, text(i, 7000)));
        assert_eq!(q.try_recv(Select::ANY, 8192).unwrap(), (2, text(i + 1, 7000)));
    }
    q.remove().unwrap();
}

/// A receiver copies a long text out before moving the head past it:
/// killed between copying it out and moving the head, the message is
/// still queued and its bytes untouched.
#[test]
fn a_receive_of_a_long_text_killed_before_moving_the_head_leaves_it_queued() {
    let q = queue("poplong");
    q.send(1, &text(1, 5000)).unwrap();
    q.send(2, &text(2, 5000)).unwrap();
    {
        let g = q.lock(Deadline::after(Duration::from_secs(20))).unwrap();
        let (hpos, hbytes) = g.headw();
        let mut out = vec![0; 5000];
        g.read_head(hpos, hbytes, 5000, &mut out).unwrap();
        assert_eq!(out, text(1, 5000));
        std::mem::forget(g);
    }
    die_holding_the_lock(&q);
    // Room is not given back until the head moves: 10000 + 8192 > 16384.
    assert!(matches!(q.try_send(3, &text(3, 8192)), Err(TrySendError::Full(_))));
    assert_eq!(q.recv_timeout(Select::ANY, 8192, Duration::from_secs(5)).unwrap(), (1, text(1, 5000)));
    q.send(3, &text(3, 8192)).unwrap();
    assert_eq!(q.try_recv(Select::ANY, 8192).unwrap(), (2, text(2, 5000)));
    assert_eq!(q.try_recv(Select::ANY, 8192).unwrap(), (3, text(3, 8192)));
    assert_eq!(counts(&q), (0, 0));
    q.remove().unwrap();
}

/// Forged slots: a length beyond the arena (with a forged maximum that
/// lets it pass the first check), or a nonzero chain word, are refused with
/// an error, never read out of bounds.
#[test]
fn a_forged_long_slot_is_an_error() {
    for forge in 0..2 {
        let q = queue(&format!("forged{forge}"));
        q.send(1, &text(1, 500)).unwrap();
        let (hpos, _) = unpack(u64_at(q.map(), HEADW).load(Ordering::Acquire));
        let ring = q.ring();
        if forge == 0 {
            u32_at(q.map(), MAXMSG).store(1 << 24, Ordering::Relaxed);
            ring.describe(hpos, 1, 1 << 20, 0);
        } else {
            ring.describe(hpos, 1, 500, 7);
        }
        let got = q.try_recv(Select::ANY, 1 << 24);
        assert!(matches!(got, Err(TryRecvError::Frame(_))), "forge {forge}: {got:?}");
        q.remove().unwrap();
    }
}

/// A forged `msg_qbytes` beyond the arena admits no long text that would
/// overwrite a queued one: the arena bounds them.
#[test]
fn a_forged_capacity_beyond_the_arena_overwrites_nothing() {
    let q = queue("forgedcap");
    u32_at(q.map(), QBYTES).store(1 << 20, Ordering::Relaxed);
    for i in 0..4 {
        q.try_send(1, &text(i, 4096)).unwrap();
    }
    assert!(matches!(q.try_send(1, &text(9, 4096)), Err(TrySendError::Full(_))), "the arena is full");
    for i in 0..4 {
        assert_eq!(q.try_recv(Select::ANY, 8192).unwrap(), (1, text(i, 4096)));
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
    q.ring().publish(hpos, b"abc", false, false);
    assert_eq!(q.try_recv(Select::ANY, 8).unwrap(), (5, b"abc".to_vec()));
    assert_eq!(counts(&q), (0, 0));
    q.remove().unwrap();
}

/// The one-pass receive of the ring's head (`Guard::take_head`) takes only
/// what it may: a text longer than the buffer, a head behind older messages
/// in the list, a forged length go to the general path, which answers as
/// before.
#[test]
fn the_fast_receive_leaves_what_it_cannot_take_to_the_general_path() {
    let q = queue("fast");
    let long = text(3, 100);
    q.send(1, &long).unwrap();
    let mut small = [0u8; 10];
    let got = q.try_recv_into(Select::ANY, &mut small);
    assert!(matches!(got, Err(TryRecvError::Frame(FrameError::TooLarge { len: 100, max: 10 }))), "{got:?}");
    assert_eq!(counts(&q), (1, 100), "a message too long for the buffer stays queued");
    assert_eq!(q.try_recv_into(Select::ANY.truncating(), &mut small).unwrap(), (1, 10));
    assert_eq!(&small, &long[..10]);
    assert_eq!(counts(&q), (0, 0));
    // Two messages: a receive of type 2 drains the ring, type 1 waits in
    // the list; a message sent then is at the ring's head, but the list's
    // is older.
    q.send(1, b"older").unwrap();
    q.send(2, b"picked").unwrap();
    assert_eq!(q.try_recv(Select::of(2), 64).unwrap(), (2, b"picked".to_vec()));
    assert_eq!(u64_at(q.map(), LISTW).load(Ordering::Relaxed) as u32, 1, "type 1 went to the list");
    q.send(3, b"newer").unwrap();
    assert_eq!(q.try_recv(Select::ANY, 64).unwrap(), (1, b"older".to_vec()));
    assert_eq!(q.try_recv(Select::ANY, 64).unwrap(), (3, b"newer".to_vec()));
    // A forged length over the maximum at the head: an error, not a read.
    q.send(4, b"forged").unwrap();
    let (hpos, _) = unpack(u64_at(q.map(), HEADW).load(Ordering::Acquire));
    q.ring().describe(hpos, 4, 1 << 20, 0);
    let got = q.try_recv(Select::ANY, 1 << 24);
    assert!(matches!(got, Err(TryRecvError::Frame(_))), "{got:?}");
    q.remove().unwrap();
}

/// A receive that does not select the ring's only message leaves it in the
/// ring (no drain into the list) and waits for the next position: a
/// message sent later wakes it, also asleep, and the one passed over is
/// still there for its own receiver, also one that takes it meanwhile.
#[test]
fn a_lone_head_not_selected_stays_in_the_ring_and_is_waited_past() {
    let q = queue("lone");
    q.send(1, b"request").unwrap();
    let headw = u64_at(q.map(), HEADW).load(Ordering::Acquire);
    assert!(matches!(q.try_recv(Select::of(2), 64), Err(TryRecvError::Empty)));
    assert_eq!(u64_at(q.map(), HEADW).load(Ordering::Acquire), headw, "the head did not move");
    assert_eq!(u64_at(q.map(), LISTW).load(Ordering::Acquire), 0, "nothing was drained");
    assert_eq!(counts(&q), (1, 7));
    let name = q.name().to_owned();
    for take_meanwhile in [false, true] {
        let replier = {
            let name = name.clone();
            std::thread::spawn(move || {
                let q = MessageQueue::open(&name, Access::ReadWrite).unwrap();
                // Long enough for the waiter to have gone to sleep.
                std::thread::sleep(Duration::from_millis(100));
                if take_meanwhile {
                    assert_eq!(
                        q.recv_timeout(Select::of(1), 64, Duration::from_secs(5)).unwrap().1,
                        b"request"
                    );
                }
                q.send(2, b"reply").unwrap();
            })
        };
        let got = q.recv_timeout(Select::of(2), 64, Duration::from_secs(10)).unwrap();
        assert_eq!(got, (2, b"reply".to_vec()));
        replier.join().unwrap();
        if !take_meanwhile {
            assert_eq!(counts(&q), (1, 7), "the request is still queued");
        }
    }
    assert_eq!(counts(&q), (0, 0));
    q.remove().unwrap();
}

/// A streaming sender publishes without a fence when the kernel has
/// `membarrier` (`Ring::publish`); a receiver then issues the fence before
/// it sleeps. Bursts of two messages, each after a pause of varying length
/// (spun or slept, 1 to 300 us), so that the receiver has often just gone
/// to sleep when the next burst comes: a lost wake-up would leave it asleep
/// until its receive's timeout.
#[test]
fn no_wake_up_is_lost_between_a_fenceless_send_and_a_receiver_going_to_sleep() {
    let q = queue("fence");
    let name = q.name().to_owned();
    const BURSTS: u32 = 600;
    let sender = std::thread::spawn(move || {
        // Its own handle, which only sends (never an answer).
        let q = MessageQueue::open(&name, Access::Write).unwrap();
        for i in 0..BURSTS {
            let pause = Duration::from_micros(u64::from(1 + (i * 37) % 300));
            if i % 2 == 0 {
                let t0 = std::time::Instant::now();
                while t0.elapsed() < pause {
                    std::hint::spin_loop();
                }
            } else {
                std::thread::sleep(pause);
            }
            q.send(1, &(2 * i).to_le_bytes()).unwrap();
            q.send(1, &(2 * i + 1).to_le_bytes()).unwrap();
        }
    });
    for i in 0..2 * BURSTS {
        let (_, got) = q.recv_timeout(Select::ANY, 64, Duration::from_secs(10)).unwrap();
        assert_eq!(got, i.to_le_bytes());
    }
    sender.join().unwrap();
    if light_publish() {
        assert_ne!(u32_at(q.map(), LIGHT).load(Ordering::Relaxed), 0, "the sender published without a fence");
    }
    q.remove().unwrap();
}
