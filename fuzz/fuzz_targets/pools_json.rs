//! `DATA_DIR/pools.json`, read back at daemon start to re-create warm pools.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tine_manager::pool::parse_pools;

fuzz_target!(|data: &[u8]| {
    let Ok(specs) = parse_pools(data) else {
        return;
    };
    for s in &specs {
        assert!(s.validate().is_ok());
    }
    let saved = serde_json::to_vec_pretty(&specs).unwrap();
    assert_eq!(parse_pools(&saved).expect("saved pools load"), specs);
});
