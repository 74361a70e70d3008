//! The fsyncs sled 0.34 leaves out: new files and directory entries.
//!
//! sled's flush makes its log durable (we add an `fdatasync` of the log file, see
//! `group_commit`), but it writes values above its blob threshold to files of their own under
//! `blobs/` with a plain `write` and no sync, creates `conf`, `blobs/` and `db` without syncing
//! the directories holding them, and renames snapshots into place without syncing the
//! directory. After a power loss the log could then point at a blob that never reached the
//! disk, or the directory could have lost a file name. [`DirSync`] closes that gap: before a
//! flush is acknowledged it fsyncs every file that appeared in a watched directory since the
//! last flush, and the directory itself whenever its list of names changed.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::File;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// fsyncs a directory, making the names created, renamed or removed in it durable.
pub fn sync_dir(path: &Path) -> std::io::Result<()> {
    File::open(path)?.sync_all()
}

/// Replaces `path` with `bytes` so that a crash leaves the old file or the new one, never a
/// torn one: written whole under a temporary name, fsynced, renamed into place, and the
/// directory fsynced. `mode` sets the permissions of a new file (unix).
pub fn write_durably(path: &Path, bytes: &[u8], mode: Option<u32>) -> std::io::Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if let Some(mode) = mode {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts.open(&tmp)?;
    std::io::Write::write_all(&mut f, bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => sync_dir(dir),
        _ => sync_dir(Path::new(".")),
    }
}

/// One watched directory and the names in it already known to be durable.
#[derive(Debug)]
struct Watched {
    dir: PathBuf,
    /// Whether new regular files in it are fsynced too (their content is not otherwise synced).
    sync_files: bool,
    known: BTreeSet<OsString>,
}

/// Keeps the files and names of some directories durable (see the module doc).
#[derive(Debug)]
pub struct DirSync {
    watched: Vec<Watched>,
}

impl DirSync {
    /// Watches the sled directory `data_dir` (its names) and `data_dir/blobs` (its names and
    /// the content of every new blob). Call [`DirSync::sync`] once at open so that what exists
    /// then is durable.
    pub fn for_sled(data_dir: &Path) -> DirSync {
        DirSync {
            watched: vec![
                Watched {
                    dir: data_dir.join("blobs"),
                    sync_files: true,
                    known: BTreeSet::new(),
                },
                Watched {
                    dir: data_dir.to_path_buf(),
                    sync_files: false,
                    known: BTreeSet::new(),
                },
            ],
        }
    }

    /// fsyncs what appeared since the last call: new blob files, then each directory whose
    /// names changed (files first, so a durable name never points at unsynced content).
    pub fn sync(&mut self) -> std::io::Result<()> {
        for w in &mut self.watched {
            let entries = match std::fs::read_dir(&w.dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let mut now = BTreeSet::new();
            for entry in entries {
                let entry = entry?;
                let name = entry.file_name();
                if w.sync_files && !w.known.contains(&name) && entry.file_type()?.is_file() {
                    match File::open(entry.path()) {
                        Ok(f) => f.sync_data()?,
                        // Removed meanwhile (sled collects blobs no longer referenced).
                        Err(e) if e.kind() == ErrorKind::NotFound => continue,
                        Err(e) => return Err(e),
                    }
                }
                now.insert(name);
            }
            if now != w.known {
                sync_dir(&w.dir)?;
                w.known = now;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_names_are_noticed_and_removed_ones_forgotten() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut sync = DirSync::for_sled(dir.path());
        sync.sync()?;
        assert!(sync.watched[1].known.is_empty());
        std::fs::create_dir(dir.path().join("blobs"))?;
        std::fs::write(dir.path().join("blobs").join("42"), b"blob")?;
        sync.sync()?;
        assert_eq!(sync.watched[0].known.len(), 1);
        assert_eq!(sync.watched[1].known.len(), 1);
        std::fs::remove_file(dir.path().join("blobs").join("42"))?;
        sync.sync()?;
        assert!(sync.watched[0].known.is_empty());
        Ok(())
    }
}
