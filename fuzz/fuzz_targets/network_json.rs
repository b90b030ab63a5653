//! `DATA_DIR/network.json`: subnet and bridge the leases refer to.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tine_manager::network::Settings;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = Settings::decode(data) else {
        return;
    };
    let saved = serde_json::to_vec_pretty(&s).unwrap();
    assert_eq!(Settings::decode(&saved).expect("saved settings load"), s);
});
