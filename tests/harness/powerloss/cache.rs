//! One file's data not yet durable: the pages written since its last fsync, and its size.
//! The backing file holds exactly what is durable; an fsync writes the pages into it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;

/// Bytes per cached page.
const PAGE: u64 = 4096;

/// What a file looks like to its readers beyond its backing (durable) content.
#[derive(Debug)]
pub(super) struct FileCache {
    /// The file's size as readers see it.
    size: u64,
    /// A truncation not yet durable: backing bytes at or past this offset read as zeros.
    zeroed_from: Option<u64>,
    /// Pages written since the last fsync, by page index, each `PAGE` bytes long.
    pages: BTreeMap<u64, Box<[u8]>>,
}

impl FileCache {
    /// A cache with nothing in it over a backing file of `durable_size` bytes.
    pub(super) fn clean(durable_size: u64) -> FileCache {
        FileCache {
            size: durable_size,
            zeroed_from: None,
            pages: BTreeMap::new(),
        }
    }

    pub(super) fn size(&self) -> u64 {
        self.size
    }

    /// Bytes written and not yet durable (for the tests and the logs).
    pub(super) fn dirty_bytes(&self) -> u64 {
        self.pages.len() as u64 * PAGE
    }

    /// Whether everything readers see is durable (no pages, no size change).
    pub(super) fn is_clean(&self, durable_size: u64) -> bool {
        self.pages.is_empty() && self.zeroed_from.is_none() && self.size == durable_size
    }

    /// Reads up to `len` bytes at `offset` as readers see them.
    pub(super) fn read(&self, backing: &File, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let end = offset.saturating_add(len).min(self.size);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut at = offset;
        while at < end {
            let index = at / PAGE;
            let within = (at % PAGE) as usize;
            let take = ((PAGE - at % PAGE).min(end - at)) as usize;
            match self.pages.get(&index) {
                Some(page) => out.extend_from_slice(&page[within..within + take]),
                None => {
                    let page = self.durable_page(backing, index)?;
                    out.extend_from_slice(&page[within..within + take]);
                }
            }
            at += take as u64;
        }
        Ok(out)
    }

    /// Writes `data` at `offset`; nothing reaches the backing file before an fsync.
    pub(super) fn write(&mut self, backing: &File, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut at = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let index = at / PAGE;
            let within = (at % PAGE) as usize;
            let take = (PAGE as usize - within).min(rest.len());
            let page = self.page_mut(backing, index)?;
            page[within..within + take].copy_from_slice(&rest[..take]);
            rest = &rest[take..];
            at += take as u64;
        }
        self.size = self.size.max(offset + data.len() as u64);
        Ok(())
    }

    /// Sets the size; bytes past it read as zeros if the file grows again.
    pub(super) fn truncate(&mut self, backing: &File, size: u64) -> io::Result<()> {
        if size < self.size {
            self.pages.retain(|index, _| index * PAGE < size);
            let boundary = size / PAGE;
            if !size.is_multiple_of(PAGE) {
                let within = (size % PAGE) as usize;
                self.page_mut(backing, boundary)?[within..].fill(0);
            }
            self.zeroed_from = Some(self.zeroed_from.map_or(size, |from| from.min(size)));
        }
        self.size = size;
        Ok(())
    }

    /// Makes everything durable: the pages go into the backing file, which takes the
    /// file's size, and the backing file is synced. The cache is clean afterwards.
    pub(super) fn sync(&mut self, backing: &File) -> io::Result<()> {
        if let Some(from) = self.zeroed_from.take() {
            backing.set_len(from)?;
        }
        for (index, page) in &self.pages {
            let start = index * PAGE;
            let len = (self.size.saturating_sub(start)).min(PAGE) as usize;
            backing.write_all_at(&page[..len], start)?;
        }
        self.pages.clear();
        backing.set_len(self.size)?;
        backing.sync_all()
    }

    /// The page as the backing file holds it, with a pending truncation applied.
    fn durable_page(&self, backing: &File, index: u64) -> io::Result<Box<[u8]>> {
        let mut page = vec![0u8; PAGE as usize].into_boxed_slice();
        let start = index * PAGE;
        let mut filled = 0;
        while filled < page.len() {
            let read = backing.read_at(&mut page[filled..], start + filled as u64)?;
            if read == 0 {
                break;
            }
            filled += read;
        }
        if let Some(from) = self.zeroed_from
            && from < start + PAGE
        {
            let keep = from.saturating_sub(start) as usize;
            page[keep..].fill(0);
        }
        Ok(page)
    }

    fn page_mut(&mut self, backing: &File, index: u64) -> io::Result<&mut [u8]> {
        if !self.pages.contains_key(&index) {
            let page = self.durable_page(backing, index)?;
            self.pages.insert(index, page);
        }
        Ok(self
            .pages
            .get_mut(&index)
            .map(|page| &mut page[..])
            .expect("inserted above"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backing(content: &[u8]) -> File {
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, content).unwrap();
        file
    }

    #[test]
    fn writes_are_read_back_and_reach_the_backing_file_only_when_synced() {
        let file = backing(b"durable");
        let mut cache = FileCache::clean(7);
        cache.write(&file, 7, &[b'x'; 5000]).unwrap();
        assert_eq!(cache.size(), 5007);
        assert_eq!(&cache.read(&file, 0, 9).unwrap(), b"durablexx");
        assert_eq!(file.metadata().unwrap().len(), 7);
        cache.sync(&file).unwrap();
        assert_eq!(file.metadata().unwrap().len(), 5007);
        assert_eq!(cache.dirty_bytes(), 0);
    }

    #[test]
    fn a_truncated_tail_reads_as_zeros_when_the_file_grows_again() {
        let file = backing(&[7u8; 10_000]);
        let mut cache = FileCache::clean(10_000);
        cache.truncate(&file, 100).unwrap();
        cache.write(&file, 9_000, b"end").unwrap();
        let read = cache.read(&file, 0, 9_003).unwrap();
        assert!(read[..100].iter().all(|b| *b == 7));
        assert!(read[100..9_000].iter().all(|b| *b == 0));
        assert_eq!(&read[9_000..], b"end");
        cache.sync(&file).unwrap();
        let mut on_disk = vec![0u8; 9_003];
        file.read_exact_at(&mut on_disk, 0).unwrap();
        assert_eq!(on_disk, read);
    }
}
