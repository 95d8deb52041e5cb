//! Scene 8, the microkernel IPC the chapter leaves as a TODO: the tour owns
//! an endpoint and mints a badged send capability for each of two client
//! processes; their calls arrive with the badge of the capability they came
//! through (which no client can forge); one call's one-shot reply
//! capability is handed to a worker process that answers it; a client
//! without the grant right tries to pass a capability and is refused; when
//! every holder is gone, the endpoint says so.

use std::ffi::OsStr;
use std::time::Duration;

use ipckit::endpoint::{Cap, Endpoint, ReplyCap, Rights};
use ipckit::spawn::{self, Inherit};
use ipckit::{Message, RecvTimeoutError};

use super::child::TourChild;
use super::narrate::{heading, Actor};
use crate::error::{fail, Context, Result};

/// How long the tour waits for the next call.
const WAIT: Duration = Duration::from_secs(10);
/// The clients and the badges their capabilities carry.
const CLIENTS: [(&str, u64); 2] = [("alice", 1), ("bob", 2)];

/// The endpoint's (the tour's) side of the scene.
pub fn run(number: usize) -> Result<()> {
    heading(number, "Microkernel endpoints: badged capabilities, call/reply, a reply capability handed on");
    let me = Actor::me("tour");
    let mut ep = Endpoint::new();
    let mut clients = Vec::new();
    for (name, badge) in CLIENTS {
        let cap = ep.mint(badge, Rights::SEND).context("minting a capability")?;
        let mut kit = Inherit::new();
        kit.pass("cap", cap).context("passing the capability")?;
        let child =
            TourChild::spawn("endpoint-client", &[OsStr::new("endpoint-client"), OsStr::new(name)], kit)?;
        me.say(format!(
            "minted a send capability with badge {badge} and handed it to {name}, pid {}",
            child.pid()
        ));
        clients.push(child);
    }
    let mut calls = 0;
    let mut worker = None;
    loop {
        let got = match ep.recv_timeout(WAIT) {
            Ok(got) => got,
            Err(RecvTimeoutError::Disconnected) => break,
            Err(e) => return Err(e).context("receiving on the endpoint"),
        };
        calls += 1;
        let who = CLIENTS.iter().find(|c| c.1 == got.badge).map_or("?", |c| c.0);
        let text = String::from_utf8_lossy(got.message.bytes()).into_owned();
        me.say(format!("recv: {text:?} through the capability with badge {} ({who})", got.badge));
        let Some(reply) = got.reply else { fail!("a call came without a reply capability") };
        if calls == 3 {
            // Hand this call's one-shot reply capability to another process.
            let mut kit = Inherit::new();
            kit.pass("reply", reply).context("passing the reply capability")?;
            let w = TourChild::spawn("endpoint-worker", &[OsStr::new("endpoint-worker")], kit)?;
            me.say(format!(
                "handed the reply capability of that call to a worker, pid {}: it will answer",
                w.pid()
            ));
            worker = Some(w);
        } else {
            reply.reply(format!("hello {who}, your badge is {}", got.badge)).context("replying")?;
        }
    }
    if calls != 4 {
        fail!("expected 4 calls, got {calls}");
    }
    me.say("every capability is gone (both clients exited): recv says Disconnected");
    for mut c in clients {
        c.wait_success(WAIT)?;
    }
    if let Some(mut w) = worker {
        w.wait_success(WAIT)?;
    }
    Ok(())
}

/// A client (a child): two calls through its capability, then an attempt
/// to pass a capability through it without the grant right.
pub fn client(name: &str) -> Result<()> {
    let me = Actor::me("endpoint-client");
    let mut cap: Cap = spawn::inherited("cap").context("taking the inherited capability")?;
    for text in [format!("{name}: hello"), format!("{name}: who am I?")] {
        let reply = cap.call(text.clone()).context("calling")?;
        me.say(format!("call({text:?}) -> {:?}", String::from_utf8_lossy(reply.bytes())));
    }
    let copy = cap.try_clone().context("copying the capability")?;
    let with_cap = Message::new(b"here is a capability".to_vec()).with(copy).context("attaching")?;
    match cap.call(with_cap) {
        Err(e) => me.say(format!("passing a capability through a send-only one: refused ({e})")),
        Ok(_) => fail!("a capability went through one without the grant right"),
    }
    Ok(())
}

/// The worker (a child): answers the call whose reply capability it inherited.
pub fn worker() -> Result<()> {
    let me = Actor::me("endpoint-worker");
    let reply: ReplyCap = spawn::inherited("reply").context("taking the inherited reply capability")?;
    reply.reply(format!("answered by the worker, pid {}", std::process::id())).context("replying")?;
    me.say("answered the call with the reply capability the tour handed me (it is used up now)");
    Ok(())
}
