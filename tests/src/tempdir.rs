//! A temporary directory named after the test, removed when the guard drops.

use std::path::{Path, PathBuf};

pub struct TempDir(PathBuf);

// === impl TempDir ===

impl TempDir {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(crate::unique_name(name));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `file` in the directory (replacing it whole, as an editor's save by rename).
    pub fn write(&self, file: &str, text: &str) {
        let tmp = self.0.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("{}: {e}", tmp.display()));
        std::fs::rename(&tmp, self.0.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
