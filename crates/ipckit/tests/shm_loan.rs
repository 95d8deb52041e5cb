//! Zero-copy loans: 1 MiB buffers filled in place by one process and read in
//! place by another, tokens over a pipe, and buffers coming back when a
//! holder dies; and the same with the token as the request of a two-slot
//! shared-memory RPC call (the fastest way to hand a large message over).

use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use ipckit::shm::rpc::{RpcClient, RpcServer};
use ipckit::shm::{LoanPool, Token};
use ipckit::{pipe, spawn, CallError, Capacity, Error, Receiver};

mod support;

use support::{unique_name, Cleanup, Kid};

const LONG: Duration = Duration::from_secs(20);
const MIB: usize = 1 << 20;
const ROLE: &str = "IPCKIT_SHM_LOAN_ROLE";

fn name(tag: &str) -> String {
    unique_name("t-loan", tag)
}

fn pattern(seed: u32, len: usize) -> impl Iterator<Item = u8> {
    (0..len).map(move |i| (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed).to_le_bytes()[1])
}

#[test]
fn child_main() {
    let Ok(role) = std::env::var(ROLE) else { return };
    let (role, pool_name) = role.split_once(':').unwrap();
    let pool = LoanPool::open(pool_name).unwrap();
    if role.starts_with("rpc-") {
        rpc_child(role, &pool, pool_name);
    }
    let mut rx: Receiver = spawn::inherited("tokens").unwrap();
    match role {
        // Redeem every token, check the bytes in place, report by exit code.
        "reader" => {
            let mut seed = 0;
            while let Ok(m) = rx.recv_timeout(LONG) {
                let token = Token::from_bytes(m.bytes()).unwrap();
                let view = pool.redeem(token).unwrap();
                if view.len() != MIB || !view.iter().copied().eq(pattern(seed, MIB)) {
                    std::process::exit(3);
                }
                seed += 1;
            }
            std::process::exit(if seed == 16 { 0 } else { 4 });
        }
        // Redeem one token and die holding the buffer.
        "hoarder" => {
            let m = rx.recv_timeout(LONG).unwrap();
            let view = pool.redeem(Token::from_bytes(m.bytes()).unwrap()).unwrap();
            std::mem::forget(view);
            let mut ack: ipckit::Sender = spawn::inherited("ack").unwrap();
            ack.send_timeout("held", LONG).unwrap();
            thread::sleep(LONG * 10);
        }
        other => panic!("unknown role {other}"),
    }
}

/// The receiving side of the RPC tests: serves `<pool>-rpc`, each request a token.
fn rpc_child(role: &str, pool: &LoanPool, pool_name: &str) -> ! {
    let mut server = RpcServer::create(&format!("{pool_name}-rpc"), 64, 0o600).unwrap();
    match role {
        // Redeem every token, check the bytes in place, answer 1 (right
        // bytes), 0 (wrong bytes) or 2 (the token was refused); exit on an
        // empty request.
        "rpc-reader" => {
            let mut seed = 0;
            while let Ok(req) = server.recv_timeout(LONG) {
                if req.is_empty() {
                    server.reply(b"bye").unwrap();
                    break;
                }
                let answer = match Token::from_bytes(&req).and_then(|t| pool.redeem(t)) {
                    Ok(view) => {
                        let ok = view.len() == MIB && view.iter().copied().eq(pattern(seed, MIB));
                        seed += 1;
                        u8::from(ok)
                    }
                    Err(_) => 2,
                };
                server.reply(&[answer]).unwrap();
            }
            std::process::exit(0);
        }
        // Redeem one token and die holding the buffer, without answering.
        "rpc-hoarder" => {
            let req = server.recv_timeout(LONG).unwrap();
            std::mem::forget(pool.redeem(Token::from_bytes(&req).unwrap()).unwrap());
            std::process::exit(0);
        }
        other => panic!("unknown role {other}"),
    }
}

/// Starts an RPC child and attaches to its segment as the client.
fn rpc_child_and_client(role: &str, pool: &str) -> (Kid, RpcClient) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child_main", "--nocapture", "--test-threads=1"])
        .env(ROLE, format!("{role}:{pool}"));
    let kid = Kid(cmd.spawn().unwrap());
    let until = Instant::now() + LONG;
    loop {
        match RpcClient::open(&format!("{pool}-rpc")) {
            Ok(c) => return (kid, c.with_timeout(LONG)),
            Err(e) if Instant::now() > until => panic!("the RPC child never served: {e}"),
            Err(_) => thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn spawn_child(role: &str, pool: &str, rx: Receiver, ack: Option<ipckit::Sender>) -> Kid {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child_main", "--nocapture", "--test-threads=1"])
        .env(ROLE, format!("{role}:{pool}"));
    let mut kit = spawn::Inherit::new();
    kit.pass("tokens", rx).unwrap();
    if let Some(ack) = ack {
        kit.pass("ack", ack).unwrap();
    }
    Kid(kit.spawn(&mut cmd).unwrap())
}

fn wait_exit(kid: &mut Kid) -> i32 {
    kid.code_within(LONG * 2)
}

#[test]
fn one_mebibyte_loans_cross_processes_without_copies() {
    let n = name("mib");
    let _c = Cleanup(n.clone());
    let pool = LoanPool::create(&n, 4, MIB, 0o600).unwrap();
    let (mut tx, rx) = pipe::channel(Capacity::Kernel).unwrap();
    let mut kid = spawn_child("reader", &n, rx, None);
    for seed in 0..16 {
        // Only 4 buffers: the 5th loan waits for the reader to drop one.
        let mut buf = pool.loan_timeout(LONG).unwrap();
        assert_eq!(buf.len(), MIB);
        for (b, v) in buf.iter_mut().zip(pattern(seed, MIB)) {
            *b = v;
        }
        let token = buf.send(MIB);
        tx.send_timeout(token.to_bytes().to_vec(), LONG).unwrap();
    }
    drop(tx);
    assert_eq!(wait_exit(&mut kid), 0, "the reader saw wrong bytes or too few buffers");
    // Every buffer is back.
    let all: Vec<_> = (0..4).map(|_| pool.try_loan().unwrap()).collect();
    assert!(matches!(pool.try_loan(), Err(Error::Timeout)));
    drop(all);
}

#[test]
fn a_receiver_that_dies_holding_a_buffer_gives_it_back() {
    let n = name("hoard");
    let _c = Cleanup(n.clone());
    let pool = LoanPool::create(&n, 1, 4096, 0o600).unwrap();
    let (mut tx, rx) = pipe::channel(Capacity::Kernel).unwrap();
    let (ack_tx, mut ack_rx) = pipe::channel(Capacity::Kernel).unwrap();
    let mut kid = spawn_child("hoarder", &n, rx, Some(ack_tx));
    let token = pool.loan().unwrap().send(10);
    tx.send_timeout(token.to_bytes().to_vec(), LONG).unwrap();
    assert_eq!(ack_rx.recv_timeout(LONG).unwrap().bytes(), b"held");
    assert!(matches!(pool.try_loan(), Err(Error::Timeout)), "the only buffer is held by the child");
    let _ = kid.0.kill();
    let _ = kid.0.wait();
    // The dead holder's buffer comes back to the next loan.
    let buf = pool.loan_timeout(LONG).unwrap();
    assert_eq!(buf.len(), 4096);
}

#[test]
fn tokens_are_checked() {
    let n = name("tokens");
    let _c = Cleanup(n.clone());
    let pool = LoanPool::create(&n, 2, 64, 0o600).unwrap();
    let mut buf = pool.loan().unwrap();
    buf[..3].copy_from_slice(b"abc");
    let token = buf.send(3);
    // The right buffer and generation with another length: refused, and
    // the buffer stays in flight for the real token.
    let mut b = token.to_bytes();
    b[8..12].copy_from_slice(&2u32.to_le_bytes());
    let wrong_len = Token::from_bytes(&b).unwrap();
    assert!(matches!(pool.redeem(wrong_len), Err(Error::BadHandle(_))), "{wrong_len:?}");
    let view = pool.redeem(token).unwrap();
    assert_eq!(&view[..], b"abc");
    assert!(matches!(pool.redeem(token), Err(Error::BadHandle(_))), "redeemed twice");
    drop(view);
    assert!(matches!(pool.redeem(token), Err(Error::BadHandle(_))), "redeemed after release");
    // Forged tokens: out of range index, wrong generation, wrong length, wrong size.
    let forged = |i: u32, g: u32, l: u32| {
        let mut b = [0u8; 12];
        b[0..4].copy_from_slice(&i.to_le_bytes());
        b[4..8].copy_from_slice(&g.to_le_bytes());
        b[8..12].copy_from_slice(&l.to_le_bytes());
        Token::from_bytes(&b).unwrap()
    };
    for t in [forged(9, 1, 1), forged(0, 999, 3), forged(0, 1, 65), forged(u32::MAX, u32::MAX, u32::MAX)] {
        assert!(matches!(pool.redeem(t), Err(Error::BadHandle(_))), "{t:?}");
    }
    assert!(Token::from_bytes(&[1, 2, 3]).is_err());
    // A buffer dropped unsent goes back; a cancelled token's buffer too.
    drop(pool.loan().unwrap());
    let t = pool.loan().unwrap().send(1);
    pool.cancel(t).unwrap();
    let both: Vec<_> = (0..2).map(|_| pool.try_loan().unwrap()).collect();
    assert!(matches!(pool.try_loan(), Err(Error::Timeout)));
    drop(both);
}

#[test]
fn a_loan_waits_for_a_buffer_to_come_free() {
    let n = name("wait");
    let _c = Cleanup(n.clone());
    let pool = LoanPool::create(&n, 1, 64, 0o600).unwrap();
    let other = LoanPool::open(&n).unwrap();
    let held = pool.loan().unwrap().send(1);
    let start = Instant::now();
    let t = thread::spawn(move || {
        thread::sleep(Duration::from_millis(150));
        other.cancel(held).unwrap();
    });
    let buf = pool.loan_timeout(LONG).unwrap();
    assert!(start.elapsed() >= Duration::from_millis(100), "got a buffer that was taken");
    drop(buf);
    t.join().unwrap();
    let start = Instant::now();
    let _hold = pool.loan().unwrap();
    assert!(matches!(pool.loan_timeout(Duration::from_millis(100)), Err(Error::Timeout)));
    assert!(start.elapsed() >= Duration::from_millis(100));
}

#[test]
fn one_mebibyte_loans_as_rpc_calls() {
    let n = name("rpc");
    let _c = Cleanup(n.clone());
    let _r = Cleanup(format!("{n}-rpc"));
    let pool = LoanPool::create(&n, 2, MIB, 0o600).unwrap();
    let (mut kid, mut client) = rpc_child_and_client("rpc-reader", &n);
    for seed in 0..8 {
        let mut buf = pool.loan_timeout(LONG).unwrap();
        for (b, v) in buf.iter_mut().zip(pattern(seed, MIB)) {
            *b = v;
        }
        let token = buf.send(MIB);
        assert_eq!(token.to_bytes().len(), 12, "a token fits the call's inline bytes");
        assert_eq!(client.call(&token.to_bytes()).unwrap(), [1], "the server saw wrong bytes");
        // The server dropped its view before answering: the buffer is free.
        let all: Vec<_> = (0..2).map(|_| pool.try_loan().unwrap()).collect();
        drop(all);
    }
    // A hostile or stale token is refused by the server, which keeps serving.
    let stale = {
        let t = pool.loan().unwrap().send(8);
        pool.cancel(t).unwrap();
        t
    };
    assert_eq!(client.call(&stale.to_bytes()).unwrap(), [2]);
    let mut forged = [0xffu8; 12];
    forged[0..4].copy_from_slice(&1u32.to_le_bytes());
    assert_eq!(client.call(&forged).unwrap(), [2]);
    assert_eq!(client.call(b"not a token").unwrap(), [2]);
    let mut buf = pool.loan_timeout(LONG).unwrap();
    for (b, v) in buf.iter_mut().zip(pattern(8, MIB)) {
        *b = v;
    }
    assert_eq!(client.call(&buf.send(MIB).to_bytes()).unwrap(), [1]);
    assert_eq!(client.call(b"").unwrap(), b"bye");
    assert_eq!(wait_exit(&mut kid), 0);
}

#[test]
fn a_sender_whose_rpc_server_dies_holding_its_buffer_gets_it_back() {
    let n = name("rpc-dies");
    let _c = Cleanup(n.clone());
    let _r = Cleanup(format!("{n}-rpc"));
    let pool = LoanPool::create(&n, 1, MIB, 0o600).unwrap();
    let (mut kid, mut client) = rpc_child_and_client("rpc-hoarder", &n);
    let token = pool.loan_timeout(LONG).unwrap().send(MIB);
    // The server redeems the token and dies without answering: the call
    // fails (within the liveness check), not hangs.
    assert!(matches!(client.call(&token.to_bytes()), Err(CallError::Disconnected)));
    let _ = wait_exit(&mut kid);
    // The dead holder's buffer comes back to the next loan.
    let buf = pool.loan_timeout(LONG).unwrap();
    assert_eq!(buf.len(), MIB);
}
