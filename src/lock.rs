//! The single-instance lock: one process at a time writes the store.
//!
//! An advisory lock on `<store>.lock`, holding the owner's pid so the loser
//! can name it. The kernel releases the lock when the process dies, so a
//! crash never leaves a stale lock behind.
//!
//! On Linux it is an open-file-description record lock (`F_OFD_SETLK`),
//! which can be *queried* (`F_OFD_GETLK`) without being taken: `status`
//! asks who holds the store without ever holding it, so it can neither make
//! a starting daemon fail nor needs write access to the lock file.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::exit::ExitCode;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("store {} is in use by another referral-sync process (pid {pid}); stop it or use it (`referral-sync resync` talks to a running daemon)", store.display())]
    Held { store: PathBuf, pid: String },
    #[error("lock file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl LockError {
    /// The code a command that cannot take the lock exits with.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            LockError::Held { .. } => ExitCode::Locked,
            LockError::Io { .. } => ExitCode::Runtime,
        }
    }
}

/// Held for as long as the value lives.
#[derive(Debug)]
pub struct StoreLock {
    file: File,
    path: PathBuf,
}

/// The lock file that guards `store`: beside the store file itself, found
/// through every symbolic link, so that any path to one store meets one lock.
pub fn lock_path(store: &Path) -> PathBuf {
    let mut name = canonical_store(store).into_os_string();
    name.push(".lock");
    PathBuf::from(name)
}

/// `store` with symbolic links resolved: the file itself when it exists,
/// else its folder resolved and the name kept.
fn canonical_store(store: &Path) -> PathBuf {
    if let Ok(path) = std::fs::canonicalize(store) {
        return path;
    }
    let name = store.file_name();
    let parent = store
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    match (std::fs::canonicalize(parent), name) {
        (Ok(dir), Some(name)) => dir.join(name),
        _ => store.to_owned(),
    }
}

/// How long a loser waits for a winner that has the lock but has not
/// written its pid yet.
const PID_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

impl StoreLock {
    /// Take the lock or say who holds it.
    pub fn acquire(store: &Path) -> Result<StoreLock, LockError> {
        if let Some(dir) = store.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| LockError::Io {
                path: dir.to_owned(),
                source,
            })?;
        }
        let path = lock_path(store);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match os::try_lock(&file) {
            Ok(true) => {}
            Ok(false) => {
                return Err(LockError::Held {
                    store: store.to_owned(),
                    pid: read_pid_patiently(&mut file).unwrap_or_else(|| "unknown".to_owned()),
                });
            }
            Err(source) => return Err(io(source)),
        }
        // One write of the whole line: a reader sees the old pid, no pid
        // (and waits), or the new one, never a part of it.
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(format!("{}\n", std::process::id()).as_bytes())
            .map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(StoreLock { file, path })
    }

    /// The pid of the process holding the lock on `store`, if any. Never
    /// takes the lock itself.
    pub fn holder(store: &Path) -> Option<String> {
        let mut file = OpenOptions::new().read(true).open(lock_path(store)).ok()?;
        match os::is_locked(&file) {
            Ok(true) => Some(read_pid_patiently(&mut file).unwrap_or_else(|| "unknown".to_owned())),
            Ok(false) | Err(_) => None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for StoreLock {
    fn drop(&mut self) {
        os::unlock(&self.file);
    }
}

#[cfg(target_os = "linux")]
mod os {
    use std::fs::File;
    use std::os::fd::AsRawFd;

    fn whole_file(kind: libc::c_short) -> libc::flock {
        // SAFETY: `flock` is a plain C struct; all-zero is a valid value.
        let mut lock: libc::flock = unsafe { std::mem::zeroed() };
        lock.l_type = kind;
        lock.l_whence = libc::SEEK_SET as libc::c_short;
        lock.l_start = 0;
        lock.l_len = 0; // to the end of the file, however long
        lock
    }

    /// Take the write lock; `false` when someone else holds it.
    pub fn try_lock(file: &File) -> std::io::Result<bool> {
        let lock = whole_file(libc::F_WRLCK as libc::c_short);
        // SAFETY: a valid descriptor and a valid `flock` for the call.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &lock) } == 0 {
            return Ok(true);
        }
        let error = std::io::Error::last_os_error();
        match error.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(false),
            _ => Err(error),
        }
    }

    /// Whether any process holds a lock on the file; takes nothing.
    pub fn is_locked(file: &File) -> std::io::Result<bool> {
        let mut lock = whole_file(libc::F_WRLCK as libc::c_short);
        // SAFETY: a valid descriptor and a valid `flock` the call fills in.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut lock) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(lock.l_type != libc::F_UNLCK as libc::c_short)
    }

    pub fn unlock(file: &File) {
        let lock = whole_file(libc::F_UNLCK as libc::c_short);
        // SAFETY: as above. Closing the file releases the lock anyway.
        unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &lock) };
    }
}

#[cfg(not(target_os = "linux"))]
mod os {
    use std::fs::File;

    pub fn try_lock(file: &File) -> std::io::Result<bool> {
        match file.try_lock() {
            Ok(()) => Ok(true),
            Err(std::fs::TryLockError::WouldBlock) => Ok(false),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }

    /// Without a query, a shared lock tried and dropped at once.
    pub fn is_locked(file: &File) -> std::io::Result<bool> {
        match file.try_lock_shared() {
            Ok(()) => {
                let _ = file.unlock();
                Ok(false)
            }
            Err(std::fs::TryLockError::WouldBlock) => Ok(true),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }

    pub fn unlock(file: &File) {
        let _ = file.unlock();
    }
}

fn read_pid(file: &mut File) -> Option<String> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut text).ok()?;
    // A complete line only: the holder writes `pid\n` in one write.
    let (pid, _) = text.split_once('\n')?;
    let pid = pid.trim();
    (!pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())).then(|| pid.to_owned())
}

/// The holder's pid, waiting a moment for a holder that took the lock an
/// instant ago and is writing it.
fn read_pid_patiently(file: &mut File) -> Option<String> {
    let deadline = std::time::Instant::now() + PID_PATIENCE;
    loop {
        if let Some(pid) = read_pid(file) {
            return Some(pid);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_acquire_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("s.db");
        let lock = StoreLock::acquire(&store).unwrap();
        assert_eq!(
            StoreLock::holder(&store),
            Some(std::process::id().to_string())
        );
        let err = StoreLock::acquire(&store).unwrap_err().to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(lock);
        assert_eq!(StoreLock::holder(&store), None);
        StoreLock::acquire(&store).unwrap();
    }

    #[test]
    fn every_path_to_one_store_meets_one_lock() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let store = real.join("s.db");
        std::fs::write(&store, b"").unwrap();
        let via_file_link = dir.path().join("link.db");
        std::os::unix::fs::symlink(&store, &via_file_link).unwrap();
        let via_dir_link = dir.path().join("dirlink");
        std::os::unix::fs::symlink(&real, &via_dir_link).unwrap();
        let dotted = real.join(".").join("s.db");

        let lock = StoreLock::acquire(&store).unwrap();
        for other in [&via_file_link, &via_dir_link.join("s.db"), &dotted] {
            let err = StoreLock::acquire(other).unwrap_err().to_string();
            assert!(
                err.contains(&format!("pid {}", std::process::id())),
                "{}: {err}",
                other.display()
            );
            assert_eq!(
                StoreLock::holder(other),
                Some(std::process::id().to_string())
            );
        }
        drop(lock);
        // A store not created yet: its folder is resolved.
        let fresh = via_dir_link.join("new.db");
        let _held = StoreLock::acquire(&fresh).unwrap();
        assert!(StoreLock::acquire(&real.join("new.db")).is_err());
    }

    #[test]
    fn a_loser_waits_for_the_pid_of_a_holder_still_writing_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("s.db");
        let lock = StoreLock::acquire(&store).unwrap();
        // The holder's line as it is before its write lands: empty.
        std::fs::write(lock.path(), b"").unwrap();
        let path = lock.path().to_owned();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(100));
            std::fs::write(path, b"4242\n").unwrap();
        });
        let err = StoreLock::acquire(&store).unwrap_err().to_string();
        writer.join().unwrap();
        assert!(err.contains("pid 4242"), "{err}");
    }
}
