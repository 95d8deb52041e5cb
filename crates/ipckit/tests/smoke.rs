use ipckit::*;
use std::time::Duration;

#[test]
fn smoke() {
    for cap in [Capacity::Kernel, Capacity::Bounded(4), Capacity::RENDEZVOUS] {
        let (mut tx, mut rx) = pipe::channel(cap).unwrap();
        let t = std::thread::spawn(move || {
            for i in 0..100u32 {
                tx.send(i.to_le_bytes().to_vec()).unwrap();
            }
        });
        for i in 0..100u32 {
            let m = rx.recv_timeout(Duration::from_secs(5)).unwrap_or_else(|e| panic!("{cap:?} {i}: {e:?}"));
            assert_eq!(m.bytes(), i.to_le_bytes());
        }
        t.join().unwrap();
        assert!(rx.recv_timeout(Duration::from_secs(5)).unwrap_err().is_disconnected());
    }
    let dir = std::env::temp_dir().join(format!("ipckit-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for kind in [SocketKind::Stream, SocketKind::SeqPacket] {
        for cap in [Capacity::Kernel, Capacity::Bounded(3), Capacity::RENDEZVOUS] {
            let p = dir.join("ch.sock");
            let mut rx = unix::bind_receiver(&p, kind, cap).unwrap();
            let mut ts = vec![];
            for s in 0..3u32 {
                let p = p.clone();
                ts.push(std::thread::spawn(move || {
                    let mut tx = unix::connect_sender(&p, kind).unwrap();
                    for i in 0..50u32 {
                        tx.send_timeout([s.to_le_bytes(), i.to_le_bytes()].concat(), Duration::from_secs(5))
                            .unwrap();
                    }
                }));
            }
            let mut next = [0u32; 3];
            for _ in 0..150 {
                let m = rx
                    .recv_timeout(Duration::from_secs(5))
                    .unwrap_or_else(|e| panic!("{kind:?} {cap:?} {next:?}: {e:?}"));
                let s = u32::from_le_bytes(m.bytes()[0..4].try_into().unwrap()) as usize;
                let i = u32::from_le_bytes(m.bytes()[4..8].try_into().unwrap());
                assert_eq!(i, next[s]);
                next[s] += 1;
            }
            for t in ts {
                t.join().unwrap();
            }
            drop(rx);
        }
    }
    let (a, b) = Connection::pair(SocketKind::Stream).unwrap();
    let client = std::sync::Arc::new(rpc::Client::new(a));
    let mut server = rpc::Server::new();
    server.add(b);
    let st = std::thread::spawn(move || server.serve(|r| Message::new(r.bytes().to_vec())).unwrap());
    let mut cs = vec![];
    for t in 0..4u8 {
        let c = client.clone();
        cs.push(std::thread::spawn(move || {
            for i in 0..200u8 {
                let r = c.call(vec![t, i]).unwrap();
                assert_eq!(r.bytes(), [t, i]);
            }
        }));
    }
    for c in cs {
        c.join().unwrap();
    }
    drop(client);
    st.join().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
