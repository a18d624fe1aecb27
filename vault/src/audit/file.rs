//! Where a `file` device writes: a file opened for append (created with mode 0600), standard
//! output (`file_path` = `stdout`), or nowhere (`discard`), as Vault's `file` device offers.
//!
//! The file is opened again for every entry, under the device's lock: a rotated log (moved
//! away by logrotate) is recreated at once without a signal, and a file that can no longer be
//! written (its disk full, its directory gone or read-only) fails that very entry, so the
//! request is refused rather than run unlogged. Each entry is one `write` of one line, then
//! `fdatasync` on a regular file: an entry reported written is on disk. The open costs far less
//! than the sync.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Mutex;

/// The mode a new audit file is created with, and an existing one is set to at enable: only
/// ferry-vault's user may read what requests were made.
const FILE_MODE: u32 = 0o600;

/// A `file` device's destination.
#[derive(Debug)]
pub enum Sink {
    File { path: PathBuf, lock: Mutex<()> },
    Stdout,
    Discard,
}

impl Sink {
    /// The sink `file_path` names; an error message for a path that cannot be one.
    pub fn new(file_path: &str) -> Result<Self, String> {
        match file_path {
            "stdout" => Ok(Self::Stdout),
            "discard" => Ok(Self::Discard),
            "" => Err("missing file_path".into()),
            path if !path.starts_with('/') => Err(format!(
                "file_path {path:?} must be absolute (or \"stdout\" or \"discard\")"
            )),
            path => Ok(Self::File {
                path: PathBuf::from(path),
                lock: Mutex::new(()),
            }),
        }
    }

    /// Checks, when the device is enabled, that the file can be opened for append: creates it
    /// with mode 0600, or sets an existing regular file to 0600.
    pub fn check(&self) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let Self::File { path, .. } = self else {
            return Ok(());
        };
        let file = open(path)?;
        if file.metadata()?.is_file() {
            file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
        }
        Ok(())
    }

    /// Appends `line` (one entry, ending with a newline); blocks on the file system.
    pub fn write_line(&self, line: &[u8]) -> std::io::Result<()> {
        match self {
            Self::File { path, lock } => {
                let _one_at_a_time = lock.lock().unwrap_or_else(|e| e.into_inner());
                let mut file = open(path)?;
                file.write_all(line)?;
                if file.metadata()?.is_file() {
                    file.sync_data()?;
                }
                Ok(())
            }
            Self::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(line)?;
                out.flush()
            }
            Self::Discard => Ok(()),
        }
    }
}

fn open(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(FILE_MODE)
        .open(path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "ferry-audit-{}-{}",
            std::process::id(),
            crate::token::random_hex(4)
        ));
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        dir.join(name)
    }

    #[test]
    fn entries_are_appended_to_a_file_created_owner_only() {
        let path = scratch("audit.log");
        let sink = Sink::new(path.to_str().expect("utf-8")).expect("a sink");
        sink.check().expect("opens");
        sink.write_line(b"{\"a\":1}\n").expect("written");
        sink.write_line(b"{\"b\":2}\n").expect("written");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "{\"a\":1}\n{\"b\":2}\n"
        );
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_dir_all(path.parent().expect("a dir")).expect("cleaned");
    }

    #[test]
    fn a_full_device_fails_the_write() {
        let sink = Sink::new("/dev/full").expect("a sink");
        sink.check().expect("/dev/full opens for append");
        let error = sink.write_line(b"{}\n").expect_err("ENOSPC");
        assert_eq!(error.raw_os_error(), Some(28), "{error}");
    }

    #[test]
    fn relative_and_empty_paths_are_refused() {
        assert!(Sink::new("audit.log").is_err());
        assert!(Sink::new("").is_err());
        assert!(matches!(Sink::new("stdout"), Ok(Sink::Stdout)));
        assert!(matches!(Sink::new("discard"), Ok(Sink::Discard)));
    }
}
