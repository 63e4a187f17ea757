//! The crate's error type. Every user error maps to exit code 2; nothing panics on bad input.

use std::path::{Path, PathBuf};

/// Everything that can go wrong in toparch.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input from the user: a spec, a flag, a weights file, an image. Exit code 2.
    #[error("{0}")]
    Input(String),
    /// A file could not be read or written. Exit code 2.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
}

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A user error with a message that names the file, line, key or tensor concerned.
    pub fn input(message: impl Into<String>) -> Self {
        Error::Input(message.into())
    }

    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io { path: path.to_path_buf(), source }
    }
}

/// Writes `bytes` to `path` atomically: to a temporary sibling first, then renamed,
/// so a failed run never leaves a half-written output file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let file_name = path.file_name().ok_or_else(|| Error::input(format!("{}: not a file path", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let written = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    written.map_err(|e| {
        // Nothing half-written stays behind, whichever step failed.
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}
