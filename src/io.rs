//! Files on disk: atomic writes and the NPY format.
//!
//! Every result reslim writes goes through [`atomic_write`] (or [`atomic_write_with`]):
//! the bytes land in a temporary file beside the target, are flushed, and the temporary
//! file is renamed over the target. A reader (or a resumed sweep) therefore sees either
//! the old file or the complete new one, never a torn write.
//!
//! Temporary names carry a tag unique across processes and hosts
//! (`.{name}.tmp-{host}-{pid}-{seq}`, [`unique_tag`]), so two processes writing into one
//! directory, on one machine or on a cluster's shared file system, never collide; and a
//! later run removes only the temporaries of dead processes of its own host
//! ([`remove_stale_temps`]). [`DirLock`] keeps a second process out of an output
//! directory while one works in it (exclusive), or lets several share it (shard runs);
//! [`write_new`] keeps the first of two concurrent writes of one result.
//!
//! NPY support covers what reslim exchanges with NumPy: little-endian `f8`/`f4` arrays
//! in C order, format versions 1.0-3.0 (see the NPY format description in NumPy's
//! `numpy.lib.format`).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Errors of file input and output. Each names the file it concerns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IoError {
    /// The OS refused an operation on `path`.
    #[error("{path}: {source}")]
    Os {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not an NPY file reslim can read.
    #[error("{path}: not a valid NPY file: {why}")]
    BadNpy { path: PathBuf, why: String },
    /// The array has another shape than the one expected.
    #[error("{path}: expected an array of shape {expected:?}, found shape {found:?}")]
    Shape {
        path: PathBuf,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// Another process holds the directory's lock.
    #[error(
        "{path} is in use by another reslim process ({holder}); wait for it to finish, or write to another output directory"
    )]
    Busy { path: PathBuf, holder: String },
    /// The array has no entries along an axis that reslim needs non-empty (a model or
    /// data set with a zero dimension has nothing to train).
    #[error("{path}: dimension {dim} is 0 (shape {shape:?}); every dimension must be positive")]
    EmptyAxis {
        path: PathBuf,
        dim: String,
        shape: Vec<usize>,
    },
    /// A stored record (e.g. a sweep task's `records.json`) does not hold what the
    /// current spec reads from it.
    #[error("{path}: unusable record: {why}")]
    BadRecord { path: PathBuf, why: String },
    /// The array holds a NaN or an infinity.
    #[error("{path}: entry {index} is not finite ({value})")]
    NonFinite {
        path: PathBuf,
        index: usize,
        value: f64,
    },
}

fn os(path: &Path) -> impl FnOnce(std::io::Error) -> IoError + '_ {
    move |source| IoError::Os {
        path: path.to_path_buf(),
        source,
    }
}

/// This host's name as it appears in temporary names (characters other than ASCII
/// letters, digits, `.` and `-` become `_`; `localhost` if it cannot be read).
pub fn host_name() -> &'static str {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOST.get_or_init(|| {
        let raw = read_host_name().unwrap_or_default();
        let clean: String = raw
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if clean.is_empty() {
            "localhost".into()
        } else {
            clean
        }
    })
}

#[cfg(unix)]
fn read_host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is writable for its length; gethostname writes at most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

#[cfg(not(unix))]
fn read_host_name() -> Option<String> {
    std::env::var("COMPUTERNAME").ok()
}

/// A suffix no other temporary name has: `{host}-{pid}-{seq}`, `seq` counting this
/// process's temporaries.
pub fn unique_tag() -> String {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{}-{seq}", host_name(), std::process::id())
}

/// The temporary name of `name`: `.{name}.tmp-{tag}` (hidden, and recognised by
/// [`temp_owner`]).
pub fn temp_name(name: &str) -> String {
    format!(".{name}.tmp-{}", unique_tag())
}

/// The (host, pid) that made a temporary name of [`temp_name`]; `None` for other names.
pub fn temp_owner(name: &str) -> Option<(&str, u32)> {
    if !name.starts_with('.') {
        return None;
    }
    let tag = &name[name.rfind(".tmp-")? + 5..];
    let mut parts = tag.rsplitn(3, '-');
    let seq = parts.next()?;
    let pid = parts.next()?;
    let host = parts.next()?;
    if host.is_empty() || seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((host, pid.parse().ok()?))
}

/// Whether process `pid` of this host may still be running (`true` when unsure).
fn pid_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(p) = i32::try_from(pid) else {
            return true;
        };
        if p <= 0 {
            return true;
        }
        // SAFETY: signal 0 only checks that the process exists; nothing is sent.
        let rc = unsafe { libc::kill(p, 0) };
        rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// Removes, in `dir` and its subdirectories down to `depth` levels, the temporary files
/// and directories ([`temp_name`]) left by processes of this host that are no longer
/// running (a killed run's half-written files). Those of running processes and of other
/// hosts are left alone. Returns what was removed.
pub fn remove_stale_temps(dir: &Path, depth: usize) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(rd) = fs::read_dir(dir) else {
        return removed;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
        match temp_owner(&name) {
            Some((host, pid))
                if host == host_name() && pid != std::process::id() && !pid_alive(pid) =>
            {
                let p = e.path();
                let gone = if is_dir {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
                if gone.is_ok() {
                    removed.push(p);
                }
            }
            Some(_) => {}
            None if is_dir && depth > 0 => {
                removed.extend(remove_stale_temps(&e.path(), depth - 1));
            }
            None => {}
        }
    }
    removed
}

/// A lock on a directory (`flock` on `{dir}/.lock`), held until dropped. The kernel
/// releases it when the process ends, however it ends, so a killed run never leaves a
/// stale lock. The lock file names its last holder (pid, host, start time) for the
/// message a refused process gets.
///
/// Exclusive ([`DirLock::acquire`]): one process alone (a whole sweep, a report).
/// Shared ([`DirLock::acquire_shared`]): any number of processes that each write only
/// units that are safe to write concurrently (shard runs), and no exclusive holder
/// meanwhile. On a cluster's shared file system `flock` works across nodes where the
/// file system supports it (NFS does; Lustre with its `flock` mount option).
#[derive(Debug)]
pub struct DirLock {
    _file: fs::File,
}

impl DirLock {
    /// Takes the exclusive lock of `dir` (created if needed), or fails at once with
    /// [`IoError::Busy`] when another process holds it, shared or exclusive.
    pub fn acquire(dir: &Path) -> Result<Self, IoError> {
        Self::take(dir, true)
    }

    /// Takes a shared lock of `dir` (created if needed), or fails at once with
    /// [`IoError::Busy`] when another process holds it exclusively.
    pub fn acquire_shared(dir: &Path) -> Result<Self, IoError> {
        Self::take(dir, false)
    }

    fn take(dir: &Path, exclusive: bool) -> Result<Self, IoError> {
        fs::create_dir_all(dir).map_err(os(dir))?;
        let path = dir.join(".lock");
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(os(&path))?;
        #[cfg(unix)]
        {
            use std::io::{Read, Seek};
            use std::os::fd::AsRawFd;
            // SAFETY: a valid open descriptor; flock does not touch memory.
            let how = if exclusive {
                libc::LOCK_EX
            } else {
                libc::LOCK_SH
            };
            // A lock this very process released can still look held for a moment: a
            // thread that forks a child (`std::process::Command`) lends it every open
            // descriptor until the child's exec closes them (they are close-on-exec).
            // So when the holder is this process, try again for up to 200 ms before
            // refusing; a lock genuinely held elsewhere in the process still is refused.
            let me = format!("pid {} on {}", std::process::id(), host_name());
            let mut tries = 0;
            let locked: Result<(), std::io::Error> = loop {
                // SAFETY: as above.
                let rc = unsafe { libc::flock(file.as_raw_fd(), how | libc::LOCK_NB) };
                if rc == 0 {
                    break Ok(());
                }
                let err = std::io::Error::last_os_error();
                if err.raw_os_error() != Some(libc::EWOULDBLOCK) || tries >= 20 {
                    break Err(err);
                }
                let mut holder = String::new();
                let _ = file.rewind();
                let _ = file.read_to_string(&mut holder);
                if !holder.starts_with(&me) {
                    break Err(err);
                }
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            };
            if let Err(err) = locked {
                if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                    let mut holder = String::new();
                    let _ = file.rewind();
                    let _ = file.read_to_string(&mut holder);
                    let holder = holder.trim();
                    return Err(IoError::Busy {
                        path: dir.to_path_buf(),
                        holder: if holder.is_empty() {
                            "holder unknown".into()
                        } else {
                            holder.to_string()
                        },
                    });
                }
                return Err(IoError::Os { path, source: err });
            }
            let since = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let note = format!(
                "pid {} on {} since unix time {since}{}\n",
                std::process::id(),
                host_name(),
                if exclusive { "" } else { ", sharing it" }
            );
            let _ = file.set_len(0);
            let _ = file.rewind();
            let _ = file.write_all(note.as_bytes());
        }
        Ok(DirLock { _file: file })
    }
}

/// The temporary file used while writing `path` (same directory, so the rename is atomic).
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(temp_name(&name))
}

/// Whether `dir` may receive an output directory of kind `what`: it does not exist, is
/// empty, or holds an earlier one (its `marker` file), which is then replaced. Anything
/// else (a file, a directory of other things) is refused, naming it, so that a mistyped
/// `--out` never deletes someone's files. Call it before the work.
pub fn check_out_dir(dir: &Path, marker: &str, what: &str) -> Result<(), IoError> {
    let refuse = |why: String| IoError::Os {
        path: dir.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, why),
    };
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(IoError::Os {
            path: dir.to_path_buf(),
            source,
        }),
        Ok(m) if !m.is_dir() => Err(refuse(
            "exists and is not a directory; choose another --out".into(),
        )),
        Ok(_) => {
            let mut entries = std::fs::read_dir(dir).map_err(|source| IoError::Os {
                path: dir.to_path_buf(),
                source,
            })?;
            if entries.next().is_none() || dir.join(marker).is_file() {
                Ok(())
            } else {
                Err(refuse(format!(
                    "holds files but no {what} (no {marker}); choose another --out or empty it"
                )))
            }
        }
    }
}

/// Writes the directory `dir` as a unit: `write` fills a temporary directory beside it
/// (a name of [`temp_name`]), which then replaces `dir` by renames, so `dir` is never seen
/// half written (a killed writer leaves a temporary that [`remove_stale_temps`] removes).
/// The temporaries of dead writers of this host beside `dir` are removed first.
pub fn write_dir_as_unit<E: From<IoError>>(
    dir: &Path,
    write: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "run".into());
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let os = |path: &Path| {
        let path = path.to_path_buf();
        move |source| IoError::Os { path, source }
    };
    std::fs::create_dir_all(parent).map_err(os(parent))?;
    remove_stale_temps(parent, 0);
    let tmp = parent.join(temp_name(&name));
    std::fs::create_dir_all(&tmp).map_err(os(&tmp))?;
    let res = write(&tmp).and_then(|()| {
        if dir.exists() {
            let old = parent.join(temp_name(&format!("{name}.old")));
            std::fs::rename(dir, &old).map_err(os(dir))?;
            std::fs::rename(&tmp, dir).map_err(os(dir))?;
            let _ = std::fs::remove_dir_all(&old);
            Ok(())
        } else {
            std::fs::rename(&tmp, dir).map_err(os(dir)).map_err(E::from)
        }
    });
    if res.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    res
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename). Creates the
/// parent directory if needed.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), IoError> {
    atomic_write_with(path, |tmp| {
        let mut f = fs::File::create(tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })
}

/// Writes `bytes` to `path` atomically unless `path` exists: the first writer wins
/// (temporary file, fsync, then a hard link to `path`, which fails if `path` exists; on
/// file systems without hard links, a rename when `path` is still absent). Returns
/// whether this call wrote it. For results that concurrent processes may produce
/// twice: the first complete one is kept, never replaced by a later duplicate.
pub fn write_new(path: &Path, bytes: &[u8]) -> Result<bool, IoError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(os(parent))?;
    }
    let tmp = temp_path(path);
    let made = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = made {
        let _ = fs::remove_file(&tmp);
        return Err(IoError::Os {
            path: path.to_path_buf(),
            source: e,
        });
    }
    let res = match fs::hard_link(&tmp, path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(_) if !path.exists() => fs::rename(&tmp, path).map(|()| true).map_err(os(path)),
        Err(_) => Ok(false),
    };
    let _ = fs::remove_file(&tmp);
    res
}

/// Lets `write` produce the file at a temporary path, then renames it to `path`.
/// Use this for writers that want a path of their own (image encoders, CSV writers).
pub fn atomic_write_with(
    path: &Path,
    write: impl FnOnce(&Path) -> std::io::Result<()>,
) -> Result<(), IoError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(os(parent))?;
    }
    let tmp = temp_path(path);
    if let Err(e) = write(&tmp) {
        let _ = fs::remove_file(&tmp);
        return Err(IoError::Os {
            path: path.to_path_buf(),
            source: e,
        });
    }
    fs::rename(&tmp, path).map_err(os(path))
}

/// Element types reslim writes to and reads from NPY.
pub trait NpyElem: Copy {
    /// The NPY `descr` string.
    const DESCR: &'static str;
    fn to_le(self, out: &mut Vec<u8>);
}
impl NpyElem for f64 {
    const DESCR: &'static str = "<f8";
    fn to_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}
impl NpyElem for f32 {
    const DESCR: &'static str = "<f4";
    fn to_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

/// Encodes a C-order array as NPY (version 1.0) bytes.
pub fn npy_bytes<T: NpyElem>(shape: &[usize], data: &[T]) -> Vec<u8> {
    debug_assert_eq!(shape.iter().product::<usize>(), data.len());
    let shape_str = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {}, }}",
        T::DESCR,
        shape_str
    );
    // Pad so that magic(6) + version(2) + len(2) + header ends on a 64-byte boundary.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + 8 * data.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for &x in data {
        x.to_le(&mut out);
    }
    out
}

/// Writes a C-order array to `path` as NPY, atomically.
pub fn write_npy<T: NpyElem>(path: &Path, shape: &[usize], data: &[T]) -> Result<(), IoError> {
    atomic_write(path, &npy_bytes(shape, data))
}

/// A float array read from NPY, converted to f64, in C order.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

/// What an NPY header says.
struct NpyHeader {
    shape: Vec<usize>,
    /// Bytes per element (8 or 4).
    size: usize,
    big: bool,
    is_f64: bool,
    fortran: bool,
    /// Offset of the data.
    data_start: usize,
    /// Bytes of data the shape needs (checked: a wrapped product would let a header
    /// claim 2^61 rows over an empty body).
    data_bytes: usize,
}

/// Parses the header at the start of `bytes` (at least the whole header).
fn parse_header(path: &Path, bytes: &[u8]) -> Result<NpyHeader, IoError> {
    let bad = |why: &str| IoError::BadNpy {
        path: path.to_path_buf(),
        why: why.to_string(),
    };
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("missing the \\x93NUMPY magic string"));
    }
    let major = bytes[6];
    let (hlen, hstart) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(bad("truncated header"));
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => return Err(bad(&format!("unsupported format version {v}"))),
    };
    let header = bytes
        .get(hstart..hstart + hlen)
        .ok_or_else(|| bad("truncated header"))?;
    let header = std::str::from_utf8(header).map_err(|_| bad("header is not text"))?;
    let field = |key: &str| -> Option<&str> {
        let i = header.find(&format!("'{key}'"))?;
        let rest = &header[i + key.len() + 2..];
        let rest = rest.trim_start().strip_prefix(':')?.trim_start();
        Some(rest)
    };
    let descr = field("descr").ok_or_else(|| bad("header has no 'descr'"))?;
    let descr = descr
        .strip_prefix('\'')
        .and_then(|d| d.split('\'').next())
        .ok_or_else(|| bad("malformed 'descr'"))?;
    let (size, big, is_f64): (usize, bool, bool) = match descr {
        "<f8" | "=f8" | "f8" => (8, false, true),
        ">f8" => (8, true, true),
        "<f4" | "=f4" | "f4" => (4, false, false),
        ">f4" => (4, true, false),
        d => {
            return Err(bad(&format!(
                "dtype '{d}' is not supported (use float64 or float32)"
            )));
        }
    };
    // Only the Python literals NumPy writes: a quoted 'True' (or anything else) would
    // otherwise silently read as C order and scramble a Fortran array.
    let fortran_s = field("fortran_order").ok_or_else(|| bad("header has no 'fortran_order'"))?;
    let literal = |lit: &str| {
        fortran_s
            .strip_prefix(lit)
            .is_some_and(|rest| rest.trim_start().starts_with([',', '}']))
    };
    let fortran = if literal("True") {
        true
    } else if literal("False") {
        false
    } else {
        let got: String = fortran_s
            .chars()
            .take_while(|&c| c != ',' && c != '}')
            .collect();
        return Err(bad(&format!(
            "'fortran_order' must be True or False, got {}",
            got.trim()
        )));
    };
    let shape_s = field("shape").ok_or_else(|| bad("header has no 'shape'"))?;
    let shape_s = shape_s
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("malformed 'shape'"))?;
    let shape = shape_s
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| bad("malformed 'shape'"))?;
    let data_bytes = shape
        .iter()
        .try_fold(size, |acc, &x| acc.checked_mul(x))
        .ok_or_else(|| {
            bad(&format!(
                "shape {shape:?} of {size}-byte elements overflows a 64-bit size"
            ))
        })?;
    Ok(NpyHeader {
        shape,
        size,
        big,
        is_f64,
        fortran,
        data_start: hstart + hlen,
        data_bytes,
    })
}

/// The shape of an NPY file, from its header alone (the data is not read, but the file
/// must hold as many bytes as the shape needs).
pub fn npy_shape(path: &Path) -> Result<Vec<usize>, IoError> {
    use std::io::Read;
    let mut f = fs::File::open(path).map_err(os(path))?;
    let file_len = f.metadata().map_err(os(path))?.len();
    let mut start = vec![0u8; 12];
    let got = f.read(&mut start).map_err(os(path))?;
    start.truncate(got);
    // Enough for the header length the first bytes declare (u32 at most).
    let hlen = match start.get(6) {
        Some(1) if start.len() >= 10 => u16::from_le_bytes([start[8], start[9]]) as u64 + 10,
        Some(2 | 3) if start.len() >= 12 => {
            u32::from_le_bytes([start[8], start[9], start[10], start[11]]) as u64 + 12
        }
        _ => start.len() as u64,
    };
    let mut head = Vec::new();
    fs::File::open(path)
        .map_err(os(path))?
        .take(hlen.min(file_len))
        .read_to_end(&mut head)
        .map_err(os(path))?;
    let h = parse_header(path, &head)?;
    let body = file_len.saturating_sub(h.data_start as u64);
    if body != h.data_bytes as u64 {
        return Err(IoError::BadNpy {
            path: path.to_path_buf(),
            why: format!(
                "data holds {body} bytes, shape {:?} needs {}",
                h.shape, h.data_bytes
            ),
        });
    }
    Ok(h.shape)
}

/// Reads an NPY file of `f8` or `f4` (little- or big-endian, C or Fortran order) into a
/// C-order f64 array. Rejects NaN and infinities, naming the first bad entry.
pub fn read_npy(path: &Path) -> Result<NpyArray, IoError> {
    let bytes = fs::read(path).map_err(os(path))?;
    let NpyHeader {
        shape,
        size,
        big,
        is_f64,
        fortran,
        data_start,
        data_bytes,
    } = parse_header(path, &bytes)?;
    let body = &bytes[data_start..];
    if body.len() != data_bytes {
        return Err(IoError::BadNpy {
            path: path.to_path_buf(),
            why: format!(
                "data holds {} bytes, shape {:?} needs {}",
                body.len(),
                shape,
                data_bytes
            ),
        });
    }
    let mut data: Vec<f64> = body
        .chunks_exact(size)
        .map(|c| match (is_f64, big) {
            (true, false) => f64::from_le_bytes(c.try_into().unwrap()),
            (true, true) => f64::from_be_bytes(c.try_into().unwrap()),
            (false, false) => f32::from_le_bytes(c.try_into().unwrap()) as f64,
            (false, true) => f32::from_be_bytes(c.try_into().unwrap()) as f64,
        })
        .collect();
    if fortran && shape.len() > 1 {
        data = fortran_to_c(&shape, &data);
    }
    if let Some((index, &value)) = data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(IoError::NonFinite {
            path: path.to_path_buf(),
            index,
            value,
        });
    }
    Ok(NpyArray { shape, data })
}

/// Reads an NPY file and checks its shape.
pub fn read_npy_shaped(path: &Path, expected: &[usize]) -> Result<Vec<f64>, IoError> {
    let a = read_npy(path)?;
    if a.shape != expected {
        return Err(IoError::Shape {
            path: path.to_path_buf(),
            expected: expected.to_vec(),
            found: a.shape,
        });
    }
    Ok(a.data)
}

/// `data` (Fortran order) in C order. Needs `data.len()` = the product of `shape`
/// (checked by the caller's header parsing); then no stride below overflows, and an
/// empty array returns at once.
fn fortran_to_c(shape: &[usize], data: &[f64]) -> Vec<f64> {
    let n = shape.len();
    debug_assert_eq!(
        shape.iter().try_fold(1usize, |a, &x| a.checked_mul(x)),
        Some(data.len())
    );
    if data.is_empty() {
        return Vec::new();
    }
    let mut out = vec![0.0; data.len()];
    let mut idx = vec![0usize; n];
    for (c_pos, slot) in out.iter_mut().enumerate() {
        // idx is the multi-index of c_pos in C order.
        let mut f_pos = 0;
        let mut stride = 1;
        for k in 0..n {
            f_pos += idx[k] * stride;
            stride *= shape[k];
        }
        *slot = data[f_pos];
        let _ = c_pos;
        for k in (0..n).rev() {
            idx[k] += 1;
            if idx[k] < shape[k] {
                break;
            }
            idx[k] = 0;
        }
    }
    out
}

/// NaN-tolerant `f64` fields in JSON: a non-finite value is written as `null` and `null`
/// is read back as NaN (`#[serde(with = "crate::io::nullable")]`).
pub mod nullable {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        if x.is_finite() {
            s.serialize_f64(*x)
        } else {
            s.serialize_none()
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header claiming 2^61 rows over an empty body: 2^61 x 8 bytes wraps to 0, which
    /// matched the empty body before the product was checked.
    #[test]
    fn headers_whose_size_overflows_are_refused() {
        let dir = std::env::temp_dir().join(format!("reslim-io-huge-{}", std::process::id()));
        let p = dir.join("huge.npy");
        let mut bytes = npy_bytes::<f64>(&[0], &[]);
        let text = String::from_utf8_lossy(&bytes[10..]).replace("(0,)", "(2305843009213693952,)");
        bytes.truncate(8);
        bytes.extend_from_slice(&(text.len() as u16).to_le_bytes());
        bytes.extend_from_slice(text.as_bytes());
        atomic_write(&p, &bytes).unwrap();
        let e = read_npy(&p).unwrap_err().to_string();
        assert!(e.contains("huge.npy") && e.contains("overflows"), "{e}");
        let e = npy_shape(&p).unwrap_err().to_string();
        assert!(e.contains("overflows"), "{e}");
        // A header whose shape fits but whose body is short.
        write_npy(&p, &[3, 2], &[1.0; 6]).unwrap();
        assert_eq!(npy_shape(&p).unwrap(), vec![3, 2]);
        let mut short = fs::read(&p).unwrap();
        short.truncate(short.len() - 8);
        atomic_write(&p, &short).unwrap();
        assert!(npy_shape(&p).unwrap_err().to_string().contains("needs 48"));
        assert!(fortran_to_c(&[0, 5], &[]).is_empty());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn npy_round_trip() {
        let dir = std::env::temp_dir().join(format!("reslim-io-{}", std::process::id()));
        let p = dir.join("a.npy");
        let data: Vec<f64> = (0..24).map(|i| i as f64 * 0.5 - 3.0).collect();
        write_npy(&p, &[2, 3, 4], &data).unwrap();
        let back = read_npy(&p).unwrap();
        assert_eq!(back.shape, vec![2, 3, 4]);
        assert_eq!(back.data, data);
        assert!(read_npy_shaped(&p, &[4, 3, 2]).is_err());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn fortran_order_is_transposed() {
        // 2x3 matrix [[0,1,2],[3,4,5]] stored column-major is 0,3,1,4,2,5.
        let c = fortran_to_c(&[2, 3], &[0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        assert_eq!(c, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    }

    /// Writes an NPY file with a hand-made header, for malformed-header tests.
    fn with_header(p: &Path, header: &str, body: &[u8]) {
        let mut h = header.to_string();
        while !(10 + h.len() + 1).is_multiple_of(64) {
            h.push(' ');
        }
        h.push('\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(h.len() as u16).to_le_bytes());
        bytes.extend_from_slice(h.as_bytes());
        bytes.extend_from_slice(body);
        atomic_write(p, &bytes).unwrap();
    }

    #[test]
    fn fortran_order_must_be_a_python_bool_literal() {
        let dir = std::env::temp_dir().join(format!("reslim-io-fo-{}", std::process::id()));
        let body: Vec<u8> = [0.0f64, 3.0, 1.0, 4.0, 2.0, 5.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let p = dir.join("f.npy");
        with_header(
            &p,
            "{'descr': '<f8', 'fortran_order': True, 'shape': (2, 3), }",
            &body,
        );
        assert_eq!(
            read_npy(&p).unwrap().data,
            vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
        );
        with_header(
            &p,
            "{'descr': '<f8', 'fortran_order':False,'shape': (2, 3), }",
            &body,
        );
        assert_eq!(
            read_npy(&p).unwrap().data,
            vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]
        );
        for bad in ["'True'", "true", "1", "Truely", "None"] {
            let q = dir.join("quoted.npy");
            with_header(
                &q,
                &format!("{{'descr': '<f8', 'fortran_order': {bad}, 'shape': (2, 3), }}"),
                &body,
            );
            let e = read_npy(&q).unwrap_err().to_string();
            assert!(
                e.contains("quoted.npy") && e.contains("fortran_order") && e.contains(bad),
                "{bad}: {e}"
            );
        }
        let q = dir.join("missing.npy");
        with_header(&q, "{'descr': '<f8', 'shape': (2, 3), }", &body);
        let e = read_npy(&q).unwrap_err().to_string();
        assert!(
            e.contains("missing.npy") && e.contains("fortran_order"),
            "{e}"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_files_name_the_path() {
        let dir = std::env::temp_dir().join(format!("reslim-io-bad-{}", std::process::id()));
        let p = dir.join("junk.npy");
        atomic_write(&p, b"not an npy file").unwrap();
        let e = read_npy(&p).unwrap_err().to_string();
        assert!(e.contains("junk.npy") && e.contains("magic"), "{e}");
        let e = read_npy(&dir.join("missing.npy")).unwrap_err().to_string();
        assert!(e.contains("missing.npy"), "{e}");
        let _ = fs::remove_dir_all(&dir);
    }
}
