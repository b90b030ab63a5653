//! Guest images: a directory with a manifest written by `guest/build.sh`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
struct Manifest {
    schema: u32,
    kernel: String,
    initrd: String,
    rootfs: String,
    cmdline: String,
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
    let m: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| broken(format!("bad manifest.json: {e}")))?;
    if m.schema != 1 {
        return Err(broken(format!(
            "manifest schema {} is not supported",
            m.schema
        )));
    }
    let file = |rel: &str| -> Result<PathBuf, ImageError> {
        if rel.contains('/') {
            return Err(broken(format!(
                "manifest path {rel:?} must be a plain file name"
            )));
        }
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
