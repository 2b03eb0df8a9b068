//! Log output for the shippy binaries.
//!
//! Log lines carry text from outside: ids and messages from callers, keys
//! and records from etcd. In the text format every field value, span
//! field (such as a call's `request_id`) and message is written with its
//! control characters escaped (`\n`, `\r`, `\u{1b}`, …), so no value can
//! end a line and forge the next one, or send escape sequences to the
//! terminal an operator reads the log in. The JSON format escapes them as
//! JSON requires.

use std::fmt;
use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::{DefaultFields, Writer};

use crate::log_writer::{BatchedStderr, FlushOnDrop};

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines, coloured only on a terminal.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Sends logs to stderr in `format`. `RUST_LOG` sets the filter; without it,
/// shippy's own crates log at info and everything else at warn.
///
/// Lines are written in batches by a background thread
/// ([`crate::log_writer`]), so a call pays neither for the write nor for
/// waking that thread; no line is dropped. Keep the returned guard until
/// exit: dropping it writes what is still buffered.
pub fn init(format: LogFormat) -> std::io::Result<FlushOnDrop> {
    let (writer, guard) = BatchedStderr::start()?;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(
            "warn,shippy_registry=info,shippy_server=info,shippy_client=info,vessel_service=info,consignment_service=info",
        )
    });
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => logs
            .fmt_fields(EscapedFields::default())
            .with_ansi(std::io::stderr().is_terminal())
            .init(),
        // Event fields at the top level, and every enclosing span under
        // "spans", outermost first, so the call's request_id is on each line.
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .init(),
    }
    Ok(guard)
}

/// The text format's fields (`name=value`, the message bare), as
/// tracing-subscriber writes them, with control characters escaped. Used
/// for both events and spans, so it covers span fields too.
///
/// Field names are not styled on a terminal: the escaping would escape the
/// styling as well. Levels, span names and timestamps still are.
#[derive(Debug, Default)]
pub struct EscapedFields {
    fields: DefaultFields,
}

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut escaping = Escaping { out: &mut writer };
        self.fields
            .format_fields(Writer::new(&mut escaping), fields)
    }
}

/// Writes what it is given to `out` with control characters escaped.
struct Escaping<'a, 'w> {
    out: &'a mut Writer<'w>,
}

impl fmt::Write for Escaping<'_, '_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let mut rest = text;
        while let Some((at, c)) = rest.char_indices().find(|(_, c)| needs_escape(*c)) {
            self.out.write_str(&rest[..at])?;
            write!(self.out, "{}", c.escape_debug())?;
            rest = &rest[at + c.len_utf8()..];
        }
        self.out.write_str(rest)
    }
}

/// Control characters (C0, DEL, C1) and the Unicode line and paragraph
/// separators, which some viewers also break lines at.
fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

#[cfg(test)]
mod tests {
    use tracing::{info, info_span};

    use super::*;
    use crate::captured_log::Captured;

    /// What the text format writes for one event, logged inside a span
    /// the way a served call is.
    fn text_log_of(ansi: bool) -> String {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(EscapedFields::default())
            .with_ansi(ansi)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let forged = "\n2026-01-01T00:00:00.000000Z  INFO forged: call handled";
            let span = info_span!("call", request_id = %format!("r1{forged}"));
            let _entered = span.enter();
            info!(
                id = %format!("c1{forged}"),
                debug = ?"tab\there",
                carriage = %"over\rwritten",
                "created \u{1b}]0;retitled\u{7} \u{9b}2J\u{7f} {}",
                "line\u{2028}break"
            );
        });
        captured.text()
    }

    #[test]
    fn text_lines_escape_control_characters_in_fields_spans_and_messages() {
        for ansi in [false, true] {
            let log = text_log_of(ansi);
            let line = log.strip_suffix('\n').unwrap();
            assert!(!line.contains('\n'), "{log}");
            assert!(!line.contains('\r') && !line.contains('\u{7}'), "{log:?}");
            assert!(
                !line.contains('\u{9b}') && !line.contains('\u{7f}'),
                "{log:?}"
            );
            assert!(!line.contains('\u{2028}'), "{log:?}");
            assert!(line.contains(r"request_id=r1\n2026-01-01T"), "{log}");
            assert!(line.contains(r"id=c1\n2026-01-01T"), "{log}");
            assert!(line.contains(r"carriage=over\rwritten"), "{log}");
            assert!(line.contains(r"line\u{2028}break"), "{log}");
            if !ansi {
                // With styling off, nothing in the line is a raw escape.
                assert!(!line.contains('\u{1b}'), "{log:?}");
                assert!(line.contains("]0;retitled"), "{log}");
            }
        }
    }
}
