//! A power-loss file system for tests: a FUSE pass-through over a backing directory that
//! keeps written data and name changes in memory until they are made durable (fsync or
//! fdatasync of a file for its data, fsync of a directory for the names in it), and on
//! command forgets everything not yet durable, as a machine that lost power would (the idea
//! of LazyFS). A `kill -9` keeps the page cache; this does not.
//!
//! Mounting needs root (or `fusermount3`) and `/dev/fuse`.

mod cache;
mod fs;
mod hold;
mod names;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fuser::{BackgroundSession, Config, MountOption};

use fs::{PowerLossFilesystem, State};
use hold::Hold;

/// The name the mounts carry (the source column of /proc/mounts).
const FS_NAME: &str = "raftq-powerloss";

/// One mounted power-loss file system.
pub struct PowerLossFs {
    backing: PathBuf,
    mountpoint: PathBuf,
    state: Arc<Mutex<State>>,
    hold: Arc<Hold>,
    session: Option<BackgroundSession>,
}

/// Whether this machine can mount the power-loss file system (root and `/dev/fuse`).
pub fn available() -> bool {
    nix::unistd::Uid::effective().is_root() && Path::new("/dev/fuse").exists()
}

impl PowerLossFs {
    /// Mounts a file system at `mountpoint` (created if missing) whose durable content lives
    /// in `backing` (created if missing).
    pub fn mount(backing: &Path, mountpoint: &Path) -> io::Result<PowerLossFs> {
        std::fs::create_dir_all(backing)?;
        std::fs::create_dir_all(mountpoint)?;
        let mut fs = PowerLossFs {
            backing: backing.to_path_buf(),
            mountpoint: mountpoint.to_path_buf(),
            state: Arc::new(Mutex::new(State::new(backing)?)),
            hold: Arc::default(),
            session: None,
        };
        fs.start()?;
        Ok(fs)
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    fn start(&mut self) -> io::Result<()> {
        let mut config = Config::default();
        config.mount_options = vec![MountOption::FSName(FS_NAME.into())];
        config.n_threads = Some(2);
        let filesystem = PowerLossFilesystem {
            state: self.state.clone(),
            hold: self.hold.clone(),
        };
        self.session = Some(fuser::spawn_mount(filesystem, &self.mountpoint, &config)?);
        Ok(())
    }

    fn stop(&mut self) -> io::Result<()> {
        // A held write must finish before the file system can be unmounted.
        self.hold.release();
        match self.session.take().map(|session| session.umount_and_join()) {
            // The session's last read of the FUSE device may report the connection ended
            // (aborted, or the device gone) rather than a clean end: either way the file
            // system is unmounted, and its state is in memory here.
            Some(Err(error))
                if matches!(
                    error.raw_os_error(),
                    Some(libc::ECONNABORTED) | Some(libc::ENODEV)
                ) =>
            {
                Ok(())
            }
            // Busy: a process forked elsewhere in this process (by another test) still
            // holds a copy of a descriptor into this file system, until it execs. The
            // power is cut anyway: the file system is detached now and goes once the last
            // such copy is closed; what it held is in memory here.
            Some(Err(error)) if error.raw_os_error() == Some(libc::EBUSY) => {
                detach(&self.mountpoint)
            }
            Some(result) => result,
            None => Ok(()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The power goes out and comes back: every write and name change not yet durable is
    /// gone. Whatever used the files must have stopped (been killed) first. The file system
    /// is mounted again afterwards, with no kernel cache of what was forgotten.
    pub fn lose_power(&mut self) -> io::Result<()> {
        self.stop()?;
        self.state().lose_power()?;
        self.start()
    }

    /// Holds the first write at or past `offset` into a file whose path (relative to the
    /// mount) contains `name_part`, until power is lost (or the disk wiped): the writer is
    /// stopped in the middle of that file. The receiver gets the path once a write is held.
    pub fn hold_write(&self, name_part: &str, offset: u64) -> std::sync::mpsc::Receiver<PathBuf> {
        self.hold.arm(name_part, offset)
    }

    /// Ends a held write with an error. Kill its writer first (SIGKILL, not yet reaped):
    /// a process whose FUSE write is pending cannot die until the write is answered, and
    /// once killed it never sees the error.
    pub fn release_held(&self) {
        self.hold.release();
    }

    /// The disk is replaced by an empty one. Whatever used the files must have stopped.
    pub fn wipe(&mut self) -> io::Result<()> {
        self.stop()?;
        std::fs::remove_dir_all(&self.backing)?;
        std::fs::create_dir_all(&self.backing)?;
        *self.state() = State::new(&self.backing)?;
        self.start()
    }

    /// Bytes written to files and not yet synced.
    pub fn unsynced_bytes(&self) -> u64 {
        self.state().unsynced_bytes()
    }

    /// Name changes not yet made durable by a directory fsync.
    pub fn unsynced_names(&self) -> usize {
        self.state().unsynced_names()
    }
}

/// Detaches the file system mounted at `mountpoint` from the mount tree at once, even while
/// it is busy (`umount -l`).
fn detach(mountpoint: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
    // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
    if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    match io::Error::last_os_error() {
        // Not mounted any more: gone on its own meanwhile.
        error if error.raw_os_error() == Some(libc::EINVAL) => Ok(()),
        error => Err(error),
    }
}

/// Unmounts power-loss file systems left behind by a harness that was killed (their
/// daemon gone, they answer "transport endpoint is not connected"); returns how many.
pub fn cleanup_stale() -> usize {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let source = fields.next()?;
            let target = fields.next()?;
            (source == FS_NAME).then(|| target.replace("\\040", " "))
        })
        .filter(|target| {
            std::process::Command::new("umount")
                .args(["-l", target.as_str()])
                .status()
                .is_ok_and(|status| status.success())
        })
        .count()
}

impl Drop for PowerLossFs {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::io::Write as _;

    use super::*;

    fn mounted() -> (tempfile::TempDir, PowerLossFs) {
        assert!(
            available(),
            "the power-loss file system needs root and /dev/fuse (the test suite runs as root)"
        );
        let dir = tempfile::tempdir().unwrap();
        let fs = PowerLossFs::mount(&dir.path().join("disk"), &dir.path().join("mnt")).unwrap();
        (dir, fs)
    }

    fn sync_dir(path: &Path) {
        File::open(path).unwrap().sync_all().unwrap();
    }

    #[test]
    fn a_held_write_stops_the_writer_mid_file_and_never_happens() {
        let (_dir, mut fs) = mounted();
        let path = fs.mountpoint().join("snapshot-file");
        std::fs::write(&path, [1u8; 4096]).unwrap();
        File::open(&path).unwrap().sync_all().unwrap();
        sync_dir(fs.mountpoint());
        let tripped = fs.hold_write("snapshot-file", 4096);
        let mut writer = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "exec head -c 4096 /dev/zero >> '{}'",
                path.display()
            ))
            .spawn()
            .unwrap();
        let held = tripped
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the write is held");
        assert!(held.ends_with("snapshot-file"), "{held:?}");
        assert!(
            writer.try_wait().unwrap().is_none(),
            "the writer waits in the middle of the file"
        );
        writer.kill().unwrap();
        fs.release_held();
        writer.wait().unwrap();
        fs.lose_power().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), vec![1u8; 4096]);
    }

    #[test]
    fn a_write_without_fsync_is_gone_after_a_power_loss() {
        let (_dir, mut fs) = mounted();
        let path = fs.mountpoint().join("wal");
        let mut file = File::create(&path).unwrap();
        sync_dir(fs.mountpoint());
        file.write_all(b"not synced").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"not synced");
        assert!(fs.unsynced_bytes() > 0);
        drop(file);
        fs.lose_power().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"");
    }

    #[test]
    fn a_synced_write_survives_a_power_loss_and_a_later_unsynced_one_does_not() {
        let (_dir, mut fs) = mounted();
        let path = fs.mountpoint().join("wal");
        let mut file = File::create(&path).unwrap();
        file.write_all(b"synced").unwrap();
        file.sync_data().unwrap();
        sync_dir(fs.mountpoint());
        file.write_all(b" and more").unwrap();
        drop(file);
        fs.lose_power().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"synced");
        assert_eq!(fs.unsynced_bytes(), 0);
        assert_eq!(fs.unsynced_names(), 0);
    }

    #[test]
    fn a_new_file_whose_directory_was_not_synced_may_be_gone() {
        let (_dir, mut fs) = mounted();
        std::fs::create_dir(fs.mountpoint().join("sub")).unwrap();
        sync_dir(fs.mountpoint());
        let path = fs.mountpoint().join("sub/table");
        let mut file = File::create(&path).unwrap();
        file.write_all(b"data").unwrap();
        file.sync_all().unwrap();
        drop(file);
        assert_eq!(fs.unsynced_names(), 1);
        fs.lose_power().unwrap();
        assert!(!path.exists());
        assert!(fs.mountpoint().join("sub").is_dir());
    }

    #[test]
    fn a_rename_is_undone_by_a_power_loss_unless_its_directory_was_synced() {
        let (_dir, mut fs) = mounted();
        let (tmp, current) = (fs.mountpoint().join("tmp"), fs.mountpoint().join("CURRENT"));
        std::fs::write(&current, b"old").unwrap();
        File::open(&current).unwrap().sync_all().unwrap();
        sync_dir(fs.mountpoint());

        std::fs::write(&tmp, b"new").unwrap();
        File::open(&tmp).unwrap().sync_all().unwrap();
        std::fs::rename(&tmp, &current).unwrap();
        fs.lose_power().unwrap();
        assert_eq!(std::fs::read(&current).unwrap(), b"old");
        assert!(!tmp.exists());

        std::fs::write(&tmp, b"new").unwrap();
        File::open(&tmp).unwrap().sync_all().unwrap();
        std::fs::rename(&tmp, &current).unwrap();
        assert_eq!(std::fs::read(&current).unwrap(), b"new");
        sync_dir(fs.mountpoint());
        fs.lose_power().unwrap();
        assert_eq!(std::fs::read(&current).unwrap(), b"new");
    }

    #[test]
    fn a_removal_and_a_truncation_not_made_durable_are_undone() {
        let (_dir, mut fs) = mounted();
        let (kept, cut) = (fs.mountpoint().join("kept"), fs.mountpoint().join("cut"));
        for path in [&kept, &cut] {
            std::fs::write(path, b"0123456789").unwrap();
            File::open(path).unwrap().sync_all().unwrap();
        }
        sync_dir(fs.mountpoint());
        std::fs::remove_file(&kept).unwrap();
        File::options()
            .write(true)
            .open(&cut)
            .unwrap()
            .set_len(3)
            .unwrap();
        assert!(!kept.exists());
        assert_eq!(std::fs::read(&cut).unwrap(), b"012");
        fs.lose_power().unwrap();
        assert_eq!(std::fs::read(&kept).unwrap(), b"0123456789");
        assert_eq!(std::fs::read(&cut).unwrap(), b"0123456789");
    }
}
