//! Logging to systemd's journal with structured fields, for `policyd load`
//! run as a service.
//!
//! When stdout/stderr go to the journal (systemd says so in `JOURNAL_STREAM`,
//! which must match stderr, see [`connected`]), policyd sends each event
//! through journald's native protocol instead of as a line of text:
//!
//! * `PRIORITY` from the level: error → err (3), warn → warning (4), info →
//!   notice (5), debug → info (6), trace → debug (7), so that OOM decisions
//!   (info) stand out from journald's default info;
//! * `MESSAGE`: the same `message key=value ...` line the text log has, so
//!   `journalctl -u policyd` reads as `policyd load` does in a terminal;
//! * every field as `POLICYD_<NAME>` (`POLICYD_RULES=12`);
//! * OOM decisions carry [`DECISION_MESSAGE_ID`] as `MESSAGE_ID` and
//!   `POLICYD_VICTIM_CGROUP`, `POLICYD_VICTIM_PID`, `POLICYD_REASON`,
//!   `POLICYD_OUTCOME` and more (see `events.rs`): their `MESSAGE` is the
//!   decision's one-sentence summary, the fields are for queries such as
//!   `journalctl -u policyd MESSAGE_ID=32960256ad224caa8440fe9d4168f2d7`.

use std::fmt::{self, Write as _};

use libsystemd::logging::Priority;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::{EnvFilter, Layer};

use crate::logging;

/// `MESSAGE_ID` of every OOM decision. Stable: scripts and journal
/// catalogs select decisions by it; never change it.
pub const DECISION_MESSAGE_ID: &str = "32960256ad224caa8440fe9d4168f2d7";

/// `MESSAGE_ID` of every OOM kill the daemon logs that its handler did
/// not decide (see `kills.rs`). Stable, as [`DECISION_MESSAGE_ID`].
pub const KILL_MESSAGE_ID: &str = "39af60b22bb64bdd95cfbde0703de372";

/// The tracing field that becomes `MESSAGE_ID` rather than a `POLICYD_` field.
pub const MESSAGE_ID_FIELD: &str = "message_id";

/// Whether stderr is systemd's journal stream (`JOURNAL_STREAM` names its
/// device and inode): policyd then logs natively to the journal. A service
/// whose output is redirected elsewhere (`StandardError=file:...`), or a
/// shell that inherited `JOURNAL_STREAM` from one, keeps the text log.
pub fn connected() -> bool {
    libsystemd::logging::connected_to_journal()
}

/// The subscriber `policyd load` logs through when [`connected`].
pub fn subscriber(filter: EnvFilter) -> Box<dyn Subscriber + Send + Sync> {
    Box::new(
        tracing_subscriber::registry()
            .with(filter)
            .with(JournalLayer),
    )
}

/// One journal entry, before it is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The event's level: [`priority`] gives the journal's `PRIORITY`.
    pub level: Level,
    pub message: String,
    /// Journal field names (upper case) and values, in the event's order.
    pub fields: Vec<(String, String)>,
}

/// The journal entry of `event`.
pub fn entry(event: &Event<'_>) -> Entry {
    let mut visitor = Fields::default();
    event.record(&mut visitor);
    let message_id = visitor
        .fields
        .iter()
        .position(|(name, _)| name == MESSAGE_ID_FIELD)
        .map(|i| visitor.fields.remove(i).1);
    // A catalogued event's message says it all; its fields are for queries.
    let message = if message_id.is_some() {
        visitor.message
    } else {
        let pairs: Vec<(&str, &str)> = visitor
            .fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        logging::text_line(&visitor.message, &pairs)
    };
    let mut fields = vec![("SYSLOG_IDENTIFIER".to_owned(), "policyd".to_owned())];
    if let Some(id) = message_id {
        fields.push(("MESSAGE_ID".to_owned(), id));
    }
    fields.extend(
        visitor
            .fields
            .into_iter()
            .map(|(name, value)| (field_name(&name), value)),
    );
    Entry {
        level: *event.metadata().level(),
        message,
        fields,
    }
}

/// The journal's `PRIORITY` for a tracing level.
pub fn priority(level: Level) -> Priority {
    match level {
        Level::ERROR => Priority::Error,
        Level::WARN => Priority::Warning,
        Level::INFO => Priority::Notice,
        Level::DEBUG => Priority::Info,
        Level::TRACE => Priority::Debug,
    }
}

/// `victim_pid` → `POLICYD_VICTIM_PID`: journald accepts upper-case ASCII
/// letters, digits and `_`; the prefix keeps ours apart from its own.
fn field_name(name: &str) -> String {
    let mut out = String::from("POLICYD_");
    out.extend(name.chars().map(|c| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_uppercase()
        } else {
            '_'
        }
    }));
    out
}

#[derive(Default)]
struct Fields {
    message: String,
    fields: Vec<(String, String)>,
}

impl Fields {
    fn field(&mut self, field: &Field, value: String) {
        if field.name() == "message" {
            self.message = value;
        } else {
            self.fields.push((field.name().to_owned(), value));
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.field(field, value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        self.field(field, text);
    }
}

/// Sends every event to the journal; an entry the journal does not take
/// goes to stderr as text, so that nothing is lost silently.
struct JournalLayer;

impl<S: Subscriber> Layer<S> for JournalLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let e = entry(event);
        let fields = e.fields.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        if let Err(err) = libsystemd::logging::journal_send(priority(e.level), &e.message, fields) {
            eprintln!("{} (journal: {err})", e.message);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// The entries `f` logs, as the journal layer would send them.
    pub(crate) fn entries_of(f: impl FnOnce()) -> Vec<Entry> {
        struct Capture(Arc<Mutex<Vec<Entry>>>);
        impl<S: Subscriber> Layer<S> for Capture {
            fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
                self.0.lock().unwrap().push(entry(event));
            }
        }
        let out = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry()
            .with(EnvFilter::new("info"))
            .with(Capture(out.clone()));
        tracing::subscriber::with_default(subscriber, f);
        // Not Arc::try_unwrap: while another test thread registers a
        // callsite, tracing holds every live dispatcher for a moment, ours too.
        let mut entries = out.lock().unwrap();
        std::mem::take(&mut *entries)
    }

    fn field<'a>(e: &'a Entry, name: &str) -> Option<&'a str> {
        e.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn fields_are_prefixed_and_the_message_reads_like_text() {
        let entries = entries_of(|| {
            tracing::info!(cgroup = %"/a b", rules = 2, dry_run = false, "attached");
            tracing::error!("the config is invalid");
            tracing::debug!("filtered out");
        });
        assert_eq!(entries.len(), 2, "{entries:?}");
        let attached = &entries[0];
        assert_eq!(u8::from(priority(attached.level)), 5);
        assert_eq!(
            attached.message,
            "attached cgroup=\"/a b\" rules=2 dry_run=false"
        );
        assert_eq!(field(attached, "POLICYD_CGROUP"), Some("/a b"));
        assert_eq!(field(attached, "POLICYD_RULES"), Some("2"));
        assert_eq!(field(attached, "SYSLOG_IDENTIFIER"), Some("policyd"));
        assert_eq!(field(attached, "MESSAGE_ID"), None);
        assert_eq!(u8::from(priority(entries[1].level)), 3);
        assert_eq!(entries[1].message, "the config is invalid");
    }

    #[test]
    fn a_message_id_is_the_journals_not_a_policyd_field() {
        let entries = entries_of(|| {
            tracing::info!(
                message_id = DECISION_MESSAGE_ID,
                victim_pid = 310,
                "killed pid 310"
            )
        });
        let e = &entries[0];
        assert_eq!(field(e, "MESSAGE_ID"), Some(DECISION_MESSAGE_ID));
        assert_eq!(field(e, "POLICYD_MESSAGE_ID"), None);
        assert_eq!(field(e, "POLICYD_VICTIM_PID"), Some("310"));
        assert_eq!(e.message, "killed pid 310");
    }

    #[test]
    fn field_names_are_what_journald_accepts() {
        assert_eq!(field_name("victim_cgroup"), "POLICYD_VICTIM_CGROUP");
        assert_eq!(field_name("a.b-c"), "POLICYD_A_B_C");
        assert_eq!(DECISION_MESSAGE_ID.len(), 32);
        assert!(DECISION_MESSAGE_ID
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }
}
