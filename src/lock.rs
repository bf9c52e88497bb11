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

/// Held for as long as the value lives.
#[derive(Debug)]
pub struct StoreLock {
    file: File,
    path: PathBuf,
}

/// The lock file that guards `store`.
pub fn lock_path(store: &Path) -> PathBuf {
    let mut name = store.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

impl StoreLock {
    /// Take the lock or say who holds it.
    pub fn acquire(store: &Path) -> Result<StoreLock, LockError> {
        let path = lock_path(store);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
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
                    pid: read_pid(&mut file).unwrap_or_else(|| "unknown".to_owned()),
                });
            }
            Err(source) => return Err(io(source)),
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(StoreLock { file, path })
    }

    /// The pid of the process holding the lock on `store`, if any. Never
    /// takes the lock itself.
    pub fn holder(store: &Path) -> Option<String> {
        let mut file = OpenOptions::new().read(true).open(lock_path(store)).ok()?;
        match os::is_locked(&file) {
            Ok(true) => Some(read_pid(&mut file).unwrap_or_else(|| "unknown".to_owned())),
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
    let pid = text.trim();
    (!pid.is_empty()).then(|| pid.to_owned())
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
}
