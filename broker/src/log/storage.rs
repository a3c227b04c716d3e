//! The file layer under the partition log: everything the log does to its segment and index
//! files goes through [`Storage`] and [`StorageFile`], so tests can put a fault-injecting layer
//! there (power loss that drops unsynced writes, failing fsyncs) while the broker runs on
//! [`FileStorage`], the real file system.
//!
//! The calls are coarse (one per frame written, one per read or fsync), so the one dynamic
//! dispatch per call costs nothing next to the system call behind it, and no bytes are copied.
//! Directories themselves (creating a partition directory, listing it, deleting a whole
//! partition) and the small checkpoint files that do their own write-fsync-rename stay on
//! `std::fs`.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use arrow::buffer::MutableBuffer;

#[cfg(test)]
pub(crate) mod fault;

/// How [`Storage::open`] opens a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// An existing file, for reading.
    Read,
    /// An existing file, for reading and writing.
    ReadWrite,
    /// A new file for reading and writing; fails if the name exists.
    CreateNew,
    /// A file for reading and writing, created if missing and emptied if present.
    CreateTruncate,
}

/// The directory operations the log needs, and the way to open its files.
///
/// Contract: a file's contents are durable only once [`StorageFile::sync_data`] returned `Ok`
/// after the write; a created, removed or renamed name is durable only once
/// [`Storage::sync_dir`] of its directory returned `Ok` after the change. A failed sync says
/// nothing about what reached the disk, so callers must not retry it and then treat earlier
/// writes as durable (the log takes the partition offline instead).
pub trait Storage: Send + Sync + std::fmt::Debug {
    /// Opens `path` as `mode` says.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>>;

    /// Removes the name `path`.
    fn remove_file(&self, path: &Path) -> io::Result<()>;

    /// Renames `from` to `to` atomically, replacing `to` if it exists.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;

    /// Makes the names in `dir` (creations, removals, renames) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// An open file. Reads and writes are positional, so one handle serves concurrent readers
/// while the single appender writes past their end.
pub trait StorageFile: Send + Sync + std::fmt::Debug {
    /// Reads into `buf` at `pos`; returns the bytes read (0 at the end of the file).
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize>;

    /// Reads exactly `buf.len()` bytes at `pos`; a short file is `UnexpectedEof`.
    fn read_exact_at(&self, mut buf: &mut [u8], mut pos: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, pos) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file ends before the bytes asked for",
                    ));
                }
                Ok(n) => {
                    buf = &mut buf[n..];
                    pos += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Appends exactly `len` bytes read at `pos` to `buf`; a short file is `UnexpectedEof` and
    /// leaves `buf` as it was. The default fills the new bytes with zeros first; the real file
    /// reads into the buffer's spare capacity, so a read touches its memory once.
    fn read_exact_into(&self, buf: &mut MutableBuffer, len: usize, pos: u64) -> io::Result<()> {
        let at = buf.len();
        buf.resize(at + len, 0);
        let read = self.read_exact_at(&mut buf.as_slice_mut()[at..], pos);
        if read.is_err() {
            buf.truncate(at);
        }
        read
    }

    /// Writes all of `buf` at `pos` (not durable until [`StorageFile::sync_data`]).
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()>;

    /// Writes the slices one after another from `pos`, as one write of their concatenation
    /// (a frame whose column buffers are written from where they lie). The default copies
    /// them into one buffer for [`StorageFile::write_all_at`]; the real file hands them to
    /// the kernel as they are (`pwritev`).
    fn write_all_vectored_at(&self, slices: &mut [IoSlice<'_>], pos: u64) -> io::Result<()> {
        let mut whole = Vec::with_capacity(slices.iter().map(|s| s.len()).sum());
        for slice in slices.iter() {
            whole.extend_from_slice(slice);
        }
        self.write_all_at(&whole, pos)
    }

    /// Makes every write so far durable, with the file's length (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;

    /// The file's length.
    fn size_bytes(&self) -> io::Result<u64>;

    /// Cuts (or extends with zeros) the file to `len_bytes`.
    fn truncate(&self, len_bytes: u64) -> io::Result<()>;

    /// When the file was created (its modification time where the file system keeps no
    /// creation time), in milliseconds since the Unix epoch.
    fn created_ms(&self) -> io::Result<i64>;
}

/// Reads a whole file, refusing one longer than `max_bytes` (an `InvalidData` error).
pub fn read_file(storage: &dyn Storage, path: &Path, max_bytes: u64) -> io::Result<Vec<u8>> {
    let file = storage.open(path, OpenMode::Read)?;
    let len = file.size_bytes()?;
    if len > max_bytes {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{len} bytes is more than the {max_bytes} expected"),
        ));
    }
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, 0)?;
    Ok(buf)
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct FileStorage;

impl FileStorage {
    /// The real file system as a shared [`Storage`] (the default for every log).
    pub fn shared() -> Arc<dyn Storage> {
        Arc::new(FileStorage)
    }
}

impl Storage for FileStorage {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        let mut options = OpenOptions::new();
        options.read(true);
        match mode {
            OpenMode::Read => {}
            OpenMode::ReadWrite => {
                options.write(true);
            }
            OpenMode::CreateNew => {
                options.write(true).create_new(true);
            }
            OpenMode::CreateTruncate => {
                options.write(true).create(true).truncate(true);
            }
        }
        Ok(Arc::new(RealFile(options.open(path)?)))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

/// A file of the real file system.
#[derive(Debug)]
struct RealFile(File);

/// The bytes a `pread`/`pwritev` that returned `n` moved: 0 after an interrupted call (to be
/// repeated), the error `nothing` when it moved none, the OS error when it failed.
fn transferred(n: isize, nothing: (io::ErrorKind, &str)) -> io::Result<usize> {
    match usize::try_from(n) {
        Ok(0) => Err(io::Error::new(nothing.0, nothing.1)),
        Ok(n) => Ok(n),
        Err(_) => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(0)
            } else {
                Err(e)
            }
        }
    }
}

impl StorageFile for RealFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.0.read_at(buf, pos)
    }

    fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, pos)
    }

    // The one unsafe function of this file: reads into spare capacity, proved below and tested
    // by `reads_into_spare_capacity_fill_every_byte_or_fail`.
    #[allow(unsafe_code)]
    fn read_exact_into(&self, buf: &mut MutableBuffer, len: usize, pos: u64) -> io::Result<()> {
        let at = buf.len();
        buf.reserve(len);
        let mut done = 0usize;
        while done < len {
            let offset = pos
                .checked_add(done as u64)
                .and_then(|p| libc::off_t::try_from(p).ok())
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "read past 2^63"))?;
            // SAFETY: `reserve` made room for `len` bytes after the first `at`, so the
            // `len - done` bytes from `at + done` lie inside the allocation; pread writes at
            // most that many there and nothing else, and nothing else holds the buffer.
            let n = unsafe {
                libc::pread(
                    self.0.as_raw_fd(),
                    buf.as_mut_ptr().add(at + done).cast::<libc::c_void>(),
                    len - done,
                    offset,
                )
            };
            let eof = (
                io::ErrorKind::UnexpectedEof,
                "file ends before the bytes asked for",
            );
            done += transferred(n, eof)?;
        }
        // SAFETY: the loop above ran until pread had written all `len` bytes after `at`, so
        // the first `at + len` bytes are initialized, and `reserve` made them fit the capacity.
        unsafe { buf.set_len(at + len) };
        Ok(())
    }

    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.0.write_all_at(buf, pos)
    }

    // The second unsafe function of this file: a positioned vectored write, which std has
    // only on nightly. Tested by `vectored_writes_land_whole_in_order`.
    #[allow(unsafe_code)]
    fn write_all_vectored_at(&self, mut slices: &mut [IoSlice<'_>], pos: u64) -> io::Result<()> {
        // Linux's IOV_MAX: a longer list is written in parts.
        const MAX_SLICES: usize = 1024;
        let mut pos = pos;
        IoSlice::advance_slices(&mut slices, 0);
        while !slices.is_empty() {
            let offset = libc::off_t::try_from(pos)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "write past 2^63"))?;
            let count = slices.len().min(MAX_SLICES);
            // SAFETY: `IoSlice` is ABI compatible with `iovec` on Unix (std documents it), and
            // the first `count` slices are live borrows of readable memory for this call;
            // pwritev only reads them.
            let n = unsafe {
                libc::pwritev(
                    self.0.as_raw_fd(),
                    slices.as_ptr().cast::<libc::iovec>(),
                    count as libc::c_int,
                    offset,
                )
            };
            let none = (
                io::ErrorKind::WriteZero,
                "the file took none of the bytes written",
            );
            let n = transferred(n, none)?;
            IoSlice::advance_slices(&mut slices, n);
            pos += n as u64;
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn size_bytes(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn truncate(&self, len_bytes: u64) -> io::Result<()> {
        self.0.set_len(len_bytes)
    }

    fn created_ms(&self) -> io::Result<i64> {
        created_ms(&self.0)
    }
}

/// A real file's creation time (or modification time), in milliseconds since the Unix epoch.
fn created_ms(file: &File) -> io::Result<i64> {
    let meta = file.metadata()?;
    let time = meta.created().or_else(|_| meta.modified())?;
    Ok(time
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64))
}

/// Sequential reads of a [`StorageFile`] from a position, for `BufReader`.
#[derive(Debug)]
pub struct Reader<'a> {
    file: &'a dyn StorageFile,
    pos: u64,
}

impl<'a> Reader<'a> {
    /// Reads `file` from `pos` on.
    pub fn new(file: &'a dyn StorageFile, pos: u64) -> Self {
        Reader { file, pos }
    }
}

impl io::Read for Reader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.
    use super::*;

    /// A file with the trait's default methods, over a real one.
    struct Plain<'a>(&'a dyn StorageFile);

    impl std::fmt::Debug for Plain<'_> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Plain")
        }
    }

    impl StorageFile for Plain<'_> {
        fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
            self.0.read_at(buf, pos)
        }
        fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
            self.0.write_all_at(buf, pos)
        }
        fn sync_data(&self) -> io::Result<()> {
            self.0.sync_data()
        }
        fn size_bytes(&self) -> io::Result<u64> {
            self.0.size_bytes()
        }
        fn truncate(&self, len_bytes: u64) -> io::Result<()> {
            self.0.truncate(len_bytes)
        }
        fn created_ms(&self) -> io::Result<i64> {
            self.0.created_ms()
        }
    }

    #[test]
    fn vectored_writes_land_whole_in_order() {
        let dir = tempfile::tempdir().unwrap();
        // Pieces of every size from none to several pages, more of them than one pwritev
        // takes, after 10 bytes already in the file.
        let pieces: Vec<Vec<u8>> = (0..2_500u32)
            .map(|i| vec![(i % 251) as u8; (i as usize * 37) % 9_000 * usize::from(i % 7 != 0)])
            .collect();
        let expected: Vec<u8> = b"0123456789"
            .iter()
            .chain(pieces.iter().flatten())
            .copied()
            .collect();
        for (name, plain) in [("real", false), ("default", true)] {
            let path = dir.path().join(name);
            let file = FileStorage.open(&path, OpenMode::CreateNew).unwrap();
            file.write_all_at(b"0123456789", 0).unwrap();
            let mut slices: Vec<IoSlice<'_>> = pieces.iter().map(|p| IoSlice::new(p)).collect();
            if plain {
                Plain(&*file)
                    .write_all_vectored_at(&mut slices, 10)
                    .unwrap();
            } else {
                file.write_all_vectored_at(&mut slices, 10).unwrap();
            }
            assert_eq!(file.size_bytes().unwrap(), expected.len() as u64, "{name}");
            let mut back = vec![0; expected.len()];
            file.read_exact_at(&mut back, 0).unwrap();
            assert!(back == expected, "{name}: the bytes differ");
            // Nothing at all is a write of nothing.
            file.write_all_vectored_at(&mut [], 3).unwrap();
            file.write_all_vectored_at(&mut [IoSlice::new(&[])], 3)
                .unwrap();
            assert_eq!(file.size_bytes().unwrap(), expected.len() as u64, "{name}");
        }
    }

    #[test]
    fn reads_into_spare_capacity_fill_every_byte_or_fail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let file = FileStorage.open(&path, OpenMode::CreateNew).unwrap();
        file.write_all_at(&bytes, 0).unwrap();

        // After bytes already in the buffer, from the middle of the file, several times the
        // size of one read of the kernel's page cache copy.
        let mut buf = MutableBuffer::new(0);
        buf.extend_from_slice(b"kept");
        file.read_exact_into(&mut buf, 150_000, 25_000).unwrap();
        assert_eq!(buf.len(), 4 + 150_000);
        assert_eq!(&buf.as_slice()[..4], b"kept");
        assert_eq!(&buf.as_slice()[4..], &bytes[25_000..175_000]);

        // The default of the trait (zero-fill, then read) gives the same bytes.
        let mut plain = MutableBuffer::new(0);
        Plain(&*file)
            .read_exact_into(&mut plain, 150_000, 25_000)
            .unwrap();
        assert_eq!(plain.as_slice(), &bytes[25_000..175_000]);

        // Past the end: an error, and the buffer keeps only what it held.
        for f in [&*file, &Plain(&*file) as &dyn StorageFile] {
            let mut short = MutableBuffer::new(0);
            short.extend_from_slice(b"kept");
            let err = f.read_exact_into(&mut short, 1_000, 199_500).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
            assert_eq!(short.as_slice(), b"kept");
        }
    }
}
