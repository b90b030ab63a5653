//! Guest images: a directory with a manifest written by `guest/build.sh`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// `manifest.json`: the image's files, by plain name inside its directory.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub schema: u32,
    pub kernel: String,
    pub initrd: String,
    pub rootfs: String,
    pub cmdline: String,
}

/// Parse a manifest: schema 1, and file names that stay inside the image
/// directory.
pub fn parse_manifest(bytes: &[u8]) -> Result<Manifest, String> {
    let m: Manifest =
        serde_json::from_slice(bytes).map_err(|e| format!("bad manifest.json: {e}"))?;
    if m.schema != 1 {
        return Err(format!("manifest schema {} is not supported", m.schema));
    }
    for f in [&m.kernel, &m.initrd, &m.rootfs] {
        if f.is_empty() || f == "." || f == ".." || f.contains(['/', '\0']) {
            return Err(format!("manifest path {f:?} must be a plain file name"));
        }
    }
    Ok(m)
}

/// A validated image: every file exists.
#[derive(Debug, Clone)]
pub struct Image {
    pub name: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub rootfs: PathBuf,
    pub cmdline: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image {name:?} not found in {dir} (build it with: sudo guest/build.sh {dir}/{name})")]
    Missing { name: String, dir: String },
    #[error("image {name:?}: {problem}")]
    Broken { name: String, problem: String },
}

/// Image names follow the instance name rule (they are directory names).
pub fn load(images_dir: &Path, name: &str) -> Result<Image, ImageError> {
    if crate::names::validate_name(name).is_err() {
        return Err(ImageError::Broken {
            name: name.into(),
            problem: "invalid image name".into(),
        });
    }
    let dir = images_dir.join(name);
    let manifest_path = dir.join("manifest.json");
    let bytes = std::fs::read(&manifest_path).map_err(|_| ImageError::Missing {
        name: name.into(),
        dir: images_dir.display().to_string(),
    })?;
    let broken = |problem: String| ImageError::Broken {
        name: name.into(),
        problem,
    };
    let m = parse_manifest(&bytes).map_err(broken)?;
    let file = |rel: &str| -> Result<PathBuf, ImageError> {
        let p = dir.join(rel);
        if !p.is_file() {
            return Err(broken(format!(
                "{} is missing (rebuild with guest/build.sh)",
                p.display()
            )));
        }
        // Absolute so overlays' backing paths survive a changed cwd.
        std::fs::canonicalize(&p).map_err(|e| broken(format!("{}: {e}", p.display())))
    };
    Ok(Image {
        name: name.into(),
        kernel: file(&m.kernel)?,
        initrd: file(&m.initrd)?,
        rootfs: file(&m.rootfs)?,
        cmdline: m.cmdline,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(kernel: &str) -> Vec<u8> {
        serde_json::json!({
            "schema": 1, "kernel": kernel, "initrd": "i", "rootfs": "r", "cmdline": "c"
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn plain_file_names_are_accepted() {
        assert_eq!(
            parse_manifest(&manifest("vmlinux")).unwrap().kernel,
            "vmlinux"
        );
    }

    #[test]
    fn names_that_leave_the_image_directory_are_refused() {
        for bad in ["", ".", "..", "../x", "/boot/vmlinuz", "a\0b"] {
            assert!(parse_manifest(&manifest(bad)).is_err(), "{bad:?}");
        }
    }
}
