//! Name changes (new files and directories, renames, removals) not yet durable: each
//! becomes durable when the directory it changed is fsynced, and a power loss undoes the
//! others, newest first.
//!
//! The backing directory shows every change at once; what a power loss must bring back (a
//! removed or replaced file) waits in a keep directory until the change is durable.

use std::io;
use std::path::{Path, PathBuf};

/// One change to a directory's names; paths are relative to the backing root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum NameChange {
    Created {
        path: PathBuf,
    },
    Renamed {
        from: PathBuf,
        to: PathBuf,
        /// Where the file that `to` named before is kept, if it named one.
        replaced: Option<PathBuf>,
    },
    Removed {
        path: PathBuf,
        kept: PathBuf,
    },
}

impl NameChange {
    /// The directory whose fsync makes this change durable (for a rename, the directory it
    /// renamed into).
    fn directory(&self) -> &Path {
        let path = match self {
            NameChange::Created { path } | NameChange::Removed { path, .. } => path,
            NameChange::Renamed { to, .. } => to,
        };
        path.parent().unwrap_or(Path::new(""))
    }
}

/// The changes not yet durable, oldest first, over one backing root.
#[derive(Debug)]
pub(super) struct Journal {
    root: PathBuf,
    /// Where removed and replaced files wait (relative to `root`).
    keep: PathBuf,
    next_kept: u64,
    pending: Vec<NameChange>,
}

impl Journal {
    /// Names under `keep` (relative to `root`) are the journal's own.
    pub(super) fn new(root: &Path, keep: &Path) -> io::Result<Journal> {
        std::fs::create_dir_all(root.join(keep))?;
        Ok(Journal {
            root: root.to_path_buf(),
            keep: keep.to_path_buf(),
            next_kept: 0,
            pending: Vec::new(),
        })
    }

    pub(super) fn pending(&self) -> &[NameChange] {
        &self.pending
    }

    /// A place in the keep directory for a file that must come back after a power loss.
    pub(super) fn keep_place(&mut self) -> PathBuf {
        self.next_kept += 1;
        self.keep.join(format!("kept-{}", self.next_kept))
    }

    pub(super) fn record(&mut self, change: NameChange) {
        self.pending.push(change);
    }

    /// The directory `dir` was fsynced: its changes are durable; removed and replaced
    /// files they kept are gone for good.
    pub(super) fn directory_synced(&mut self, dir: &Path) -> io::Result<()> {
        let (durable, pending): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|change| change.directory() == dir);
        self.pending = pending;
        for change in durable {
            let kept = match change {
                NameChange::Removed { kept, .. } => Some(kept),
                NameChange::Renamed { replaced, .. } => replaced,
                NameChange::Created { .. } => None,
            };
            if let Some(kept) = kept {
                remove_any(&self.root.join(kept))?;
            }
        }
        Ok(())
    }

    /// Power loss: undoes every change not yet durable, newest first. A change whose
    /// names a later durable change moved away is left as it is.
    pub(super) fn undo_all(&mut self) -> io::Result<()> {
        while let Some(change) = self.pending.pop() {
            match change {
                NameChange::Created { path } => {
                    let path = self.root.join(path);
                    if path.symlink_metadata().is_ok() {
                        remove_any(&path)?;
                    }
                }
                NameChange::Renamed { from, to, replaced } => {
                    let (from, to) = (self.root.join(from), self.root.join(to));
                    if to.symlink_metadata().is_ok() {
                        std::fs::rename(&to, &from)?;
                    }
                    if let Some(replaced) = replaced {
                        std::fs::rename(self.root.join(replaced), &to)?;
                    }
                }
                NameChange::Removed { path, kept } => {
                    std::fs::rename(self.root.join(kept), self.root.join(path))?;
                }
            }
        }
        // Whatever is still kept belonged to changes already undone or made durable.
        for entry in std::fs::read_dir(self.root.join(&self.keep))? {
            remove_any(&entry?.path())?;
        }
        Ok(())
    }
}

fn remove_any(path: &Path) -> io::Result<()> {
    if path.symlink_metadata()?.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_power_loss_undoes_changes_whose_directory_was_not_synced() {
        let root = tempfile::tempdir().unwrap();
        let mut journal = Journal::new(root.path(), Path::new(".keep")).unwrap();
        std::fs::create_dir(root.path().join("a")).unwrap();
        std::fs::create_dir(root.path().join("b")).unwrap();
        std::fs::write(root.path().join("a/old"), b"old").unwrap();

        std::fs::write(root.path().join("a/new"), b"new").unwrap();
        journal.record(NameChange::Created {
            path: "a/new".into(),
        });
        std::fs::write(root.path().join("b/synced"), b"s").unwrap();
        journal.record(NameChange::Created {
            path: "b/synced".into(),
        });
        let kept = journal.keep_place();
        std::fs::rename(root.path().join("a/old"), root.path().join(&kept)).unwrap();
        journal.record(NameChange::Removed {
            path: "a/old".into(),
            kept,
        });
        journal.directory_synced(Path::new("b")).unwrap();
        journal.undo_all().unwrap();

        assert!(!root.path().join("a/new").exists());
        assert_eq!(std::fs::read(root.path().join("a/old")).unwrap(), b"old");
        assert!(root.path().join("b/synced").exists());
        assert!(journal.pending().is_empty());
    }
}
