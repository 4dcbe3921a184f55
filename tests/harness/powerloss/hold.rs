//! Holding one write: the test learns that a node is in the middle of writing a file (a
//! snapshot being built or received) and can cut its power right there.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Condvar, Mutex, MutexGuard};

/// What to hold: the first write at or past `offset` into a file whose path contains
/// `name_part`.
struct Wanted {
    name_part: String,
    offset: u64,
    tripped: Sender<PathBuf>,
}

#[derive(Default)]
struct Inner {
    wanted: Option<Wanted>,
    /// Whether a write is held now.
    holding: bool,
}

/// Shared by the file system (which holds the write) and the test (which releases it).
#[derive(Default)]
pub(super) struct Hold {
    inner: Mutex<Inner>,
    released: Condvar,
}

impl Hold {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Arms the hold; the receiver gets the file's path once a write is held.
    pub(super) fn arm(&self, name_part: &str, offset: u64) -> Receiver<PathBuf> {
        let (tripped, receiver) = channel();
        self.lock().wanted = Some(Wanted {
            name_part: name_part.to_string(),
            offset,
            tripped,
        });
        receiver
    }

    /// Called by the file system before a write of `path` at `offset`: true at once,
    /// unless this is the write to hold; then false once [`Hold::release`] is called (the
    /// power went out: the write never happened).
    pub(super) fn before_write(&self, path: &Path, offset: u64) -> bool {
        let mut inner = self.lock();
        let wanted = inner.wanted.as_ref().is_some_and(|wanted| {
            offset >= wanted.offset && path.to_string_lossy().contains(&wanted.name_part)
        });
        if !wanted {
            return true;
        }
        if let Some(wanted) = inner.wanted.take() {
            let _ = wanted.tripped.send(path.to_path_buf());
        }
        inner.holding = true;
        while inner.holding {
            inner = self
                .released
                .wait(inner)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        false
    }

    /// Ends a held write with an error (and disarms the hold).
    pub(super) fn release(&self) {
        let mut inner = self.lock();
        inner.wanted = None;
        inner.holding = false;
        self.released.notify_all();
    }
}
