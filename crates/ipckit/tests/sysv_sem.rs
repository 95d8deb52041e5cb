//! System V-style semaphore sets: a differential test against the kernel's
//! own `semop`/`semctl`, P/V across threads and processes, wait-for-zero,
//! atomicity of multi-operation calls, undo after SIGKILL, removal,
//! permissions and corrupted shared memory.

use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ipckit::perm::Access;
use ipckit::shm::{Offset, Segment};
use ipckit::sysv::{SemChange, SemError, SemOp, SemaphoreSet, WaitCounts, SEM_OPS_MAX};

const LONG: Duration = Duration::from_secs(20);
const ROLE: &str = "IPCKIT_SYSV_SEM_ROLE";

fn name(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("t-sem-{}-{tag}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Removes the named object (set or raw segment) however the test ends.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Segment::remove(&self.0);
    }
}

/// Polls `cond` until it holds, for at most `LONG`.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + LONG;
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for: {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// The kernel's System V semaphore set, driven through libc (the reference).
struct Kernel(i32, usize);

impl Kernel {
    fn new(n: usize) -> Kernel {
        // SAFETY: semget takes integers; IPC_PRIVATE makes a fresh set (values 0).
        let id = unsafe { libc::semget(libc::IPC_PRIVATE, n as i32, 0o600 | libc::IPC_CREAT) };
        assert!(id >= 0, "semget: {}", std::io::Error::last_os_error());
        Kernel(id, n)
    }

    fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap()
    }

    /// semop with IPC_NOWAIT on every operation: Ok, or the errno.
    fn op(&self, ops: &[SemOp]) -> Result<(), i32> {
        let mut buf: Vec<libc::sembuf> = ops
            .iter()
            .map(|o| libc::sembuf {
                sem_num: o.index as u16,
                sem_op: o.op,
                sem_flg: (libc::IPC_NOWAIT | if o.undo { libc::SEM_UNDO } else { 0 }) as i16,
            })
            .collect();
        // SAFETY: `buf` holds `buf.len()` valid sembufs (none are read when it is empty).
        let r = unsafe { libc::semop(self.0, buf.as_mut_ptr(), buf.len()) };
        if r == 0 {
            Ok(())
        } else {
            Err(Kernel::errno())
        }
    }

    fn setval(&self, index: usize, value: i32) -> Result<(), i32> {
        // SAFETY: SETVAL reads `union semun`'s int member, passed as an int.
        let r = unsafe { libc::semctl(self.0, index as i32, libc::SETVAL, value) };
        if r == 0 {
            Ok(())
        } else {
            Err(Kernel::errno())
        }
    }

    fn values(&self) -> Vec<u16> {
        let mut v = vec![0u16; self.1];
        // SAFETY: GETALL writes sem_nsems unsigned shorts, which `v` has room for.
        let r = unsafe { libc::semctl(self.0, 0, libc::GETALL, v.as_mut_ptr()) };
        assert_eq!(r, 0, "GETALL: {}", std::io::Error::last_os_error());
        v
    }

    fn last_pid(&self, index: usize) -> u32 {
        // SAFETY: GETPID takes no argument beyond the index.
        let r = unsafe { libc::semctl(self.0, index as i32, libc::GETPID) };
        assert!(r >= 0, "GETPID: {}", std::io::Error::last_os_error());
        r as u32
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        // SAFETY: IPC_RMID takes no argument beyond the index.
        unsafe { libc::semctl(self.0, 0, libc::IPC_RMID) };
    }
}

/// A small deterministic generator (xorshift64*), so the test is reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
}

/// The kernel's SEMOPM (`/proc/sys/kernel/sem`, third field).
fn kernel_semopm() -> usize {
    let s = std::fs::read_to_string("/proc/sys/kernel/sem").unwrap_or_default();
    s.split_whitespace().nth(2).and_then(|f| f.parse().ok()).unwrap_or(0)
}

#[test]
fn the_same_operations_give_the_same_results_as_the_kernel() {
    const N: usize = 5;
    let n = name("diff");
    let _c = Cleanup(n.clone());
    let ours = SemaphoreSet::create(&n, N, 0, 0o600).unwrap();
    let theirs = Kernel::new(N);
    let e2big = kernel_semopm() == SEM_OPS_MAX;
    let mut rng = Rng(0x5e3a_f0ee_d15c_a11e);
    // ok, EAGAIN, ERANGE, EFBIG, EINVAL, E2BIG, SETVAL ok, SETVAL ERANGE, SETVAL EINVAL
    let mut counts = [0usize; 9];
    for step in 0..20_000 {
        if rng.chance(7) {
            let index = if rng.chance(20) { N } else { rng.below(N as u64) as usize };
            let value = match rng.below(20) {
                0 => -1 - rng.below(5) as i32,
                1 => 32766 + rng.below(4) as i32,
                2 => rng.below(40000) as i32,
                _ => rng.below(6) as i32,
            };
            let k = theirs.setval(index, value);
            let o = ours.set_value(index, value);
            match (&k, &o) {
                (Ok(()), Ok(())) => counts[6] += 1,
                (Err(libc::ERANGE), Err(SemError::OutOfRange { .. })) => counts[7] += 1,
                (Err(libc::EINVAL), Err(SemError::BadIndex { .. })) => counts[8] += 1,
                _ => panic!("step {step}: SETVAL({index}, {value}) kernel {k:?} ipckit {o:?}"),
            }
        } else {
            let len = match rng.below(100) {
                0 => 0,
                1 if e2big => SEM_OPS_MAX + 1,
                _ => 1 + rng.below(4) as usize,
            };
            let ops: Vec<SemOp> = (0..len)
                .map(|_| SemOp {
                    index: if rng.chance(40) {
                        N + rng.below(3) as usize
                    } else {
                        rng.below(N as u64) as usize
                    },
                    op: match rng.below(30) {
                        0 => rng.below(32768) as i16,
                        1 => -(rng.below(32768) as i16),
                        _ => rng.below(7) as i16 - 3,
                    },
                    undo: rng.chance(4),
                })
                .collect();
            let k = theirs.op(&ops);
            let o = ours.try_op(&ops);
            match (&k, &o) {
                (Ok(()), Ok(())) => counts[0] += 1,
                (Err(libc::EAGAIN), Err(SemError::WouldBlock)) => counts[1] += 1,
                (Err(libc::ERANGE), Err(SemError::OutOfRange { .. })) => counts[2] += 1,
                (Err(libc::EFBIG), Err(SemError::BadIndex { .. })) => counts[3] += 1,
                (Err(libc::EINVAL), Err(SemError::Invalid(_))) => counts[4] += 1,
                (Err(libc::E2BIG), Err(SemError::TooManyOps { .. })) => counts[5] += 1,
                _ => panic!("step {step}: semop({ops:?}) kernel {k:?} ipckit {o:?}"),
            }
        }
        assert_eq!(theirs.values(), ours.values().unwrap(), "step {step}: values differ");
        let st = ours.stat().unwrap();
        for i in 0..N {
            assert_eq!(theirs.last_pid(i), st.last_pids[i], "step {step}: sempid of {i} differs");
        }
    }
    // Every kind of outcome happened, so the comparison meant something.
    let least = if e2big { 20 } else { 0 };
    assert!(counts.iter().enumerate().all(|(i, &c)| c >= if i == 5 { least } else { 20 }), "{counts:?}");
    eprintln!("outcomes (ok, EAGAIN, ERANGE, EFBIG, EINVAL, E2BIG, SETVAL ok/ERANGE/EINVAL): {counts:?}");
}

#[test]
fn p_and_v_across_threads() {
    let n = name("threads");
    let _c = Cleanup(n.clone());
    let set = Arc::new(SemaphoreSet::create(&n, 1, 0, 0o600).unwrap());
    let takers: Vec<_> = (0..4)
        .map(|_| {
            let set = set.clone();
            thread::spawn(move || (0..250).try_for_each(|_| set.op_timeout(&[SemOp::p(0)], LONG)))
        })
        .collect();
    for _ in 0..1000 {
        set.op(&[SemOp::v(0)]).unwrap();
    }
    for t in takers {
        t.join().unwrap().unwrap();
    }
    assert_eq!(set.value(0).unwrap(), 0);
    assert!(matches!(set.try_op(&[SemOp::p(0)]), Err(SemError::WouldBlock)));
    let start = Instant::now();
    assert!(matches!(set.op_timeout(&[SemOp::p(0)], Duration::from_millis(50)), Err(SemError::Timeout)));
    assert!(start.elapsed() >= Duration::from_millis(50));
}

#[test]
fn wait_for_zero() {
    let n = name("zero");
    let _c = Cleanup(n.clone());
    let set = Arc::new(SemaphoreSet::create(&n, 1, 2, 0o600).unwrap());
    let s2 = set.clone();
    let waiter = thread::spawn(move || s2.op_timeout(&[SemOp::zero(0)], LONG));
    eventually("the waiter to block", || set.waiting(0).unwrap() == WaitCounts { increase: 0, zero: 1 });
    set.op(&[SemOp::p(0)]).unwrap();
    thread::sleep(Duration::from_millis(30));
    assert!(!waiter.is_finished(), "woke while the value was 1");
    set.op(&[SemOp::p(0)]).unwrap();
    waiter.join().unwrap().unwrap();
    assert_eq!(set.waiting(0).unwrap(), WaitCounts::default());
}

#[test]
fn several_operations_are_all_or_nothing() {
    let n = name("atomic");
    let _c = Cleanup(n.clone());
    let set = Arc::new(SemaphoreSet::create(&n, 3, 0, 0o600).unwrap());
    set.set_all(&[1, 0, 5]).unwrap();
    // A call that cannot complete changes nothing, whichever operation blocks.
    assert!(matches!(set.try_op(&[SemOp::p(0), SemOp::p(1)]), Err(SemError::WouldBlock)));
    assert!(matches!(set.try_op(&[SemOp::v(2), SemOp::p(0), SemOp::p(0)]), Err(SemError::WouldBlock)));
    assert!(matches!(set.try_op(&[SemOp::p(0), SemOp::new(2, 32767)]), Err(SemError::OutOfRange { .. })));
    assert_eq!(set.values().unwrap(), [1, 0, 5]);
    // Later operations see earlier ones: V then P on the same semaphore works.
    set.try_op(&[SemOp::v(1), SemOp::p(1), SemOp::new(2, -5), SemOp::zero(2)]).unwrap();
    assert_eq!(set.values().unwrap(), [1, 0, 0]);

    // Blocked on [P0, P1]: semaphore 0 stays 1 while it waits, then both go at once.
    let s2 = set.clone();
    let waiter = thread::spawn(move || s2.op_timeout(&[SemOp::p(0), SemOp::p(1)], LONG));
    eventually("the waiter to block on 1", || set.waiting(1).unwrap().increase == 1);
    assert_eq!(set.waiting(0).unwrap(), WaitCounts::default(), "counted on the blocking operation only");
    for _ in 0..5 {
        assert_eq!(set.values().unwrap(), [1, 0, 0], "partially applied while blocked");
        thread::sleep(Duration::from_millis(10));
    }
    set.op(&[SemOp::v(1)]).unwrap();
    waiter.join().unwrap().unwrap();
    assert_eq!(set.values().unwrap(), [0, 0, 0]);
    let st = set.stat().unwrap();
    assert_eq!(st.last_pids, vec![std::process::id(); 3]);
    assert!(st.op_time > 0 && st.change_time > 0);
}

#[test]
fn bad_requests() {
    let n = name("bad");
    let _c = Cleanup(n.clone());
    let set = SemaphoreSet::create(&n, 2, 0, 0o600).unwrap();
    assert!(matches!(set.try_op(&[]), Err(SemError::Invalid(_))));
    assert!(matches!(set.op(&[SemOp::v(2)]), Err(SemError::BadIndex { index: 2, count: 2 })));
    assert!(matches!(set.op(&vec![SemOp::zero(0); SEM_OPS_MAX + 1]), Err(SemError::TooManyOps { .. })));
    assert!(matches!(set.value(9), Err(SemError::BadIndex { .. })));
    assert!(matches!(set.set_value(0, 32768), Err(SemError::OutOfRange { .. })));
    assert!(matches!(set.set_all(&[1]), Err(SemError::Invalid(_))));
    assert!(matches!(set.set_all(&[1, 40000]), Err(SemError::OutOfRange { index: 1, .. })));
    assert!(matches!(
        SemaphoreSet::create(&name("zero"), 0, 0, 0o600),
        Err(ipckit::Error::InvalidName { .. })
    ));
    assert!(matches!(SemaphoreSet::create(&n, 2, 0, 0o600), Err(ipckit::Error::AlreadyExists(_))));
    assert!(matches!(SemaphoreSet::open_or_create(&n, 3, 0, 0o600), Err(ipckit::Error::InvalidName { .. })));
    assert_eq!(SemaphoreSet::open_or_create(&n, 1, 0, 0o600).unwrap().count(), 2);
    // Not a semaphore set.
    let raw = name("raw");
    let _r = Cleanup(raw.clone());
    Segment::create(&raw, 4096, 0o600).unwrap();
    assert!(matches!(SemaphoreSet::open(&raw, Access::Read), Err(ipckit::Error::Corrupted(_))));
}

#[test]
fn removal_wakes_waiters_and_frees_the_name() {
    let n = name("rm");
    let _c = Cleanup(n.clone());
    let set = SemaphoreSet::create(&n, 1, 1, 0o600).unwrap();
    let other = Arc::new(SemaphoreSet::open(&n, Access::ReadWrite).unwrap());
    let waiters: Vec<_> = [SemOp::new(0, -2).with_undo(), SemOp::zero(0)]
        .into_iter()
        .map(|op| {
            let o = other.clone();
            thread::spawn(move || o.op_timeout(&[op], LONG))
        })
        .collect();
    eventually("both to block", || other.waiting(0).unwrap() == WaitCounts { increase: 1, zero: 1 });
    set.remove().unwrap();
    for w in waiters {
        let r = w.join().unwrap();
        assert!(matches!(r, Err(SemError::Removed)), "{r:?}");
    }
    assert!(matches!(other.op(&[SemOp::v(0)]), Err(SemError::Removed)));
    assert!(matches!(other.value(0), Err(SemError::Removed)));
    assert!(matches!(SemaphoreSet::open(&n, Access::Read), Err(ipckit::Error::NotFound(_))));
    let again = SemaphoreSet::create(&n, 1, 7, 0o600).unwrap();
    assert_eq!(again.value(0).unwrap(), 7);
}

#[test]
fn permissions_follow_the_kernel() {
    let n = name("mode");
    let _c = Cleanup(n.clone());
    // The owner may only read: waiting for zero and queries work, changes do not.
    let set = SemaphoreSet::create(&n, 1, 0, 0o400).unwrap();
    let reader = SemaphoreSet::open(&n, Access::Read).unwrap();
    if ipckit::euid() != 0 {
        assert!(matches!(SemaphoreSet::open(&n, Access::Write), Err(ipckit::Error::PermissionDenied(_))));
        assert!(matches!(reader.op(&[SemOp::v(0)]), Err(SemError::PermissionDenied)));
        assert!(matches!(reader.set_value(0, 1), Err(SemError::PermissionDenied)));
    }
    reader.try_op(&[SemOp::zero(0)]).unwrap();
    assert_eq!(reader.value(0).unwrap(), 0);
    set.set(SemChange { mode: Some(0o600), ..SemChange::default() }).unwrap();
    reader.op(&[SemOp::v(0)]).unwrap();
    assert_eq!(set.stat().unwrap().owner.mode, 0o600);
}

fn spawn_child(role: &str, arg: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_main", "--nocapture", "--test-threads=1"])
        .env(ROLE, format!("{role}:{arg}"))
        .spawn()
        .unwrap()
}

fn wait_ok(mut c: Child) {
    let until = Instant::now() + LONG;
    loop {
        if let Some(st) = c.try_wait().unwrap() {
            assert!(st.success(), "child failed: {st}");
            return;
        }
        if Instant::now() > until {
            let _ = c.kill();
            let _ = c.wait();
            panic!("child timed out");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Counters in a raw segment: [inside now, most inside at once, entries].
fn counters(seg: &Segment) -> [&AtomicU32; 3] {
    [0, 4, 8].map(|o| seg.atomic_u32(Offset::new(o)).unwrap())
}

#[test]
fn child_main() {
    let Ok(role) = std::env::var(ROLE) else { return };
    let (role, arg) = role.split_once(':').unwrap();
    match role {
        "worker" => {
            // Enter the section guarded by semaphore 0 many times; count who is inside.
            let (set_name, seg_name) = arg.split_once(',').unwrap();
            let set = SemaphoreSet::open(set_name, Access::ReadWrite).unwrap();
            let seg = Segment::open(seg_name).unwrap();
            let [inside, most, entries] = counters(&seg);
            for i in 0..200 {
                set.op_timeout(&[SemOp::p(0).with_undo()], LONG).unwrap();
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                entries.fetch_add(1, Ordering::SeqCst);
                if i % 8 == 0 {
                    thread::sleep(Duration::from_micros(200));
                } else {
                    thread::yield_now();
                }
                inside.fetch_sub(1, Ordering::SeqCst);
                set.op(&[SemOp::v(0).with_undo()]).unwrap();
            }
        }
        "hold" => {
            // Take the semaphore with undo, then hang until killed.
            let set = SemaphoreSet::open(arg, Access::ReadWrite).unwrap();
            set.op_timeout(&[SemOp::p(0).with_undo()], LONG).unwrap();
            thread::sleep(LONG * 3);
        }
        "post-and-wait" => {
            // V with undo, wait until the parent took everything, exit normally.
            let set = SemaphoreSet::open(arg, Access::ReadWrite).unwrap();
            set.op(&[SemOp::v(0).with_undo()]).unwrap();
            set.op_timeout(&[SemOp::zero(0)], LONG).unwrap();
        }
        "hammer-no-undo" => {
            // Lock-free single operations and locked pairs, without undo,
            // as fast as possible until killed.
            let set = SemaphoreSet::open(arg, Access::ReadWrite).unwrap();
            loop {
                set.op_timeout(&[SemOp::p(0)], LONG).unwrap();
                set.op(&[SemOp::v(0)]).unwrap();
                set.op_timeout(&[SemOp::p(0), SemOp::v(1)], LONG).unwrap();
                set.op_timeout(&[SemOp::p(1), SemOp::v(0)], LONG).unwrap();
            }
        }
        "hammer" => {
            // P and V with undo as fast as possible until killed.
            let set = SemaphoreSet::open(arg, Access::ReadWrite).unwrap();
            loop {
                set.op_timeout(&[SemOp::p(0).with_undo(), SemOp::v(1).with_undo()], LONG).unwrap();
                set.op(&[SemOp::v(0).with_undo(), SemOp::p(1).with_undo()]).unwrap();
            }
        }
        "intruder" => {
            // Drop to nobody, then try to open the set.
            let gid = rustix::process::Gid::from_raw(65534);
            let uid = rustix::process::Uid::from_raw(65534);
            rustix::thread::set_thread_res_gid(gid, gid, gid).unwrap();
            rustix::thread::set_thread_res_uid(uid, uid, uid).unwrap();
            let (set_name, mode) = arg.split_once(',').unwrap();
            if mode == "600" {
                let r = SemaphoreSet::open(set_name, Access::Read);
                assert!(matches!(r, Err(ipckit::Error::PermissionDenied(_))), "{r:?}");
            } else {
                // 0o644: others may look and wait for zero, but not alter.
                let w = SemaphoreSet::open(set_name, Access::Write);
                assert!(matches!(w, Err(ipckit::Error::PermissionDenied(_))), "{w:?}");
                let set = SemaphoreSet::open(set_name, Access::Read).unwrap();
                assert_eq!(set.value(0).unwrap(), 1);
                assert!(matches!(set.try_op(&[SemOp::zero(0)]), Err(SemError::WouldBlock)));
                assert!(matches!(set.try_op(&[SemOp::v(0)]), Err(SemError::PermissionDenied)));
                assert!(matches!(set.set_value(0, 0), Err(SemError::PermissionDenied)));
                let change = SemChange { mode: Some(0o666), ..SemChange::default() };
                assert!(matches!(set.set(change), Err(ipckit::Error::PermissionDenied(_))));
                assert!(matches!(set.remove(), Err(ipckit::Error::PermissionDenied(_))));
            }
        }
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}

#[test]
fn a_counting_semaphore_limits_concurrency_across_processes() {
    const K: u16 = 2;
    let n = name("limit");
    let seg_name = name("limit-counters");
    let (_c, _s) = (Cleanup(n.clone()), Cleanup(seg_name.clone()));
    let set = SemaphoreSet::create(&n, 1, K, 0o600).unwrap();
    let seg = Segment::create(&seg_name, 64, 0o600).unwrap();
    let kids: Vec<_> = (0..4).map(|_| spawn_child("worker", &format!("{n},{seg_name}"))).collect();
    kids.into_iter().for_each(wait_ok);
    let [inside, most, entries] = counters(&seg);
    assert_eq!(inside.load(Ordering::SeqCst), 0);
    assert_eq!(entries.load(Ordering::SeqCst), 800);
    let most = most.load(Ordering::SeqCst);
    assert!((1..=u32::from(K)).contains(&most), "{most} inside at once, limit {K}");
    assert_eq!(set.value(0).unwrap(), K);
    assert_eq!(set.stat().unwrap().undo_records, 0, "records with nothing to undo are freed");
}

#[test]
fn a_holder_killed_with_sigkill_is_undone() {
    let n = name("undo");
    let _c = Cleanup(n.clone());
    let set = SemaphoreSet::create(&n, 1, 1, 0o600).unwrap();
    let mut kid = spawn_child("hold", &n);
    eventually("the child to take the semaphore", || set.value(0).unwrap() == 0);
    assert_eq!(set.stat().unwrap().undo_records, 1);
    kid.kill().unwrap();
    // Not reaped yet: a zombie counts as dead.
    let start = Instant::now();
    set.op_timeout(&[SemOp::p(0)], LONG).unwrap();
    eprintln!("blocked P succeeded {:?} after the holder was killed", start.elapsed());
    kid.wait().unwrap();
    let st = set.stat().unwrap();
    assert_eq!((st.undo_records, set.value(0).unwrap()), (0, 0));
    assert_eq!(st.last_pids[0], std::process::id());
    // The semaphore works as before.
    set.op(&[SemOp::v(0)]).unwrap();
    assert_eq!(set.value(0).unwrap(), 1);

    // Undo after a normal exit, clamped at zero as the kernel clamps: the
    // child adds 1 (adjustment -1), we take 2, its exit would make it -1.
    set.set_value(0, 1).unwrap();
    let kid = spawn_child("post-and-wait", &n);
    let kid_pid = kid.id();
    eventually("the child to add 1", || set.value(0).unwrap() == 2);
    set.op(&[SemOp::new(0, -2)]).unwrap();
    wait_ok(kid);
    let st = set.stat().unwrap();
    assert_eq!((set.value(0).unwrap(), st.undo_records), (0, 0), "clamped at 0");
    assert_eq!(st.last_pids[0], kid_pid, "exit_sem makes the dead process the last pid");
}

#[test]
fn processes_killed_mid_operation_leave_the_set_consistent() {
    let n = name("hammer");
    let _c = Cleanup(n.clone());
    // Semaphore 0 is a mutex; semaphore 1 counts holders: 0 + 1 always make 1.
    let set = SemaphoreSet::create(&n, 2, 0, 0o600).unwrap();
    set.set_all(&[1, 0]).unwrap();
    for round in 0..30 {
        let mut kids: Vec<_> = (0..3).map(|_| spawn_child("hammer", &n)).collect();
        thread::sleep(Duration::from_millis(30 + (round * 7) % 40));
        for k in &mut kids {
            let _ = k.kill();
        }
        for k in &mut kids {
            let _ = k.wait();
        }
        // Every dead holder's operations are undone whole: the mutex is free again.
        set.op_timeout(&[SemOp::p(0)], LONG).unwrap();
        assert_eq!(set.values().unwrap(), [0, 0], "round {round}");
        set.op(&[SemOp::v(0)]).unwrap();
        assert_eq!(set.stat().unwrap().undo_records, 0, "round {round}");
    }
}

#[test]
fn processes_killed_mid_lock_free_operations_leave_no_half_done_change() {
    // Without undo a killed process keeps what it took (at most one unit,
    // between its P and its V), but no pair is half applied, no change is
    // lost or doubled, and no semaphore stays frozen.
    const TOTAL: u16 = 6;
    const KIDS: u16 = 3;
    let n = name("hammer-fast");
    let _c = Cleanup(n.clone());
    let set = SemaphoreSet::create(&n, 2, 0, 0o600).unwrap();
    for round in 0..20 {
        set.set_all(&[TOTAL, 0]).unwrap();
        let mut kids: Vec<_> = (0..KIDS).map(|_| spawn_child("hammer-no-undo", &n)).collect();
        thread::sleep(Duration::from_millis(20 + (round * 7) % 30));
        for k in &mut kids {
            let _ = k.kill();
        }
        for k in &mut kids {
            let _ = k.wait();
        }
        let v = set.values().unwrap();
        let sum = v[0] + v[1];
        assert!((TOTAL - KIDS..=TOTAL).contains(&sum), "round {round}: {v:?}");
        // Both semaphores still work, lock-free and locked.
        set.op(&[SemOp::v(0)]).unwrap();
        set.op_timeout(&[SemOp::p(0)], LONG).unwrap();
        set.op_timeout(&[SemOp::new(0, -(v[0] as i16)), SemOp::new(1, -(v[1] as i16))], LONG).unwrap();
        assert_eq!(set.values().unwrap(), [0, 0], "round {round}");
    }
}

#[test]
fn others_are_denied_by_mode() {
    if ipckit::euid() != 0 {
        eprintln!("not root: skipping the other-uid case");
        return;
    }
    let n = name("perm");
    let _c = Cleanup(n.clone());
    let set = SemaphoreSet::create(&n, 1, 1, 0o600).unwrap();
    wait_ok(spawn_child("intruder", &format!("{n},600")));
    set.set(SemChange { mode: Some(0o644), ..SemChange::default() }).unwrap();
    wait_ok(spawn_child("intruder", &format!("{n},644")));
    assert_eq!(set.value(0).unwrap(), 1, "the intruder changed nothing");
}

/// The set's bytes, for corrupting them as a stray writer would.
fn poke(name: &str, off: u64, bytes: &[u8]) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(format!("/dev/shm/ipckit.{name}")).unwrap();
    f.seek(SeekFrom::Start(off)).unwrap();
    f.write_all(bytes).unwrap();
}

#[test]
fn corrupted_shared_memory_is_an_error_not_a_crash() {
    // Offsets of this build's layout: header 64 bytes, then the set header
    // (count at +20), semaphores from +128 (8 bytes each).
    let n = name("corrupt");
    let _c = Cleanup(n.clone());
    let set = SemaphoreSet::create(&n, 2, 1, 0o600).unwrap();
    poke(&n, 64 + 128 + 8, &50_000u32.to_ne_bytes());
    assert!(matches!(set.value(1), Err(SemError::Corrupted(_))));
    assert!(matches!(set.try_op(&[SemOp::p(1)]), Err(SemError::Corrupted(_))));
    assert!(matches!(set.values(), Err(SemError::Corrupted(_))));
    assert_eq!(set.value(0).unwrap(), 1, "the healthy semaphore still works");
    set.set_value(1, 3).unwrap();
    assert_eq!(set.value(1).unwrap(), 3, "SETVAL repairs it");
    poke(&n, 64 + 20, &1_000_000u32.to_ne_bytes());
    assert!(matches!(SemaphoreSet::open(&n, Access::Read), Err(ipckit::Error::Corrupted(_))));
    poke(&n, 64 + 20, &0u32.to_ne_bytes());
    assert!(matches!(SemaphoreSet::open(&n, Access::Read), Err(ipckit::Error::Corrupted(_))));
}

#[test]
fn more_blocked_callers_than_counted_are_all_woken() {
    // 128 blocked callers are counted; the rest wait uncounted, and are woken all the same.
    let n = name("crowd");
    let _c = Cleanup(n.clone());
    let set = Arc::new(SemaphoreSet::create(&n, 1, 0, 0o600).unwrap());
    let takers: Vec<_> = (0..150)
        .map(|_| {
            let set = set.clone();
            thread::spawn(move || set.op_timeout(&[SemOp::p(0)], LONG))
        })
        .collect();
    eventually("the counted callers to block", || set.waiting(0).unwrap().increase == 128);
    thread::sleep(Duration::from_millis(50));
    for _ in 0..150 {
        set.op(&[SemOp::v(0)]).unwrap();
    }
    for t in takers {
        t.join().unwrap().unwrap();
    }
    assert_eq!((set.value(0).unwrap(), set.waiting(0).unwrap()), (0, WaitCounts::default()));
}

#[test]
fn lock_free_and_locked_operations_mix_exactly() {
    // Single operations without undo take the lock-free path; several at
    // once take the lock and freeze their semaphores. Mixed on the same
    // semaphores, nothing is lost, and a GETALL snapshot is one moment's.
    // Both semaphores start with units, so the singles on semaphore 1 never
    // depend on the movers still running.
    const EACH: u16 = 25;
    const TOTAL: u16 = 2 * EACH;
    const SINGLES: u16 = 4;
    const ROUNDS: usize = 20_000;
    let n = name("mix");
    let _c = Cleanup(n.clone());
    let set = Arc::new(SemaphoreSet::create(&n, 2, 0, 0o600).unwrap());
    set.set_all(&[EACH, EACH]).unwrap();
    let start = Arc::new(std::sync::Barrier::new(2 + usize::from(SINGLES) + 1));
    let mut workers: Vec<_> = (0..2)
        .map(|_| {
            let (set, start) = (set.clone(), start.clone());
            thread::spawn(move || {
                start.wait();
                (0..ROUNDS).try_for_each(|_| {
                    set.op_timeout(&[SemOp::p(0), SemOp::v(1)], LONG)?;
                    set.op_timeout(&[SemOp::p(1), SemOp::v(0)], LONG)
                })
            })
        })
        .collect();
    workers.extend((0..SINGLES).map(|k| {
        let (set, start) = (set.clone(), start.clone());
        thread::spawn(move || {
            let i = usize::from(k % 2);
            start.wait();
            (0..ROUNDS).try_for_each(|_| {
                set.op_timeout(&[SemOp::p(i)], LONG)?;
                set.op(&[SemOp::v(i)])
            })
        })
    }));
    start.wait();
    while !workers.iter().all(|w| w.is_finished()) {
        let v = set.values().unwrap();
        let sum = v[0] + v[1];
        assert!((TOTAL - SINGLES..=TOTAL).contains(&sum), "snapshot {v:?}");
    }
    for w in workers {
        w.join().unwrap().unwrap();
    }
    let v = set.values().unwrap();
    assert_eq!(v[0] + v[1], TOTAL, "{v:?}");
    set.op_timeout(&[SemOp::new(0, -(v[0] as i16)), SemOp::new(1, -(v[1] as i16))], LONG).unwrap();
    assert_eq!(set.values().unwrap(), [0, 0]);
}

#[test]
fn a_stray_busy_bit_only_sends_operations_through_the_lock() {
    // Bit 31 of a value word means "the lock holder works on this
    // semaphore"; a stray one (no holder) must not block or corrupt anything.
    let n = name("busy");
    let _c = Cleanup(n.clone());
    let set = SemaphoreSet::create(&n, 2, 1, 0o600).unwrap();
    poke(&n, 64 + 128, &(1u32 | 1 << 31).to_ne_bytes());
    assert_eq!(set.value(0).unwrap(), 1);
    set.op_timeout(&[SemOp::p(0)], LONG).unwrap();
    assert!(matches!(set.try_op(&[SemOp::p(0)]), Err(SemError::WouldBlock)));
    set.op(&[SemOp::v(0)]).unwrap();
    set.op(&[SemOp::v(0)]).unwrap();
    assert_eq!(set.values().unwrap(), [2, 1]);
    assert_eq!(set.stat().unwrap().last_pids, [std::process::id(), 0]);
}

#[test]
fn random_words_over_a_live_set_give_errors_not_crashes_or_hangs() {
    // A stray writer (or a hostile process) puts random words over the set
    // header and the semaphores (busy bits and lock words included); every
    // call still returns, with a result or an error, and the set can be
    // reset and used again.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(std::process::id());
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let short = Duration::from_millis(20);
    for round in 0..100 {
        let n = name("random");
        let _c = Cleanup(n.clone());
        let set = SemaphoreSet::create(&n, 3, 1, 0o600).unwrap();
        for _ in 0..1 + next() % 4 {
            // Header (64..192) and the three semaphores (192..216), 4-byte words.
            let off = 64 + 4 * (next() % 38);
            let mut word = match next() % 4 {
                0 => 1u32 << 31 | (next() as u32 & 0xffff),
                1 => next() as u32 & 0x7fff,
                _ => next() as u32,
            };
            if off == 64 {
                // The lock word: a pid beyond any pid_max (a dead holder),
                // not some live process that would hold it for the 5 s of patience.
                word |= 1 << 30;
            }
            poke(&n, off, &word.to_ne_bytes());
        }
        let _ = set.try_op(&[SemOp::p((next() % 3) as usize)]);
        let _ = set.op_timeout(&[SemOp::v(0)], short);
        let _ = set.op_timeout(&[SemOp::p(1), SemOp::v(2)], short);
        let _ = set.op_timeout(&[SemOp::zero(2)], short);
        let _ = set.values();
        let _ = set.value(1);
        let _ = set.waiting(0);
        let _ = set.stat();
        if set.set_all(&[1, 1, 1]).is_ok() {
            // Reset: it works again, unless the header says removed or forbids us.
            match set.try_op(&[SemOp::p(0), SemOp::v(1)]) {
                Ok(()) => assert_eq!(set.values().unwrap(), [0, 2, 1], "round {round}"),
                Err(e) => eprintln!("round {round}: after SETALL: {e}"),
            }
        }
    }
}
