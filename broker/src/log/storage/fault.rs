//! A fault-injecting [`Storage`] for tests, in the manner of the simulated disks of TigerBeetle
//! and FoundationDB: files live on the real file system, and beside them this layer keeps what
//! a power loss would leave behind.
//!
//! The model: a file's contents as of its last successful `sync_data` survive; of the writes
//! after it, a random prefix survives, possibly followed by garbage or by zeros up to the
//! length the file had (its size reached the disk, its pages did not). A name created, removed
//! or renamed since the last `sync_dir` of its directory may or may not have reached the disk.
//! The power fails after a chosen number of operations ([`FaultyStorage::crash_after`]) or
//! when asked ([`FaultyStorage::crash_now`]); from then on every call fails, so nothing that
//! happens afterwards can count as done. [`FaultyStorage::power_loss`] then rewrites the
//! files as the disk would hold them after a restart. Syncs can also fail on demand
//! ([`FaultyStorage::fail_syncs_under`], [`FaultyStorage::fail_syncs_of`]), like a disk going
//! bad.
//!
//! Every call holds one lock while it does its real I/O, so a crash point falls between
//! calls, never inside one.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use super::{OpenMode, Storage, StorageFile};

/// A small seeded random number generator (SplitMix64), so a failing round can be replayed.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

/// The fault-injecting layer. Clones share one simulated disk.
#[derive(Debug, Clone, Default)]
pub(crate) struct FaultyStorage {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    /// What each file (by inode number) holds on the disk: its contents at its last sync.
    durable: HashMap<u64, Vec<u8>>,
    /// Names as the running process sees them.
    names: HashMap<PathBuf, u64>,
    /// Names as the disk holds them: as of the last directory sync that covered them.
    durable_names: HashMap<PathBuf, u64>,
    next_inode: u64,
    /// Operations that may still complete before the power fails.
    ops_until_crash: Option<u64>,
    crashed: bool,
    /// Syncs of these paths fail; with `true`, also of everything under them.
    failing: Vec<(PathBuf, bool)>,
    syncs_failed: u64,
    /// Writes to files under these paths fail (ENOSPC), until [`FaultyStorage::heal_writes`].
    failing_writes: Vec<PathBuf>,
}

fn power_failed() -> io::Error {
    io::Error::other("simulated power loss: the machine is off")
}

fn sync_failed() -> io::Error {
    // EIO, as a failing disk reports it.
    io::Error::from_raw_os_error(5)
}

impl State {
    /// Counts one operation towards the crash point; fails once the power is off.
    fn tick(&mut self) -> io::Result<()> {
        if self.crashed {
            return Err(power_failed());
        }
        if let Some(left) = self.ops_until_crash.as_mut() {
            if *left == 0 {
                self.crashed = true;
                return Err(power_failed());
            }
            *left -= 1;
        }
        Ok(())
    }

    fn new_inode(&mut self, durable: Vec<u8>) -> u64 {
        self.next_inode += 1;
        self.durable.insert(self.next_inode, durable);
        self.next_inode
    }

    /// The inode of an existing name; a file this layer has not seen yet (it was there before)
    /// is taken to be on the disk as it is.
    fn adopt(&mut self, path: &Path) -> io::Result<u64> {
        if let Some(&ino) = self.names.get(path) {
            return Ok(ino);
        }
        let contents = std::fs::read(path)?;
        let ino = self.new_inode(contents);
        self.names.insert(path.to_owned(), ino);
        self.durable_names.insert(path.to_owned(), ino);
        Ok(ino)
    }

    fn sync_fails(&mut self, path: &Path) -> bool {
        let fails = self.failing.iter().any(|(p, tree)| {
            if *tree {
                path.starts_with(p)
            } else {
                path == p
            }
        });
        self.syncs_failed += u64::from(fails);
        fails
    }
}

impl FaultyStorage {
    pub(crate) fn new() -> Self {
        FaultyStorage::default()
    }

    /// This layer as the log takes it.
    pub(crate) fn shared(&self) -> Arc<dyn Storage> {
        Arc::new(self.clone())
    }

    /// The power fails when `ops` more operations have completed.
    pub(crate) fn crash_after(&self, ops: u64) {
        self.state.lock().ops_until_crash = Some(ops);
    }

    /// The power fails now.
    pub(crate) fn crash_now(&self) {
        self.state.lock().crashed = true;
    }

    /// True once the power has failed.
    pub(crate) fn crashed(&self) -> bool {
        self.state.lock().crashed
    }

    /// From now on every sync of a file or directory under `path` fails with EIO.
    pub(crate) fn fail_syncs_under(&self, path: &Path) {
        self.state.lock().failing.push((path.to_owned(), true));
    }

    /// From now on every sync of `path` itself (a file, or a directory's names) fails with EIO.
    /// Writes to files under `path` fail from now on, as on a full disk.
    pub(crate) fn fail_writes_under(&self, path: &Path) {
        self.state.lock().failing_writes.push(path.to_owned());
    }

    /// Writes succeed again (space was freed).
    pub(crate) fn heal_writes(&self) {
        self.state.lock().failing_writes.clear();
    }

    pub(crate) fn fail_syncs_of(&self, path: &Path) {
        self.state.lock().failing.push((path.to_owned(), false));
    }

    /// How many syncs failed on demand so far.
    pub(crate) fn syncs_failed(&self) -> u64 {
        self.state.lock().syncs_failed
    }

    /// Rewrites every file this layer knows as the disk holds it after the power came back
    /// (see the module docs), and starts afresh with that as the durable state. Call it after
    /// everything using the files has stopped.
    pub(crate) fn power_loss(&self, rng: &mut Rng) -> io::Result<()> {
        let mut st = self.state.lock();
        let mut all: Vec<PathBuf> = st
            .names
            .keys()
            .chain(st.durable_names.keys())
            .cloned()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        // Sorted, so one seed always makes the same disk.
        all.sort();
        // What the process last saw of each inode that still has a name.
        let mut current: HashMap<u64, Vec<u8>> = HashMap::new();
        for (path, &ino) in &st.names {
            if let Entry::Vacant(e) = current.entry(ino) {
                e.insert(std::fs::read(path)?);
            }
        }
        let mut images: HashMap<u64, Vec<u8>> = HashMap::new();
        let mut survivors: Vec<(PathBuf, u64)> = Vec::new();
        for path in &all {
            let now = st.names.get(path).copied();
            let on_disk = st.durable_names.get(path).copied();
            let chosen = if now == on_disk || rng.below(2) == 0 {
                on_disk
            } else {
                now
            };
            let Some(ino) = chosen else { continue };
            if let Entry::Vacant(e) = images.entry(ino) {
                let durable = st.durable.get(&ino).cloned().unwrap_or_default();
                e.insert(match current.get(&ino) {
                    Some(cur) => crash_image(&durable, cur, rng),
                    None => durable,
                });
            }
            survivors.push((path.clone(), ino));
        }
        for path in &all {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let mut fresh = State::default();
        let mut renumbered: HashMap<u64, u64> = HashMap::new();
        for (path, ino) in survivors {
            let image = images.get(&ino).cloned().unwrap_or_default();
            std::fs::write(&path, &image)?;
            let new = match renumbered.get(&ino) {
                Some(&n) => n,
                None => {
                    let n = fresh.new_inode(image);
                    renumbered.insert(ino, n);
                    n
                }
            };
            fresh.names.insert(path.clone(), new);
            fresh.durable_names.insert(path, new);
        }
        *st = fresh;
        Ok(())
    }
}

/// What a file holds after a power loss, given what was synced and what had been written.
fn crash_image(durable: &[u8], current: &[u8], rng: &mut Rng) -> Vec<u8> {
    if !current.starts_with(durable) {
        // Cut or overwritten since its last sync: either version may be what reached the disk.
        return if rng.below(2) == 0 {
            durable.to_vec()
        } else {
            current.to_vec()
        };
    }
    let unsynced = current.len() - durable.len();
    let kept = match rng.below(4) {
        0 => 0,
        1 => unsynced,
        _ => rng.below(unsynced as u64 + 1) as usize,
    };
    let mut image = current[..durable.len() + kept].to_vec();
    let lost = unsynced - kept;
    if lost > 0 {
        match rng.below(3) {
            0 => {
                let n = 1 + rng.below(lost as u64) as usize;
                image.extend((0..n).map(|_| rng.next_u64() as u8));
            }
            1 => image.resize(current.len(), 0),
            _ => {}
        }
    }
    image
}

impl Storage for FaultyStorage {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        let mut st = self.state.lock();
        let mut options = OpenOptions::new();
        options.read(true);
        let ino = match mode {
            OpenMode::Read | OpenMode::ReadWrite => {
                if st.crashed {
                    return Err(power_failed());
                }
                options.write(mode == OpenMode::ReadWrite);
                let file = options.open(path)?;
                let ino = st.adopt(path)?;
                return Ok(self.handle(file, ino));
            }
            OpenMode::CreateNew => {
                st.tick()?;
                options.write(true).create_new(true);
                let file = options.open(path)?;
                let ino = st.new_inode(Vec::new());
                st.names.insert(path.to_owned(), ino);
                return Ok(self.handle(file, ino));
            }
            OpenMode::CreateTruncate => {
                st.tick()?;
                if path.exists() {
                    st.adopt(path)?
                } else {
                    let ino = st.new_inode(Vec::new());
                    st.names.insert(path.to_owned(), ino);
                    ino
                }
            }
        };
        options.write(true).create(true).truncate(true);
        let file = options.open(path)?;
        Ok(self.handle(file, ino))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        st.tick()?;
        st.adopt(path)?;
        std::fs::remove_file(path)?;
        st.names.remove(path);
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        st.tick()?;
        let ino = st.adopt(from)?;
        if to.exists() {
            st.adopt(to)?;
        }
        std::fs::rename(from, to)?;
        st.names.remove(from);
        st.names.insert(to.to_owned(), ino);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        st.tick()?;
        if st.sync_fails(dir) {
            return Err(sync_failed());
        }
        let in_dir = |p: &Path| p.parent() == Some(dir);
        st.durable_names.retain(|p, _| !in_dir(p));
        let now: Vec<(PathBuf, u64)> = st
            .names
            .iter()
            .filter(|(p, _)| in_dir(p))
            .map(|(p, &i)| (p.clone(), i))
            .collect();
        st.durable_names.extend(now);
        Ok(())
    }
}

impl FaultyStorage {
    fn handle(&self, file: File, ino: u64) -> Arc<dyn StorageFile> {
        Arc::new(FaultyFile {
            file,
            ino,
            state: self.state.clone(),
        })
    }
}

/// A file opened through [`FaultyStorage`].
#[derive(Debug)]
struct FaultyFile {
    file: File,
    ino: u64,
    state: Arc<Mutex<State>>,
}

impl StorageFile for FaultyFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        if self.state.lock().crashed {
            return Err(power_failed());
        }
        self.file.read_at(buf, pos)
    }

    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        let mut st = self.state.lock();
        st.tick()?;
        if !st.failing_writes.is_empty() {
            let ino = self.ino;
            let failing = st.failing_writes.clone();
            if st
                .names
                .iter()
                .any(|(p, i)| *i == ino && failing.iter().any(|f| p.starts_with(f)))
            {
                // ENOSPC: nothing of this write reached the file.
                return Err(io::Error::from_raw_os_error(28));
            }
        }
        self.file.write_all_at(buf, pos)
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut st = self.state.lock();
        st.tick()?;
        let name = st
            .names
            .iter()
            .find(|(_, i)| **i == self.ino)
            .map(|(p, _)| p.clone());
        if name.is_some_and(|p| st.sync_fails(&p)) {
            return Err(sync_failed());
        }
        // The disk now holds what the file holds; no real fsync, the model is the disk here.
        let len = self.file.metadata()?.len();
        let mut contents = vec![0u8; len as usize];
        self.file.read_exact_at(&mut contents, 0)?;
        st.durable.insert(self.ino, contents);
        Ok(())
    }

    fn size_bytes(&self) -> io::Result<u64> {
        if self.state.lock().crashed {
            return Err(power_failed());
        }
        Ok(self.file.metadata()?.len())
    }

    fn truncate(&self, len_bytes: u64) -> io::Result<()> {
        let mut st = self.state.lock();
        st.tick()?;
        self.file.set_len(len_bytes)
    }

    fn created_ms(&self) -> io::Result<i64> {
        super::created_ms(&self.file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(storage: &FaultyStorage, path: &Path) -> Vec<u8> {
        let file = storage
            .open(path, OpenMode::Read)
            .unwrap_or_else(|e| panic!("open: {e}"));
        let mut buf = vec![0u8; file.size_bytes().unwrap_or(0) as usize];
        file.read_exact_at(&mut buf, 0)
            .unwrap_or_else(|e| panic!("read: {e}"));
        buf
    }

    #[test]
    fn power_loss_keeps_synced_bytes_and_at_most_a_prefix_of_the_rest() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let path = dir.path().join("f");
        let mut saw_torn = false;
        for seed in 0..200 {
            let storage = FaultyStorage::new();
            let f = storage
                .open(&path, OpenMode::CreateTruncate)
                .unwrap_or_else(|e| panic!("create: {e}"));
            f.write_all_at(b"synced-", 0).ok();
            f.sync_data().ok();
            storage.sync_dir(dir.path()).ok();
            f.write_all_at(b"unsynced", 7).ok();
            drop(f);
            storage.crash_now();
            storage
                .power_loss(&mut Rng::new(seed))
                .unwrap_or_else(|e| panic!("power loss: {e}"));
            let after = read(&storage, &path);
            assert!(after.starts_with(b"synced-"), "seed {seed}: {after:?}");
            assert!(
                after.len() <= 15,
                "seed {seed}: the file never grew past its writes"
            );
            let tail = &after[7..];
            let prefix = tail
                .iter()
                .zip(b"unsynced")
                .take_while(|(a, b)| a == b)
                .count();
            saw_torn |= prefix < 8 && !tail.is_empty();
        }
        assert!(saw_torn, "some seed tears the unsynced tail");
    }

    #[test]
    fn a_name_not_covered_by_a_directory_sync_can_vanish() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let (mut kept, mut lost) = (0, 0);
        for seed in 0..64 {
            let path = dir.path().join(format!("f{seed}"));
            let storage = FaultyStorage::new();
            let f = storage.open(&path, OpenMode::CreateNew);
            assert!(f.is_ok());
            storage.crash_now();
            storage.power_loss(&mut Rng::new(seed)).ok();
            if path.exists() {
                kept += 1;
            } else {
                lost += 1;
            }
        }
        assert!(kept > 0 && lost > 0, "kept {kept}, lost {lost}");
    }

    #[test]
    fn calls_after_the_crash_point_fail_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let path = dir.path().join("f");
        let storage = FaultyStorage::new();
        storage.crash_after(3); // create, write, sync
        let f = storage.open(&path, OpenMode::CreateNew);
        let Ok(f) = f else { panic!("create failed") };
        assert!(f.write_all_at(b"abc", 0).is_ok());
        assert!(f.sync_data().is_ok());
        assert!(f.write_all_at(b"def", 3).is_err());
        assert!(storage.crashed());
        assert!(f.sync_data().is_err());
        assert_eq!(std::fs::read(&path).unwrap_or_default(), b"abc");
    }

    #[test]
    fn failing_syncs_fail_with_eio_and_leave_the_disk_as_it_was() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let path = dir.path().join("f");
        let storage = FaultyStorage::new();
        let Ok(f) = storage.open(&path, OpenMode::CreateNew) else {
            panic!("create failed")
        };
        storage.sync_dir(dir.path()).ok();
        storage.fail_syncs_under(dir.path());
        f.write_all_at(b"abc", 0).ok();
        let err = f.sync_data().err().map(|e| e.raw_os_error());
        assert_eq!(err, Some(Some(5)));
        assert_eq!(storage.syncs_failed(), 1);
        drop(f);
        storage.crash_now();
        // "abc" was never durable: at most its length in torn bytes survives.
        storage.power_loss(&mut Rng::new(0)).ok();
        let after = std::fs::read(&path).unwrap_or_default();
        assert!(after.len() <= 3);
    }
}
