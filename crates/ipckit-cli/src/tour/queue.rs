//! Scene 4, System V message queues: one typed queue, two receiver processes
//! that each wait for a different message type, the sender interleaving both
//! types; then a negative-type receive (lowest type first) and `msgctl(IPC_STAT)`.

use std::ffi::OsStr;
use std::time::{Duration, Instant};

use ipckit::perm::Access;
use ipckit::spawn::Inherit;
use ipckit::sysv::{MessageQueue, QueueConfig, QueueStat, Select};
use ipckit::RecvTimeoutError;

use super::child::TourChild;
use super::narrate::{fmt_duration, heading, Actor};
use super::procfs;
use crate::error::{fail, Context, Result};

/// The two kinds of message, one receiver each: (type, what, receiver role).
const KINDS: [(i64, &str, &str); 2] =
    [(1, "render jobs", "render-receiver"), (2, "log lines", "log-receiver")];
/// The type the receivers use to say they are ready (nobody else uses it).
const READY: i64 = 100;
/// What the tour sends, interleaving the two types.
const MESSAGES: [(i64, &str); 6] = [
    (1, "render frame 1"),
    (2, "log: frame 1 queued"),
    (1, "render frame 2"),
    (2, "log: frame 2 queued"),
    (1, "render frame 3"),
    (2, "log: all frames queued"),
];
/// Sent in this order, received with type -3: lowest type first.
const PRIORITIES: [(i64, &str); 3] =
    [(3, "priority 3: tidy up /tmp"), (1, "priority 1: disk full!"), (2, "priority 2: new user")];
/// The longest message any receive here accepts.
const MAX: usize = 256;
/// How long anyone waits for any one message (or for room to send) before giving up.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// Removes the queue when dropped unless it was removed already, so a failing
/// scene leaves nothing behind in `/dev/shm`.
struct RemoveOnDrop<'a> {
    name: &'a str,
    armed: bool,
}

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = MessageQueue::remove_name(self.name) {
                tracing::warn!(name = self.name, error = %e, "could not remove the tour's queue");
            }
        }
    }
}

/// The sender's (parent's) side of the scene.
pub fn run(number: usize) -> Result<()> {
    heading(number, "Typed message queue: two receivers, each takes only its own type");
    let me = Actor::me("tour");
    let name = format!("ipckit-tour-{}-queue", me.pid);
    let q = MessageQueue::create(&name, QueueConfig::default())
        .context(format!("creating the message queue {name:?}"))?;
    // Declared before the children: dropped after them (they are killed first).
    let mut cleanup = RemoveOnDrop { name: &name, armed: true };
    let st = q.stat().context("reading the queue's status")?;
    me.say(format!(
        "MessageQueue::create({name:?}) (msgget with IPC_CREAT|IPC_EXCL): a queue in \
         /dev/shm/ipckit.{name}, mode {:o}, room for {} bytes of messages of at most {} bytes",
        st.owner.mode, st.capacity, st.max_message
    ));

    let mut children = Vec::new();
    for (mtype, what, role) in KINDS {
        let (t, n) = (mtype.to_string(), MESSAGES.iter().filter(|m| m.0 == mtype).count().to_string());
        let args = ["queue-receiver", &name, "--type", &t, "--expect", &n].map(OsStr::new);
        let child = TourChild::spawn(role, &args, Inherit::new())?;
        me.say(format!(
            "spawned {role}, pid {}: it opens the queue by name and takes type {mtype} ({what}) only",
            child.pid()
        ));
        children.push(child);
    }
    for _ in &children {
        let (_, text) = recv_step(&q, Select::of(READY), "a receiver's ready message")?;
        me.say(format!("recv(type {READY}) -> {:?}", String::from_utf8_lossy(&text)));
    }
    std::thread::sleep(Duration::from_millis(100));
    for child in &children {
        me.say(format!(
            "{} {} waits in recv with an empty queue; the kernel says: {}",
            child.role(),
            child.pid(),
            procfs::describe_wait(child.pid())
        ));
    }

    me.say("now I send both types, interleaved, to the one queue:");
    for (mtype, text) in MESSAGES {
        q.send_timeout(mtype, text.as_bytes(), STEP_TIMEOUT).context(format!("sending {text:?}"))?;
        me.say(format!("send(type {mtype}, {text:?})"));
        // A moment for the receiver's line to come out next to the send.
        std::thread::sleep(Duration::from_millis(30));
    }
    for child in &mut children {
        let lived = child.wait_success(STEP_TIMEOUT * 2)?;
        me.say(format!(
            "reaped {} {}: exited with status 0 after {}, having taken its own type only, in order",
            child.role(),
            child.pid(),
            fmt_duration(lived)
        ));
    }
    let st = q.stat().context("reading the queue's status")?;
    let last = children.iter().find(|c| c.pid() == st.last_receiver).map_or("?", |c| c.role());
    me.say(format!("stat (msgctl IPC_STAT): {}", summarize(&st)));
    me.say(format!(
        "the last sender is me (pid {}); the last receiver is pid {} ({last}), which has exited: \
         the queue remembers it",
        me.pid, st.last_receiver
    ));

    me.say("a negative type takes the lowest type first: I send three priorities out of order");
    for (mtype, text) in PRIORITIES {
        q.send_timeout(mtype, text.as_bytes(), STEP_TIMEOUT).context(format!("sending {text:?}"))?;
        me.say(format!("send(type {mtype}, {text:?})"));
    }
    let st = q.stat().context("reading the queue's status")?;
    me.say(format!("stat: {}", summarize(&st)));
    let mut got = Vec::new();
    for _ in PRIORITIES {
        let (mtype, text) = recv_step(&q, Select::of(-3), "a message of type <= 3")?;
        me.say(format!(
            "recv(type -3) -> type {mtype}, {:?}: the lowest type <= 3 in the queue",
            String::from_utf8_lossy(&text)
        ));
        got.push(mtype);
    }
    if got != [1, 2, 3] {
        fail!("recv(type -3) took types {got:?}, expected [1, 2, 3]");
    }
    let st = q.stat().context("reading the queue's status")?;
    me.say(format!("stat: {}; the last receiver is me now", summarize(&st)));

    q.remove().context("removing the queue")?;
    cleanup.armed = false;
    match MessageQueue::open(&name, Access::Read) {
        Err(e) => me.say(format!(
            "MessageQueue::remove (msgctl IPC_RMID): removed; opening {name:?} again fails: {e}"
        )),
        Ok(_) => fail!("the queue {name:?} is still there after remove"),
    }
    Ok(())
}

/// `3 messages, 55 bytes (of 16384), last send ... by pid N, ...`.
fn summarize(st: &QueueStat) -> String {
    format!(
        "{} message(s), {} bytes (of {}), last sender pid {}, last receiver pid {}, owner uid {}, mode {:o}",
        st.messages, st.bytes, st.capacity, st.last_sender, st.last_receiver, st.owner.uid, st.owner.mode
    )
}

/// One receive with the scene's timeout.
fn recv_step(q: &MessageQueue, select: Select, what: &str) -> Result<(i64, Vec<u8>)> {
    match q.recv_timeout(select, MAX, STEP_TIMEOUT) {
        Ok(m) => Ok(m),
        Err(RecvTimeoutError::Timeout) => fail!("no {what} within {STEP_TIMEOUT:?}"),
        Err(e) => Err(e).context(format!("receiving {what}")),
    }
}

/// A receiver (a child): opens the queue by name, says it is ready, then
/// takes `expect` messages of type `mtype` and nothing else.
pub fn receiver(name: &str, mtype: i64, expect: usize) -> Result<()> {
    let Some(&(_, what, role)) = KINDS.iter().find(|k| k.0 == mtype) else {
        fail!("the tour has no receiver for type {mtype}");
    };
    let me = Actor::me(role);
    let q = MessageQueue::open(name, Access::ReadWrite).context(format!("opening the queue {name:?}"))?;
    me.say(format!(
        "MessageQueue::open({name:?}): I take type {mtype} ({what}) only; recv(type {mtype}) blocks"
    ));
    let hello = format!("{role} pid {} ready for type {mtype}", me.pid);
    q.send_timeout(READY, hello.as_bytes(), STEP_TIMEOUT).context("saying I am ready")?;
    let started = Instant::now();
    for i in 1..=expect {
        let (t, text) = recv_step(&q, Select::of(mtype), &format!("type {mtype} message"))?;
        if t != mtype {
            fail!("asked for type {mtype}, got type {t}");
        }
        me.say(format!("recv(type {mtype}) #{i} -> {:?}", String::from_utf8_lossy(&text)));
    }
    me.say(format!(
        "took {expect} {what} in {}, in the order sent, none of the other type; exiting",
        fmt_duration(started.elapsed())
    ));
    Ok(())
}
