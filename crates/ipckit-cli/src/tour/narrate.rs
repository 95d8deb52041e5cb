//! The tour's narration: plain lines on stdout, each tagged with who speaks.
//!
//! Parent and children share one stdout; every line is written whole (Rust's
//! stdout is line-buffered and a short line is one `write(2)`), so lines from
//! different processes interleave but never mix.

use std::fmt::Display;
use std::time::Duration;

/// A process that narrates: its role and pid.
#[derive(Clone, Copy, Debug)]
pub struct Actor {
    /// What the process does in the scene ("tour", "pipe-reader", ...).
    pub role: &'static str,
    /// Its process id.
    pub pid: u32,
}

impl Actor {
    /// The calling process, in this role.
    pub fn me(role: &'static str) -> Self {
        Actor { role, pid: std::process::id() }
    }

    /// Prints one line of narration, tagged `[role pid]`.
    pub fn say(&self, text: impl Display) {
        let tag = format!("[{} {}]", self.role, self.pid);
        println!("{tag:<21} {text}");
    }
}

/// Prints a scene's title.
pub fn heading(number: usize, title: &str) {
    println!();
    println!("== {number}. {title} ==");
}

/// A duration the way a person reads it: `640 ns`, `85 µs`, `12.3 ms`, `1.00 s`.
pub fn fmt_duration(d: Duration) -> String {
    if d < Duration::from_micros(1) {
        format!("{} ns", d.as_nanos())
    } else if d < Duration::from_millis(1) {
        format!("{} µs", d.as_micros())
    } else if d < Duration::from_secs(1) {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}
