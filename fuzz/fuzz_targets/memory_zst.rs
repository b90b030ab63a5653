//! `snapshots/ID/memory.zst`: a compressed memory file is decompressed for a
//! fork or restore and must give exactly the guest's RAM size, or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tine_manager::compress::unpack;

/// The seeds decompress to this many bytes (a scaled-down RAM size).
const EXPECTED: u64 = 64 << 10;

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    let result = unpack(data, &mut out, EXPECTED, "memory.zst".as_ref());
    if result.is_ok() {
        assert_eq!(out.len() as u64, EXPECTED);
    }
    assert!(out.len() as u64 <= EXPECTED);
});
