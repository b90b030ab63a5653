//! `instances/ID/instance.json`, read back at every daemon start. A record
//! that decodes must survive a save → load round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tine_manager::record::InstanceRecord;

fuzz_target!(|data: &[u8]| {
    let Ok(rec) = InstanceRecord::decode(data, "instance.json") else {
        return;
    };
    // As `InstanceRecord::save` writes it.
    let saved = serde_json::to_vec_pretty(&rec).unwrap();
    let back = InstanceRecord::decode(&saved, "instance.json").expect("a saved record loads");
    assert_eq!(back, rec);
});
