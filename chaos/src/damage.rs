//! Damage to one stopped node's data directory, as a failing disk does it: a flipped bit in,
//! or a truncation of, a write-ahead log, a table file, the MANIFEST or a snapshot file.

use std::path::{Path, PathBuf};

use crate::nemesis::Rng;

/// Whether a file name is of a kind.
type Matches = fn(&str) -> bool;

/// The kinds of file damaged, in the order a pick chooses among them.
const KINDS: [(&str, Matches); 4] = [
    ("write-ahead log", |name| {
        name.ends_with(".log") && !name.starts_with("LOG")
    }),
    ("table file", |name| name.ends_with(".sst")),
    ("MANIFEST", |name| name.starts_with("MANIFEST-")),
    ("snapshot", |name| name.ends_with(".snap")),
];

/// Damages one file under `data_dir`, chosen by `pick` (a kind that has no file falls back
/// to the next); returns what was done, or `None` when no file of any kind exists.
pub fn damage(data_dir: &Path, pick: u64) -> std::io::Result<Option<String>> {
    let mut rng = Rng::new(pick);
    let files = files_under(data_dir)?;
    let first = (rng.next() % KINDS.len() as u64) as usize;
    for turn in 0..KINDS.len() {
        let (kind, matches) = KINDS[(first + turn) % KINDS.len()];
        let mut candidates: Vec<&PathBuf> = files
            .iter()
            .filter(|path| {
                let name = path
                    .file_name()
                    .and_then(|name| name.to_str())
                    .unwrap_or("");
                matches(name) && std::fs::metadata(path).is_ok_and(|meta| meta.len() > 0)
            })
            .collect();
        if candidates.is_empty() {
            continue;
        }
        candidates.sort();
        let path = candidates[(rng.next() % candidates.len() as u64) as usize];
        let length = std::fs::metadata(path)?.len();
        let shown = path.strip_prefix(data_dir).unwrap_or(path).display();
        let done = if rng.next().is_multiple_of(2) {
            let offset = rng.next() % length;
            let mut bytes = std::fs::read(path)?;
            bytes[offset as usize] ^= 1 << (rng.next() % 8);
            std::fs::write(path, bytes)?;
            format!("{kind} {shown}: flipped a bit at byte {offset} of {length}")
        } else {
            let keep = rng.next() % length;
            std::fs::OpenOptions::new()
                .write(true)
                .open(path)?
                .set_len(keep)?;
            format!("{kind} {shown}: truncated from {length} to {keep} bytes")
        };
        return Ok(Some(done));
    }
    Ok(None)
}

fn files_under(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(files_under(&path)?);
        } else {
            files.push(path);
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damages_a_file_of_a_kind_that_exists_and_says_what_it_did() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("rocksdb")).unwrap();
        let table = dir.path().join("rocksdb/000009.sst");
        std::fs::write(&table, vec![0u8; 4096]).unwrap();
        std::fs::write(dir.path().join("rocksdb/LOG"), b"info log").unwrap();
        for pick in 0..20 {
            let before = std::fs::read(&table).unwrap();
            let done = damage(dir.path(), pick)
                .unwrap()
                .expect("a table file to damage");
            assert!(done.starts_with("table file rocksdb/000009.sst"), "{done}");
            assert_ne!(std::fs::read(&table).unwrap(), before, "{done}");
            std::fs::write(&table, vec![0u8; 4096]).unwrap();
        }
        assert_eq!(
            std::fs::read(dir.path().join("rocksdb/LOG")).unwrap(),
            b"info log"
        );
    }
}
