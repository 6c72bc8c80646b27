//! Where verdicts go. One module per format; each escapes kernel strings its own way.

pub mod json;
pub mod text;

use std::io::Write;

use anyhow::Result;

use crate::verdict::Verdict;

pub trait Sink {
    fn emit(&mut self, verdict: &Verdict) -> Result<()>;
}

/// Writes whole lines to standard output and flushes each, so a pipe reader sees verdicts as
/// they happen.
pub struct Stdout {
    format: Format,
}

pub enum Format {
    Text { verbose: bool },
    Json,
}

impl Stdout {
    pub fn new(format: Format) -> Self {
        Self { format }
    }
}

impl Sink for Stdout {
    fn emit(&mut self, verdict: &Verdict) -> Result<()> {
        let line = match self.format {
            Format::Text { verbose } => text::render(verdict, verbose),
            Format::Json => json::render(verdict)?,
        };
        let mut out = std::io::stdout().lock();
        out.write_all(&line)?;
        out.flush()?;
        Ok(())
    }
}
