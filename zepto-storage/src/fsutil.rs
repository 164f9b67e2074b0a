//! Small durable-file helpers: atomic replace (temp + fsync + rename + fsync dir).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::error::{IoContext, Result};
use crate::faults::Faults;

/// fsync a directory so that renames and creations inside it are durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    let f = File::open(dir).ctx(|| format!("open directory {} to fsync it", dir.display()))?;
    f.sync_all()
        .ctx(|| format!("fsync directory {}", dir.display()))
}

/// Create a directory (and parents) and make its entry durable.
pub(crate) fn create_dir_durable(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).ctx(|| format!("create directory {}", dir.display()))?;
    fsync_dir(parent_or_cwd(dir))
}

/// The directory holding `path`: its parent, or `.` for a bare relative name.
pub(crate) fn parent_or_cwd(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Replace `path` atomically with `bytes`: write `path.tmp`, fsync it, rename over `path`,
/// fsync the directory. A crash at any point leaves either the old or the new file.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], faults: &Faults) -> Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .ctx(|| format!("create {}", tmp.display()))?;
        f.write_all(bytes)
            .ctx(|| format!("write {}", tmp.display()))?;
        faults.check("fs::write_atomic::before_fsync")?;
        f.sync_all().ctx(|| format!("fsync {}", tmp.display()))?;
    }
    fs::rename(&tmp, path).ctx(|| format!("rename {} to {}", tmp.display(), path.display()))?;
    fsync_dir(parent_or_cwd(path))
}
