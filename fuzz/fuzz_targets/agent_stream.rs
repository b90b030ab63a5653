//! Everything a guest can send the host over the agent channel: the bytes
//! are cut into reads at fuzzer-chosen points and fed to the host's decoder
//! (`ReplyDecoder`, what the client's reader task runs), with a small line
//! cap so oversized lines and partial frames are reached.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tine_agent_proto::{ReplyDecoder, Response};

fn decode(max: usize, chunks: &[&[u8]]) -> (Vec<Response>, bool) {
    let mut d = ReplyDecoder::new(max);
    let mut out = Vec::new();
    let mut failed = false;
    for c in chunks {
        failed |= d.push(c, &mut out).is_err();
        assert!(d.pending() <= max);
    }
    (out, failed)
}

fuzz_target!(|data: &[u8]| {
    let Some((&shape, stream)) = data.split_first() else {
        return;
    };
    // Low bits: the line cap; high bits: the read size.
    let max = 16 + usize::from(shape & 0x0f) * 64;
    let step = 1 + usize::from(shape >> 4);
    let (whole, whole_failed) = decode(max, &[stream]);
    let chunks: Vec<&[u8]> = stream.chunks(step).collect();
    let (split, split_failed) = decode(max, &chunks);
    assert_eq!(whole_failed, split_failed);
    if !whole_failed {
        assert_eq!(whole, split, "reads cut anywhere decode the same");
    }
    // Production cap: never fails on input shorter than a line.
    let (_, failed) = decode(tine_agent_proto::MAX_LINE, &[stream]);
    assert!(!failed || stream.len() >= tine_agent_proto::MAX_LINE);
});
