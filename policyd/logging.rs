//! How policyd writes its log: `text`, one line of `key=value` fields per
//! event (the default, for people and grep), or `json`, one JSON object per
//! line with typed fields (for journald's exporters, log shippers and tests).
//!
//! Both carry the same events under the same field names. In text, a value
//! is written bare when it is one word and quoted with escapes otherwise, so
//! that a line splits unambiguously on spaces. In JSON, every object has
//! `level` and `message`; the rest are the event's fields. OOM decisions are
//! the exception to "same fields": [`crate::events`] writes them itself,
//! with sizes in bytes rather than "300MiB" (see `DecisionLine`).
//!
//! Under systemd, `policyd load` logs to the journal instead, with the same
//! text as `MESSAGE` and the fields as journal fields ([`crate::journal`]).

use std::fmt::{self, Write as _};

use clap::ValueEnum;
use tracing::field::{Field, Visit};
use tracing::Subscriber;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FormatFields, MakeWriter};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// `INFO decision policy=priority ... summary="killed ..."`
    #[default]
    Text,
    /// `{"level":"INFO","message":"decision","policy":"priority",...}`
    Json,
    /// Native journal entries; chosen by policyd itself when its stderr is
    /// the journal, never on the command line.
    #[value(skip)]
    Journal,
}

/// The subscriber `policyd` logs through, writing to `writer`. `ansi` colours
/// the level in text (for a terminal).
pub fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
    ansi: bool,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    // journald (or the terminal) already knows when a line was written.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .without_time()
        .with_target(false)
        .with_writer(writer);
    match format {
        // The journal has a subscriber of its own (crate::journal, which
        // formats its MESSAGE with this module's text): main picks it.
        LogFormat::Text | LogFormat::Journal => {
            Box::new(builder.with_ansi(ansi).fmt_fields(TextFields).finish())
        }
        LogFormat::Json => Box::new(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .finish(),
        ),
    }
}

/// `message key=value ...` as the text log writes it, for the journal's
/// `MESSAGE`.
pub(crate) fn text_line(message: &str, fields: &[(&str, &str)]) -> String {
    let mut line = message.to_owned();
    for (name, value) in fields {
        if !line.is_empty() {
            line.push(' ');
        }
        let _ = write!(line, "{name}={}", Word(value));
    }
    line
}

/// The message, then `key=value` for each field.
struct TextFields;

impl<'w> FormatFields<'w> for TextFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = TextVisitor {
            writer: &mut writer,
            result: Ok(()),
            first: true,
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct TextVisitor<'a, 'w> {
    writer: &'a mut Writer<'w>,
    result: fmt::Result,
    first: bool,
}

impl TextVisitor<'_, '_> {
    fn field(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        let sep = if self.first { "" } else { " " };
        self.first = false;
        self.result = if field.name() == "message" {
            write!(self.writer, "{sep}{value}")
        } else {
            write!(self.writer, "{sep}{}={}", field.name(), Word(value))
        };
    }
}

impl Visit for TextVisitor<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.field(field, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%x` fields arrive here as their Display text.
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        self.field(field, &text);
    }
}

/// A text value: bare when it is one word, otherwise quoted with escapes.
struct Word<'a>(&'a str);

impl fmt::Display for Word<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        if s.is_empty() {
            f.write_str("\"\"")
        } else if s
            .chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '=' || c.is_control())
        {
            write!(f, "{s:?}")
        } else {
            f.write_str(s)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    /// What `f` logs at info level and above, formatted as by `policyd load
    /// --log-format FORMAT`.
    pub(crate) fn logged_by(format: LogFormat, f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = subscriber(
            format,
            EnvFilter::new("info"),
            move || writer.clone(),
            false,
        );
        tracing::subscriber::with_default(subscriber, f);
        let out = buf.0.lock().unwrap().clone();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn values_are_quoted_only_when_needed() {
        assert_eq!(Word("job2").to_string(), "job2");
        assert_eq!(Word("my job").to_string(), "\"my job\"");
        assert_eq!(Word("a=b").to_string(), "\"a=b\"");
        assert_eq!(Word("").to_string(), "\"\"");
        assert_eq!(Word("x\"y").to_string(), "\"x\\\"y\"");
    }

    #[test]
    fn one_event_in_both_formats() {
        let event = || {
            let path = "/a b";
            tracing::info!(cgroup = %path, rules = 2, dry_run = false, "attached");
            tracing::debug!("not at info level");
        };
        assert_eq!(
            logged_by(LogFormat::Text, event),
            " INFO attached cgroup=\"/a b\" rules=2 dry_run=false\n"
        );
        let json = logged_by(LogFormat::Json, event);
        let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
        assert_eq!(json.lines().count(), 1, "{json}");
        assert_eq!(
            v,
            serde_json::json!({"level": "INFO", "message": "attached", "cgroup": "/a b",
                               "rules": 2, "dry_run": false})
        );
    }
}
