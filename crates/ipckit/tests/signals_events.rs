//! Signals, events and death notification with real processes.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ipckit::event::{Event, EventMode, ProcessWatch};
use ipckit::signal::{self, Signals, SIGIO, SIGTERM, SIGUSR1, SIGUSR2};

mod support;

use support::{unique_name, Kid};

const LONG: Duration = Duration::from_secs(20);
const ROLE: &str = "IPCKIT_SIGNAL_ROLE";

fn kid(role: &str, arg: &str) -> Command {
    support::role_command(ROLE, format!("{role}:{arg}"))
}

fn wait_status(k: &mut Kid) -> std::process::ExitStatus {
    k.status_within(LONG)
}

fn name(tag: &str) -> String {
    unique_name("t-ev", tag)
}

/// The real-time signal the direct-path tests use.
fn rt_direct() -> i32 {
    signal::sigrtmin() + 3
}

/// Children whose role starts with "blocked" block SIGUSR1 and a real-time
/// signal before `main` runs, as a program calls `signal::block` first thing
/// in its own `main`: libtest owns this binary's `main` and starts threads,
/// so an ELF constructor is the only place where no other thread exists yet.
#[used]
#[link_section = ".init_array"]
static BLOCK_BEFORE_MAIN: extern "C" fn() = block_before_main;

extern "C" fn block_before_main() {
    if std::env::var(ROLE).is_ok_and(|r| r.starts_with("blocked"))
        && signal::block(&[SIGUSR1, rt_direct()]).is_err()
    {
        std::process::abort();
    }
}

/// Says `line` to the parent (after a marker: libtest writes to stdout too,
/// and the first line shares its line with libtest's "test child_main ... ").
fn say(line: &str) {
    println!("@@{line}");
    std::io::stdout().flush().unwrap();
}

/// Waits for one line from the parent on stdin.
fn hear() -> String {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    line.trim().to_owned()
}

/// A child that talks in lines: its "@" lines arrive through a thread, so
/// every wait for one has a timeout.
struct Chat {
    kid: Kid,
    to: ChildStdin,
    from: mpsc::Receiver<String>,
}

impl Chat {
    fn spawn(role: &str) -> Chat {
        let mut c = kid(role, "");
        c.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let to = child.stdin.take().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, from) = mpsc::channel();
        thread::spawn(move || {
            for line in out.lines().map_while(|l| l.ok()) {
                if let Some((_, l)) = line.split_once("@@") {
                    let _ = tx.send(l.to_owned());
                }
            }
        });
        Chat { kid: Kid(child), to, from }
    }

    fn hear(&self) -> String {
        self.from.recv_timeout(LONG).expect("the child said nothing")
    }

    fn say(&mut self, line: &str) {
        writeln!(self.to, "{line}").unwrap();
    }
}

/// The child of `signals_blocked_everywhere_are_taken_directly_with_their_sender`.
fn blocked_direct() {
    let rt = rt_direct();
    assert!(signal::blocked_in_every_thread(&[SIGUSR1, rt]).unwrap(), "blocked before main");
    let mut signals = Signals::new(&[SIGUSR1, rt]).unwrap();
    say("ready");
    // The parent sends while nobody receives: the kernel holds them.
    assert_eq!(hear(), "sent");
    let mut got = Vec::new();
    while let Ok(i) = signals.recv_timeout(Duration::from_millis(300)) {
        got.push(i);
    }
    let parent = std::os::unix::process::parent_id();
    assert!(got.iter().all(|i| (i.pid, i.uid) == (parent, ipckit::euid())), "{got:?}");
    let usr1 = got.iter().filter(|i| i.signal == SIGUSR1).count();
    let values: Vec<String> =
        got.iter().filter(|i| i.signal == rt).map(|i| format!("{:?}", i.value)).collect();
    // A signal to this very thread waits in its own queue, which this thread's recv reads.
    signal::send_thread(std::process::id(), signal::thread_id(), SIGUSR1).unwrap();
    let i = signals.recv_timeout(LONG).unwrap();
    assert_eq!((i.signal, i.pid, i.code), (SIGUSR1, std::process::id(), libc::SI_TKILL));
    // A closure runs on a thread that inherits the mask: still blocked everywhere.
    drop(signals);
    let (tx, rx) = mpsc::channel();
    let h = signal::handle(&[rt], move |i| tx.send(i).unwrap()).unwrap();
    assert!(signal::blocked_in_every_thread(&[SIGUSR1, rt]).unwrap());
    say("handling");
    let i = rx.recv_timeout(LONG).unwrap();
    drop(h);
    say(&format!("usr1={usr1} rt={} handled={:?}", values.join(","), i.value));
}

/// The child of `a_thread_that_unblocks_later_gets_the_handler_and_nothing_is_lost`.
fn blocked_rogue() {
    let mut signals = Signals::new(&[SIGUSR1]).unwrap();
    // A thread lets SIGUSR1 in after the registration: the kernel may now
    // run ipckit's handler there instead of keeping the signal pending.
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        signal::unblock(&[SIGUSR1]).unwrap();
        tx.send(signal::thread_id()).unwrap();
        loop {
            thread::sleep(LONG);
        }
    });
    let rogue = rx.recv_timeout(LONG).unwrap();
    assert!(!signal::blocked_in_every_thread(&[SIGUSR1]).unwrap());
    let me = std::process::id();
    // Sent to that very thread while nobody waits: the handler's record waits in the pipe.
    signal::send_thread(me, rogue, SIGUSR1).unwrap();
    thread::sleep(Duration::from_millis(100));
    let i = signals.recv_timeout(LONG).unwrap();
    assert_eq!((i.signal, i.pid, i.code), (SIGUSR1, me, libc::SI_TKILL));
    // Sent there while this thread sleeps in recv: the handler wakes it with a relay.
    let later = thread::spawn(move || {
        thread::sleep(Duration::from_millis(200));
        signal::send_thread(me, rogue, SIGUSR1).unwrap();
    });
    let i = signals.recv_timeout(LONG).unwrap();
    assert_eq!((i.signal, i.pid, i.code), (SIGUSR1, me, libc::SI_TKILL));
    later.join().unwrap();
    assert!(signals.try_recv().is_err(), "a relay is no signal");
    // From another process, whichever thread the kernel picks.
    for n in 0..3 {
        say(&format!("ready {n}"));
        let i = signals.recv_timeout(LONG).unwrap();
        assert_eq!(i.signal, SIGUSR1);
        say(&format!("got {}", i.pid));
    }
}

#[test]
fn child_main() {
    let Ok(role) = std::env::var(ROLE) else { return };
    let (role, arg) = role.split_once(':').unwrap();
    let parent = std::os::unix::process::parent_id();
    match role {
        "send" => {
            signal::send(parent, SIGUSR1).unwrap();
            signal::send(parent, SIGIO).unwrap();
        }
        "queue" => signal::queue(parent, signal::sigrtmin() + 2, arg.parse().unwrap()).unwrap(),
        "default-self" => {
            let _g = signal::default(SIGUSR2).unwrap();
            signal::send(std::process::id(), SIGUSR2).unwrap();
            thread::sleep(LONG);
        }
        "sleep" => thread::sleep(LONG * 10),
        "blocked-direct" => blocked_direct(),
        "blocked-rogue" => blocked_rogue(),
        "echo" => {
            let mut signals = Signals::new(&[SIGUSR1]).unwrap();
            say("ready");
            for _ in 0..ROUNDS {
                let i = signals.recv_timeout(LONG).unwrap();
                assert_eq!((i.signal, i.pid), (SIGUSR1, parent));
                signal::send(parent, SIGUSR2).unwrap();
            }
        }
        "wait-event" => {
            let ev = Event::open(arg).unwrap();
            ev.wait_timeout(LONG).unwrap();
        }
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}

// All signal tests share the process-wide dispositions: run them one after another.
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn handlers_get_signals_from_another_process_with_its_pid_and_uid() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    let handler = signal::handle(&[SIGUSR1, SIGIO], move |info| sink.lock().unwrap().push(info)).unwrap();
    let mut k = Kid(kid("send", "").spawn().unwrap());
    assert!(wait_status(&mut k).success());
    let until = Instant::now() + LONG;
    while got.lock().unwrap().len() < 2 {
        assert!(Instant::now() < until, "signals not delivered: {:?}", got.lock().unwrap());
        thread::sleep(Duration::from_millis(5));
    }
    drop(handler);
    let got = got.lock().unwrap();
    let sigs: Vec<i32> = got.iter().map(|i| i.signal).collect();
    assert!(sigs.contains(&SIGUSR1) && sigs.contains(&SIGIO), "{got:?}");
    for i in got.iter() {
        assert_eq!((i.pid, i.uid), (k.0.id(), ipckit::euid()), "the kernel names the sender");
    }
}

#[test]
fn real_time_signals_queue_with_values_and_standard_ones_coalesce() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = signal::sigrtmin() + 1;
    let mut signals = Signals::new(&[SIGUSR2, rt]).unwrap();
    // Hold both signals back on this thread, send five of each to this
    // thread, then let them in.
    // SAFETY: sigset manipulation on local values; pthread_sigmask on this thread.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, SIGUSR2);
        libc::sigaddset(&mut set, rt);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    let (pid, tid) = (std::process::id(), signal::thread_id());
    let send = || {
        for v in 0..5 {
            signal::send_thread(pid, tid, SIGUSR2).unwrap();
            // rt_tgsigqueueinfo: a real-time signal with a value, to this thread.
            // SAFETY: a zeroed siginfo_t with the fields the syscall reads set below.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            info.si_signo = rt;
            info.si_code = libc::SI_QUEUE;
            // SAFETY: writes the sender pid/uid/value fields of the union as glibc lays them out.
            unsafe {
                let p = (&mut info as *mut libc::siginfo_t).cast::<i32>();
                *p.add(4) = pid as i32; // si_pid
                *p.add(5) = ipckit::euid() as i32; // si_uid
                *p.add(6) = 100 + v; // si_value (int)
                assert_eq!(libc::syscall(libc::SYS_rt_tgsigqueueinfo, pid, tid, rt, &info), 0);
            }
        }
    };
    let check = |signals: &mut Signals| {
        let mut got = Vec::new();
        while let Ok(i) = signals.recv_timeout(Duration::from_millis(300)) {
            got.push((i.signal, i.value));
        }
        let usr2 = got.iter().filter(|(s, _)| *s == SIGUSR2).count();
        let values: Vec<Option<i32>> = got.iter().filter(|(s, _)| *s == rt).map(|(_, v)| *v).collect();
        assert_eq!(usr2, 1, "five pending SIGUSR2 coalesce into one: {got:?}");
        assert_eq!(
            values,
            (100..105).map(Some).collect::<Vec<_>>(),
            "real-time signals queue, in order, with values"
        );
    };
    // Still blocked on this thread: taken from its queue by sigtimedwait (no handler can run).
    send();
    check(&mut signals);
    // Then let in: the handler takes them, through the pipe.
    send();
    // SAFETY: unblocks on this thread.
    unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
    check(&mut signals);
}

#[test]
fn a_queued_value_arrives_from_another_process_and_signals_during_a_handler_wait() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = signal::sigrtmin() + 2;
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    let _h = signal::handle(&[rt], move |info| {
        // A slow handler: the others arrive while it runs, and wait their turn.
        thread::sleep(Duration::from_millis(50));
        sink.lock().unwrap().push((info.value, info.pid));
    })
    .unwrap();
    let mut kids: Vec<Kid> =
        (0..4).map(|v| Kid(kid("queue", &(42 + v).to_string()).spawn().unwrap())).collect();
    for k in &mut kids {
        assert!(wait_status(k).success());
    }
    let until = Instant::now() + LONG;
    while got.lock().unwrap().len() < 4 {
        assert!(Instant::now() < until, "lost a queued signal: {:?}", got.lock().unwrap());
        thread::sleep(Duration::from_millis(10));
    }
    let mut values: Vec<i32> = got.lock().unwrap().iter().map(|(v, _)| v.unwrap()).collect();
    values.sort();
    assert_eq!(values, [42, 43, 44, 45]);
}

fn disposition(sig: i32) -> usize {
    // SAFETY: querying (null new action) into a zeroed struct.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) };
    old.sa_sigaction
}

fn blocked_here(sig: i32) -> bool {
    // SAFETY: reads this thread's mask into a zeroed set.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut set) };
    unsafe { libc::sigismember(&set, sig) == 1 }
}

#[test]
fn dropping_a_registration_restores_the_old_disposition() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let before = disposition(SIGUSR1);
    {
        let _ignored = signal::ignore(SIGUSR1).unwrap();
        assert_eq!(disposition(SIGUSR1), libc::SIG_IGN);
        {
            let mut caught = Signals::new(&[SIGUSR1]).unwrap();
            assert!(![libc::SIG_IGN, libc::SIG_DFL].contains(&disposition(SIGUSR1)));
            assert!(Signals::new(&[SIGUSR1]).is_err(), "one registration per signal");
            // recv leaves the thread's mask as it was.
            assert!(caught.try_recv().is_err());
            assert!(!blocked_here(SIGUSR1));
        }
        assert_eq!(disposition(SIGUSR1), libc::SIG_IGN, "back to ignore");
        // Ignored: delivering it does nothing at all.
        signal::send(std::process::id(), SIGUSR1).unwrap();
    }
    assert_eq!(disposition(SIGUSR1), before);
    assert!(Signals::new(&[libc::SIGKILL]).is_err());
    assert!(signal::block(&[libc::SIGKILL]).is_err() && signal::unblock(&[0]).is_err());
}

#[test]
fn the_default_action_terminates_and_a_group_is_told_to_stop() {
    let mut k = Kid(kid("default-self", "").spawn().unwrap());
    let st = wait_status(&mut k);
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), Some(SIGUSR2));
    // Three children in one process group, stopped with one signal.
    let mut first = kid("sleep", "");
    first.process_group(0);
    let first = Kid(first.spawn().unwrap());
    let pgid = first.0.id();
    let mut kids = vec![first];
    for _ in 0..2 {
        let mut c = kid("sleep", "");
        c.process_group(pgid as i32);
        kids.push(Kid(c.spawn().unwrap()));
    }
    thread::sleep(Duration::from_millis(100));
    signal::send_group(pgid, SIGTERM).unwrap();
    for k in &mut kids {
        let st = wait_status(k);
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), Some(SIGTERM));
    }
}

#[test]
fn a_process_watch_reports_a_kill_at_once() {
    let mut k = Kid(kid("sleep", "").spawn().unwrap());
    let watch = ProcessWatch::new(k.0.id()).unwrap();
    assert!(!watch.try_wait().unwrap());
    assert!(!watch.wait_timeout(Duration::from_millis(50)).unwrap());
    let start = Instant::now();
    k.0.kill().unwrap();
    assert!(watch.wait_timeout(LONG).unwrap());
    assert!(start.elapsed() < LONG);
    let _ = k.0.wait();
    assert!(ProcessWatch::parent().unwrap().pid() > 0);
}

#[test]
fn events_across_processes_and_modes() {
    let n = name("cross");
    let ev = Event::create(&n, EventMode::AutoReset, 0o600).unwrap();
    let mut k = Kid(kid("wait-event", &n).spawn().unwrap());
    thread::sleep(Duration::from_millis(100));
    ev.notify_one();
    assert!(wait_status(&mut k).success(), "the child was released");
    Event::remove(&n).unwrap();

    // Auto-reset: notifications coalesce; one waiter takes it.
    let n = name("auto");
    let ev = Event::create(&n, EventMode::AutoReset, 0o600).unwrap();
    ev.notify_one();
    ev.notify_one();
    assert!(ev.try_wait().is_ok());
    assert!(ev.try_wait().is_err());
    // notify_all releases every current waiter, and leaves nothing behind.
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let e = Event::open(&n).unwrap();
            thread::spawn(move || e.wait_timeout(LONG).is_ok())
        })
        .collect();
    thread::sleep(Duration::from_millis(100));
    ev.notify_all();
    assert!(waiters.into_iter().all(|w| w.join().unwrap()));
    assert!(ev.try_wait().is_err());
    Event::remove(&n).unwrap();

    // Manual reset stays set; counting counts.
    let n = name("manual");
    let ev = Event::create(&n, EventMode::ManualReset, 0o600).unwrap();
    ev.notify_one();
    assert!(ev.try_wait().is_ok() && ev.try_wait().is_ok());
    ev.reset();
    assert!(ev.wait_timeout(Duration::from_millis(30)).is_err());
    Event::remove(&n).unwrap();
    let n = name("count");
    let ev = Event::create(&n, EventMode::Counting, 0o600).unwrap();
    for _ in 0..3 {
        ev.notify_one();
    }
    assert_eq!(ev.value(), 3);
    assert!((0..3).all(|_| ev.try_wait().is_ok()));
    assert!(ev.try_wait().is_err());
    Event::remove(&n).unwrap();
}

#[test]
fn signals_blocked_everywhere_are_taken_directly_with_their_sender() {
    let mut c = Chat::spawn("blocked-direct");
    assert_eq!(c.hear(), "ready");
    let pid = c.kid.0.id();
    for _ in 0..3 {
        signal::send(pid, SIGUSR1).unwrap();
    }
    for v in 10..15 {
        signal::queue(pid, rt_direct(), v).unwrap();
    }
    c.say("sent");
    assert_eq!(c.hear(), "handling");
    signal::queue(pid, rt_direct(), 77).unwrap();
    assert_eq!(
        c.hear(),
        "usr1=1 rt=Some(10),Some(11),Some(12),Some(13),Some(14) handled=Some(77)",
        "standard signals coalesce, real-time ones queue in order with values"
    );
    assert!(wait_status(&mut c.kid).success());
}

#[test]
fn a_thread_that_unblocks_later_gets_the_handler_and_nothing_is_lost() {
    let mut c = Chat::spawn("blocked-rogue");
    for n in 0..3 {
        assert_eq!(c.hear(), format!("ready {n}"));
        signal::send(c.kid.0.id(), SIGUSR1).unwrap();
        assert_eq!(c.hear(), format!("got {}", std::process::id()));
    }
    assert!(wait_status(&mut c.kid).success());
}

/// Round trips of `ping_pong_loses_nothing_whichever_thread_the_kernel_picks`.
const ROUNDS: usize = 300;

#[test]
fn ping_pong_loses_nothing_whichever_thread_the_kernel_picks() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Neither side blocks the signals and neither receives on its main
    // thread: deliveries go straight to a waiting receiver, or through the
    // handler on another thread (and a relay), racing every step of both.
    let mut signals = Signals::new(&[SIGUSR2]).unwrap();
    let mut c = Chat::spawn("echo");
    assert_eq!(c.hear(), "ready");
    let kid = c.kid.0.id();
    for _ in 0..ROUNDS {
        signal::send(kid, SIGUSR1).unwrap();
        let i = signals.recv_timeout(LONG).unwrap();
        assert_eq!((i.signal, i.pid), (SIGUSR2, kid));
    }
    assert!(wait_status(&mut c.kid).success());
    assert!(signals.try_recv().is_err(), "one reply per ping, no relay returned");
}
