//! `snapshots/ID/snapshot.json` (snapshots and templates), read back at every
//! daemon start. A record that decodes must survive a save → load round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tine_manager::SnapshotRecord;

fuzz_target!(|data: &[u8]| {
    let Ok(rec) = SnapshotRecord::decode(data) else {
        return;
    };
    let saved = serde_json::to_vec_pretty(&rec).unwrap();
    let back = SnapshotRecord::decode(&saved).expect("a saved record loads");
    assert_eq!(back, rec);
});
