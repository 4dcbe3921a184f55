//! SHA-256 over what a snapshot file holds, computed as it is written and read.

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

/// A SHA-256 digest.
pub(crate) type Sum = [u8; 32];

/// Passes writes through to `inner` and hashes them.
pub(crate) struct HashingWriter<W> {
    pub(crate) inner: W,
    pub(crate) hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(bytes)?;
        self.hasher.update(&bytes[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Passes reads through from `inner` and hashes what they return.
pub(crate) struct HashingReader<R> {
    pub(crate) inner: R,
    pub(crate) hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buffer)?;
        self.hasher.update(&buffer[..read]);
        Ok(read)
    }
}

pub(crate) fn finish(hasher: Sha256) -> Sum {
    hasher.finalize().into()
}

/// The whole-file checksum: over the header and the sections' checksums, and so over every
/// byte of the file.
pub(crate) fn file_sum(header: &[u8], state_sum: &Sum, bodies_sum: &Sum, bodies: u64) -> Sum {
    let mut hasher = Sha256::new();
    hasher.update(header);
    hasher.update(state_sum);
    hasher.update(bodies_sum);
    hasher.update(bodies.to_le_bytes());
    finish(hasher)
}
