//! Log output captured in memory, for tests of what the log says.

// Test code: a poisoned lock or invalid UTF-8 is a failed test.
#![allow(clippy::unwrap_used)]

use std::io;
use std::sync::{Arc, Mutex};

/// A writer for tracing's formatter that keeps everything written; clones
/// share one buffer, so a test keeps one and hands the formatter another.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
