//! The JSON-lines metrics log: one line per run, appended, so runs compare over time.

use std::io::Write;
use std::path::Path;

/// Default metrics log path, relative to the working directory.
pub const DEFAULT_LOG: &str = "logs/patterns/metrics.jsonl";

/// Append one JSON value as a line to `path`, creating parent directories.
pub fn append(path: &Path, value: &serde_json::Value) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)?;
        }
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let mut line = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    line.push(b'\n');
    f.write_all(&line)
}
