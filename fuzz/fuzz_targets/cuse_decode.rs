//! The CUSE request decoder on arbitrary bytes (one `read(2)` of /dev/cuse): it never panics,
//! and what it accepts is consistent with the bytes.
//!
//! `cargo +nightly fuzz run cuse_decode` (from the project root).

#![no_main]

use deferred::cuse::abi::{IN_HEADER_LEN, Operation, decode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match decode(data) {
        Ok(req) => {
            assert_eq!(req.header.len as usize, data.len());
            assert!(data.len() >= IN_HEADER_LEN);
            match req.op {
                Operation::Write(w, body) => assert_eq!(w.size as usize, body.len()),
                Operation::Ioctl(i, body) => assert!(body.len() <= i.in_size as usize),
                _ => {}
            }
            let _ = format!("{req:?}");
        }
        Err(e) => {
            assert_eq!(e.unique.is_some(), data.len() >= IN_HEADER_LEN);
            let _ = e.to_string();
        }
    }
});
