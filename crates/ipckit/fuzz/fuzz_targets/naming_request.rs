//! The naming server's request decoder on arbitrary bytes: it must return,
//! never panic, whatever a client sends.
//!
//! `cargo fuzz run naming_request` (from crates/ipckit; needs cargo-fuzz).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ipckit::naming::fuzz_decode_request(data);
});
