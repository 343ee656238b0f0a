//! Config errors that point at the exact place in the file: `FILE:LINE:COL: message`.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

/// One problem in a config file, located by line and column (both 1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.col, self.message
        )
    }
}

/// Every message is complete in itself (`{e}` and `{e:#}` print the same): the OS error
/// is part of the message, not a `source` that anyhow would print a second time.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read config: {err}", path.display())]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{}: cannot read config: it is {kind}, not a regular file (-c names a TOML file)", path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{}: cannot read config: {}, more than symroute reads ({} MiB)", path.display(), match size { Some(n) => format!("{n} bytes"), None => "it is larger".to_string() }, super::MAX_BYTES / (1024 * 1024))]
    TooLarge { path: PathBuf, size: Option<u64> },
    #[error("{}: refusing this config: its on_change hooks run as root, but {why}", path.display())]
    Untrusted { path: PathBuf, why: String },
    #[error("{}", render(.0))]
    Invalid(Vec<Diagnostic>),
}

fn render(diags: &[Diagnostic]) -> String {
    diags
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Turns byte spans into line/column diagnostics for one file.
pub struct Locator<'a> {
    file: &'a str,
    text: &'a str,
    pub diags: Vec<Diagnostic>,
}

impl<'a> Locator<'a> {
    pub fn new(file: &'a str, text: &'a str) -> Self {
        Self {
            file,
            text,
            diags: Vec::new(),
        }
    }

    pub fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, col) = line_col(self.text, span.start);
        self.diags.push(Diagnostic {
            file: self.file.to_string(),
            line,
            col,
            message: message.into(),
        });
    }

    /// The 1-based line of a byte offset, to name an earlier place in a message.
    pub fn line(&self, offset: usize) -> usize {
        line_col(self.text, offset).0
    }
}

/// 1-based line and column (in characters) of a byte offset; clamps out-of-range offsets.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::line_col;

    #[test]
    fn line_col_counts_from_one() {
        let t = "a\nbc\né x";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 3), (2, 2));
        assert_eq!(line_col(t, 8), (3, 3));
        assert_eq!(line_col(t, 999), (3, 4));
    }
}
