//! `vmstate` (QEMU device state): tine treats it as opaque and checks its
//! size and CRC-32 before QEMU loads it. Any single flipped bit or a
//! truncation must change the digest.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tine_manager::integrity::digest_of;

fuzz_target!(|data: &[u8]| {
    let d = digest_of(data).unwrap();
    assert_eq!(
        (d.bytes, d.crc32),
        (data.len() as u64, crc32fast::hash(data))
    );
    if let Some((&first, rest)) = data.split_first() {
        assert_ne!(digest_of(rest).unwrap(), d);
        let mut flipped = data.to_vec();
        let bit = usize::from(first) % (data.len() * 8);
        flipped[bit / 8] ^= 1 << (bit % 8);
        assert_ne!(digest_of(&flipped[..]).unwrap(), d);
    }
});
