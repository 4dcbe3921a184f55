//! The FUSE side: a pass-through file system over a backing directory whose file data is
//! held in [`FileCache`]s until fsync and whose name changes are held in a [`Journal`] until
//! their directory is fsynced.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
};

use super::cache::FileCache;
use super::hold::Hold;
use super::names::{Journal, NameChange};

/// Kernel caching of names and attributes is off: after a power loss nothing stale is seen.
const TTL: Duration = Duration::ZERO;
/// The journal's own directory under the backing root, hidden from the mount.
pub(super) const KEEP_DIR: &str = ".powerloss-keep";

#[derive(Debug)]
struct Inode {
    /// Relative to the backing root; a removed file's is its place in the keep directory.
    path: PathBuf,
    /// The backing file, opened read-write on first use.
    file: Option<File>,
    /// Data not yet durable; `None` when the backing file is all there is.
    cache: Option<FileCache>,
    open: u32,
}

/// Everything the mounted file system knows. Shared with the handle that injects power loss.
#[derive(Debug)]
pub(super) struct State {
    root: PathBuf,
    inodes: HashMap<u64, Inode>,
    by_path: HashMap<PathBuf, u64>,
    next_ino: u64,
    journal: Journal,
}

type Result<T> = std::result::Result<T, Errno>;

impl State {
    pub(super) fn new(root: &Path) -> std::io::Result<State> {
        let journal = Journal::new(root, Path::new(KEEP_DIR))?;
        let mut state = State {
            root: root.to_path_buf(),
            inodes: HashMap::new(),
            by_path: HashMap::new(),
            next_ino: INodeNo::ROOT.0,
            journal,
        };
        state.ino_for(Path::new(""));
        Ok(state)
    }

    /// Bytes written to files and not yet fsynced.
    pub(super) fn unsynced_bytes(&self) -> u64 {
        self.inodes
            .values()
            .filter_map(|inode| inode.cache.as_ref())
            .map(FileCache::dirty_bytes)
            .sum()
    }

    /// Name changes whose directory has not been fsynced.
    pub(super) fn unsynced_names(&self) -> usize {
        self.journal.pending().len()
    }

    /// The power went out: unsynced data and name changes are gone. Nobody may be using the
    /// file system (it is unmounted).
    pub(super) fn lose_power(&mut self) -> std::io::Result<()> {
        self.inodes.clear();
        self.by_path.clear();
        self.journal.undo_all()?;
        self.next_ino = INodeNo::ROOT.0;
        self.ino_for(Path::new(""));
        Ok(())
    }

    fn ino_for(&mut self, path: &Path) -> u64 {
        if let Some(ino) = self.by_path.get(path) {
            return *ino;
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.by_path.insert(path.to_path_buf(), ino);
        self.inodes.insert(
            ino,
            Inode {
                path: path.to_path_buf(),
                file: None,
                cache: None,
                open: 0,
            },
        );
        ino
    }

    fn inode(&mut self, ino: INodeNo) -> Result<&mut Inode> {
        self.inodes.get_mut(&ino.0).ok_or(Errno::ENOENT)
    }

    fn path(&mut self, ino: INodeNo) -> Result<PathBuf> {
        Ok(self.inode(ino)?.path.clone())
    }

    /// The path of `name` in directory `parent`; the journal's own directory is not there.
    fn child(&mut self, parent: INodeNo, name: &OsStr) -> Result<PathBuf> {
        let dir = self.path(parent)?;
        if dir.as_os_str().is_empty() && name == KEEP_DIR {
            return Err(Errno::EACCES);
        }
        Ok(dir.join(name))
    }

    fn full(&self, path: &Path) -> PathBuf {
        self.root.join(path)
    }

    fn attr(&mut self, ino: INodeNo) -> Result<FileAttr> {
        let inode = self.inode(ino)?;
        let cached_size = inode.cache.as_ref().map(FileCache::size);
        let path = inode.path.clone();
        let metadata = self.full(&path).symlink_metadata().map_err(Errno::from)?;
        let kind = if metadata.is_dir() {
            FileType::Directory
        } else if metadata.file_type().is_symlink() {
            FileType::Symlink
        } else {
            FileType::RegularFile
        };
        let time = |seconds: i64| UNIX_EPOCH + Duration::from_secs(seconds.max(0) as u64);
        let size = cached_size.unwrap_or(metadata.len());
        Ok(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: time(metadata.atime()),
            mtime: time(metadata.mtime()),
            ctime: time(metadata.ctime()),
            crtime: time(metadata.ctime()),
            kind,
            perm: (metadata.mode() & 0o7777) as u16,
            nlink: metadata.nlink() as u32,
            uid: metadata.uid(),
            gid: metadata.gid(),
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    /// The inode's backing file and cache (a clean one when there was none).
    fn file_and_cache(&mut self, ino: INodeNo) -> Result<(&File, &mut FileCache)> {
        let root = self.root.clone();
        let inode = self.inode(ino)?;
        if inode.file.is_none() {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(root.join(&inode.path))
                .map_err(Errno::from)?;
            inode.file = Some(file);
        }
        let file = inode.file.as_ref().expect("opened above");
        if inode.cache.is_none() {
            let size = file.metadata().map_err(Errno::from)?.len();
            inode.cache = Some(FileCache::clean(size));
        }
        Ok((file, inode.cache.as_mut().expect("made above")))
    }

    /// Moves whatever `path` names into the keep directory; returns where it went.
    fn keep(&mut self, path: &Path) -> Result<PathBuf> {
        let kept = self.journal.keep_place();
        std::fs::rename(self.full(path), self.full(&kept)).map_err(Errno::from)?;
        self.moved(path, &kept);
        Ok(kept)
    }

    /// Renames the inodes at `from` (and below it) to `to`.
    fn moved(&mut self, from: &Path, to: &Path) {
        let moved: Vec<(PathBuf, u64)> = self
            .by_path
            .iter()
            .filter(|(path, _)| path.starts_with(from))
            .map(|(path, ino)| (path.clone(), *ino))
            .collect();
        for (path, ino) in moved {
            self.by_path.remove(&path);
            // (Joining an empty rest would add a trailing slash.)
            let rest = path.strip_prefix(from).expect("filtered by prefix");
            let new = if rest.as_os_str().is_empty() {
                to.to_path_buf()
            } else {
                to.join(rest)
            };
            if let Some(inode) = self.inodes.get_mut(&ino) {
                inode.path = new.clone();
            }
            if !new.starts_with(KEEP_DIR) {
                self.by_path.insert(new, ino);
            }
        }
    }

    fn entry(&mut self, path: &Path) -> Result<FileAttr> {
        let ino = self.ino_for(path);
        self.attr(INodeNo(ino))
    }
}

/// The file system the kernel talks to.
pub(super) struct PowerLossFilesystem {
    pub(super) state: Arc<Mutex<State>>,
    /// A write a test wants held.
    pub(super) hold: Arc<Hold>,
}

impl PowerLossFilesystem {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn chmod(path: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o7777))
        .map_err(Errno::from)
}

impl Filesystem for PowerLossFilesystem {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut state = self.state();
        let found = state.child(parent, name).and_then(|path| {
            state.full(&path).symlink_metadata().map_err(Errno::from)?;
            state.entry(&path)
        });
        match found {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(error) => reply.error(error),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.state().attr(ino) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(error) => reply.error(error),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut state = self.state();
        let changed = (|| {
            if let Some(mode) = mode {
                let path = state.path(ino)?;
                chmod(&state.full(&path), mode)?;
            }
            if let Some(size) = size {
                let (file, cache) = state.file_and_cache(ino)?;
                cache.truncate(file, size).map_err(Errno::from)?;
            }
            state.attr(ino)
        })();
        match changed {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(error) => reply.error(error),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mut state = self.state();
        let made = (|| {
            let path = state.child(parent, name)?;
            std::fs::create_dir(state.full(&path)).map_err(Errno::from)?;
            chmod(&state.full(&path), mode & !umask)?;
            state
                .journal
                .record(NameChange::Created { path: path.clone() });
            state.entry(&path)
        })();
        match made {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(error) => reply.error(error),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut state = self.state();
        let removed = (|| {
            let path = state.child(parent, name)?;
            let metadata = state.full(&path).symlink_metadata().map_err(Errno::from)?;
            if metadata.is_dir() {
                return Err(Errno::EISDIR);
            }
            let kept = state.keep(&path)?;
            state.journal.record(NameChange::Removed { path, kept });
            Ok(())
        })();
        match removed {
            Ok(()) => reply.ok(),
            Err(error) => reply.error(error),
        }
    }

    /// Removing a directory is durable at once (the data directories never do it while
    /// writing).
    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut state = self.state();
        let removed = (|| {
            let path = state.child(parent, name)?;
            std::fs::remove_dir(state.full(&path)).map_err(Errno::from)?;
            if let Some(ino) = state.by_path.remove(&path) {
                state.inodes.remove(&ino);
            }
            Ok(())
        })();
        match removed {
            Ok(()) => reply.ok(),
            Err(error) => reply.error(error),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut state = self.state();
        let renamed = (|| {
            if flags.contains(RenameFlags::RENAME_EXCHANGE) {
                return Err(Errno::EINVAL);
            }
            let from = state.child(parent, name)?;
            let to = state.child(newparent, newname)?;
            state.full(&from).symlink_metadata().map_err(Errno::from)?;
            let replaced = if state.full(&to).symlink_metadata().is_ok() {
                if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                    return Err(Errno::EEXIST);
                }
                Some(state.keep(&to)?)
            } else {
                None
            };
            std::fs::rename(state.full(&from), state.full(&to)).map_err(Errno::from)?;
            state.moved(&from, &to);
            state
                .journal
                .record(NameChange::Renamed { from, to, replaced });
            Ok(())
        })();
        match renamed {
            Ok(()) => reply.ok(),
            Err(error) => reply.error(error),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut state = self.state();
        match state.inode(ino) {
            Ok(inode) => {
                inode.open += 1;
                // No page cache in the kernel: every read and write comes here.
                reply.opened(FileHandle(ino.0), FopenFlags::FOPEN_DIRECT_IO);
            }
            Err(error) => reply.error(error),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut state = self.state();
        let created = (|| {
            let path = state.child(parent, name)?;
            let full = state.full(&path);
            if full.symlink_metadata().is_ok() {
                if flags & libc::O_EXCL != 0 {
                    return Err(Errno::EEXIST);
                }
            } else {
                File::create_new(&full).map_err(Errno::from)?;
                chmod(&full, mode & !umask)?;
                state
                    .journal
                    .record(NameChange::Created { path: path.clone() });
            }
            let ino = INodeNo(state.ino_for(&path));
            if flags & libc::O_TRUNC != 0 {
                let (file, cache) = state.file_and_cache(ino)?;
                cache.truncate(file, 0).map_err(Errno::from)?;
            }
            state.inode(ino)?.open += 1;
            state.attr(ino)
        })();
        match created {
            Ok(attr) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(attr.ino.0),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(error) => reply.error(error),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let mut state = self.state();
        let read = state
            .file_and_cache(ino)
            .and_then(|(file, cache)| cache.read(file, offset, size.into()).map_err(Errno::from));
        match read {
            Ok(data) => reply.data(&data),
            Err(error) => reply.error(error),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: fuser::WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        let path = self.state().path(ino);
        if let Ok(path) = path
            && !self.hold.before_write(&path, offset)
        {
            reply.error(Errno::EIO);
            return;
        }
        let mut state = self.state();
        let written = state
            .file_and_cache(ino)
            .and_then(|(file, cache)| cache.write(file, offset, data).map_err(Errno::from));
        match written {
            Ok(()) => reply.written(data.len() as u32),
            Err(error) => reply.error(error),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    /// A file closed for the last time with nothing unsynced gives its backing file back.
    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut state = self.state();
        if let Ok(inode) = state.inode(ino) {
            inode.open = inode.open.saturating_sub(1);
            let durable_size = inode
                .file
                .as_ref()
                .and_then(|file| file.metadata().ok())
                .map(|metadata| metadata.len());
            let clean = match (&inode.cache, durable_size) {
                (None, _) => true,
                (Some(cache), Some(size)) => cache.is_clean(size),
                (Some(_), None) => false,
            };
            if inode.open == 0 && clean {
                inode.file = None;
                inode.cache = None;
            }
        }
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut state = self.state();
        let synced = state
            .file_and_cache(ino)
            .and_then(|(file, cache)| cache.sync(file).map_err(Errno::from));
        match synced {
            Ok(()) => reply.ok(),
            Err(error) => reply.error(error),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(ino.0), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut state = self.state();
        let listed = (|| {
            let dir = state.path(ino)?;
            let mut names: Vec<(std::ffi::OsString, FileType)> = Vec::new();
            for entry in std::fs::read_dir(state.full(&dir)).map_err(Errno::from)? {
                let entry = entry.map_err(Errno::from)?;
                let name = entry.file_name();
                if dir.as_os_str().is_empty() && name == KEEP_DIR {
                    continue;
                }
                let kind = match entry.file_type().map_err(Errno::from)? {
                    kind if kind.is_dir() => FileType::Directory,
                    kind if kind.is_symlink() => FileType::Symlink,
                    _ => FileType::RegularFile,
                };
                names.push((name, kind));
            }
            names.sort_by(|a, b| a.0.cmp(&b.0));
            let mut entries = vec![
                (ino, FileType::Directory, std::ffi::OsString::from(".")),
                (ino, FileType::Directory, std::ffi::OsString::from("..")),
            ];
            for (name, kind) in names {
                let child = INodeNo(state.ino_for(&dir.join(&name)));
                entries.push((child, kind, name));
            }
            Ok(entries)
        })();
        match listed {
            Ok(entries) => {
                for (index, (child, kind, name)) in
                    entries.into_iter().enumerate().skip(offset as usize)
                {
                    if reply.add(child, index as u64 + 1, kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(error) => reply.error(error),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut state = self.state();
        let synced = state
            .path(ino)
            .and_then(|dir| state.journal.directory_synced(&dir).map_err(Errno::from));
        match synced {
            Ok(()) => reply.ok(),
            Err(error) => reply.error(error),
        }
    }

    /// A roomy disk: nothing in the data directories asks how much is free.
    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        const BLOCKS: u64 = 1 << 30;
        reply.statfs(BLOCKS, BLOCKS, BLOCKS, 1 << 20, 1 << 20, 4096, 255, 4096);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    /// Space reservation is a no-op; growing the file is a size change like any other.
    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if mode & libc::FALLOC_FL_KEEP_SIZE != 0 && mode & !libc::FALLOC_FL_KEEP_SIZE == 0 {
            return reply.ok();
        }
        if mode != 0 {
            return reply.error(Errno::EOPNOTSUPP);
        }
        let mut state = self.state();
        let grown = state.file_and_cache(ino).and_then(|(file, cache)| {
            let end = offset.saturating_add(length);
            if end > cache.size() {
                cache.truncate(file, end).map_err(Errno::from)?;
            }
            Ok(())
        });
        match grown {
            Ok(()) => reply.ok(),
            Err(error) => reply.error(error),
        }
    }
}
