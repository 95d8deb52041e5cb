//! The name-table slot decoder on arbitrary bytes: whatever the 256 bytes a
//! client copied out of the (server-written, shared) table say, decoding
//! returns an entry or an error, never panics.
//!
//! `cargo fuzz run naming_table` (from crates/ipckit; needs cargo-fuzz).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ipckit::naming::fuzz_decode_table_slot(data);
});
