//! `images/NAME/manifest.json`: the file names it gives must stay inside the
//! image directory.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tine_manager::image::parse_manifest;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = parse_manifest(data) else {
        return;
    };
    for f in [&m.kernel, &m.initrd, &m.rootfs] {
        let p = std::path::Path::new(f.as_str());
        assert_eq!(p.components().count(), 1, "{f:?}");
        assert!(matches!(
            p.components().next(),
            Some(std::path::Component::Normal(_))
        ));
    }
});
