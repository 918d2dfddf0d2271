//! Server configuration.

use std::time::Duration;

/// Configuration for [`FakeApiServer::start_with`](crate::FakeApiServer::start_with).
///
/// Build it from [`Default`] and the consuming setters:
///
/// ```
/// # use std::time::Duration;
/// let options = fake_apiserver::FakeApiServerOptions::default()
///     .event_history(10)
///     .bookmark_interval(Duration::from_millis(100));
/// # let _ = options;
/// ```
#[derive(Debug, Clone)]
pub struct FakeApiServerOptions {
    /// How many watch events are kept for watches resuming from an old resourceVersion.
    pub event_history: usize,
    /// How often a watch with `allowWatchBookmarks=true` gets a BOOKMARK event.
    pub bookmark_interval: Duration,
    /// What a write that names no `fieldValidation` gets: `true` rejects fields the schema does
    /// not declare (400, as `fieldValidation=Strict`); `false` prunes them with a `Warning`
    /// header each, as a real API server does (`Warn`).
    pub strict_unknown_fields: bool,
    /// Validate writes against the CRD version's `openAPIV3Schema`.
    pub validate_schema: bool,
    /// The port to listen on (on `127.0.0.1`); 0 picks a free one.
    pub port: u16,
}

impl Default for FakeApiServerOptions {
    fn default() -> Self {
        Self {
            // Enough for any test, small enough that an "expired" resourceVersion is reachable by
            // lowering it.
            event_history: 1000,
            // Frequent enough that tests see bookmarks without sleeping for a minute, which is
            // roughly what a real server does.
            bookmark_interval: Duration::from_secs(5),
            // A real API server prunes unknown fields of custom resources unless the client asks
            // for `fieldValidation=Strict` (it warns). Tests want the opposite: a misspelt field
            // name in a client should fail loudly instead of vanishing.
            strict_unknown_fields: true,
            validate_schema: true,
            // Tests run side by side: each server takes whatever port is free.
            port: 0,
        }
    }
}

impl FakeApiServerOptions {
    /// Sets [`event_history`](Self::event_history).
    #[must_use]
    pub fn event_history(mut self, events: usize) -> Self {
        self.event_history = events;
        self
    }

    /// Sets [`bookmark_interval`](Self::bookmark_interval).
    #[must_use]
    pub fn bookmark_interval(mut self, interval: Duration) -> Self {
        self.bookmark_interval = interval;
        self
    }

    /// Sets [`strict_unknown_fields`](Self::strict_unknown_fields).
    #[must_use]
    pub fn strict_unknown_fields(mut self, strict: bool) -> Self {
        self.strict_unknown_fields = strict;
        self
    }

    /// Sets [`port`](Self::port).
    #[must_use]
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Sets [`validate_schema`](Self::validate_schema).
    #[must_use]
    pub fn validate_schema(mut self, validate: bool) -> Self {
        self.validate_schema = validate;
        self
    }
}
