//! Turns a cell's output into AXP messages: stdout/stderr as TextContent frames split on line boundaries
//! (joining frames with `"\n"`, as the planner does, rebuilds the output), coalesced, capped; then a summary
//! frame and a structured `FunctionResultContent`.

use std::time::{Duration, Instant};

use axp_transport::{
    content,
    pb::{
        Content, FunctionResultContent, Message, ToolResultContent, content as content_type,
        function_result_content, tool_result_content,
    },
};
use prost_types::{Struct, Value, value::Kind};

use crate::worker::protocol::ExecuteResult;

/// The `FunctionResultContent.name` of every result.
pub const RESULT_NAME: &str = "python";

/// Unsent complete lines past this size are sent without waiting for the flush interval.
const FLUSH_BYTES: usize = 64 * 1024;

/// Most encoded bytes of messages [`frames`] puts in one frame: a quarter of the 4 MiB a gRPC client accepts in
/// one message by default, leaving room for the frame's ids.
pub const FRAME_BYTES: usize = 1 << 20;

/// One output stream of one execution: the bytes kept (up to the limit) and how many were sent as frames.
#[derive(Debug, Default)]
struct Stream {
    kept: Vec<u8>,
    sent: usize,
    total: u64,
}

impl Stream {
    /// Complete lines not yet sent, without their final newline.
    fn take_lines(&mut self) -> Option<String> {
        let unsent = &self.kept[self.sent..];
        let end = unsent.iter().rposition(|&b| b == b'\n')?;
        let text = String::from_utf8_lossy(&unsent[..end]).into_owned();
        self.sent += end + 1;
        Some(text)
    }

    /// Everything not yet sent (the final partial line included).
    fn take_rest(&mut self) -> Option<String> {
        let lines = self.take_lines();
        let rest = (self.sent < self.kept.len()).then(|| {
            let text = String::from_utf8_lossy(&self.kept[self.sent..]).into_owned();
            self.sent = self.kept.len();
            text
        });
        match (lines, rest) {
            (Some(lines), Some(rest)) => Some(format!("{lines}\n{rest}")),
            (a, b) => a.or(b),
        }
    }

    fn pending_lines(&self) -> usize {
        self.kept[self.sent..]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |p| p + 1)
    }
}

/// Which stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// fd 1.
    Stdout = 0,
    /// fd 2.
    Stderr = 1,
}

impl StreamKind {
    fn name(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

/// Collects one execution's output and decides when to send it.
///
/// Output that is alone in flight (nothing was sent in the last interval) is due at once; output that follows
/// a recent frame waits for the end of the interval, so a print loop is coalesced into a few frames.
///
/// # Guarantees
///
/// Memory stays below twice the limit per stream whatever the code prints; frames carry only complete lines
/// until [`Collector::finish`], which sends the rest. No complete line waits longer than the interval, plus
/// the time to read what the worker had already written.
#[derive(Debug)]
pub struct Collector {
    streams: [Stream; 2],
    limit: u64,
    interval: Duration,
    /// When the last frame was sent; `None` before the first.
    last_flush: Option<Instant>,
    /// When the oldest unsent complete line arrived.
    pending_since: Option<Instant>,
}

impl Collector {
    /// A collector keeping at most `limit` bytes per stream and sending at most every `interval`.
    pub fn new(limit: u64, interval: Duration) -> Self {
        Self {
            streams: Default::default(),
            limit,
            interval,
            last_flush: None,
            pending_since: None,
        }
    }

    /// Adds output.
    pub fn push(&mut self, kind: StreamKind, bytes: &[u8]) {
        let stream = &mut self.streams[kind as usize];
        stream.total += bytes.len() as u64;
        let room = usize::try_from(self.limit)
            .unwrap_or(usize::MAX)
            .saturating_sub(stream.kept.len());
        stream
            .kept
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
        if self.pending_since.is_none() && self.pending() > 0 {
            self.pending_since = Some(Instant::now());
        }
    }

    fn pending(&self) -> usize {
        self.streams.iter().map(Stream::pending_lines).sum()
    }

    /// Records the worker's own byte counts (they include bytes it dropped at the limit).
    pub fn set_totals(&mut self, stdout: u64, stderr: u64) {
        self.streams[0].total = self.streams[0].total.max(stdout);
        self.streams[1].total = self.streams[1].total.max(stderr);
    }

    /// When complete lines should be sent: `None` if there are none; now if they are alone in flight (no frame
    /// in the last interval) or past [`FLUSH_BYTES`]; else the end of the interval that began with the last frame.
    pub fn flush_at(&self) -> Option<Instant> {
        let pending = self.pending();
        if pending == 0 {
            return None;
        }
        let now = Instant::now();
        match self.last_flush {
            Some(last) if pending < FLUSH_BYTES => Some((last + self.interval).max(now)),
            _ => Some(now),
        }
    }

    /// Whether due lines may wait for more output the worker has already written (the caller knows): they
    /// then travel in one frame with it (a quick cell's output and its result, say). Only while the oldest
    /// line is younger than the interval and below [`FLUSH_BYTES`], so heavy output cannot hold a stream.
    pub fn may_wait_for_queued(&self) -> bool {
        self.pending() < FLUSH_BYTES
            && self
                .pending_since
                .is_some_and(|since| since.elapsed() < self.interval)
    }

    /// Takes the complete lines as messages (one per stream that has any).
    pub fn flush(&mut self) -> Vec<Message> {
        self.last_flush = Some(Instant::now());
        self.pending_since = None;
        self.streams
            .iter_mut()
            .filter_map(Stream::take_lines)
            .map(content::model_text)
            .collect()
    }

    /// Takes everything left as messages, the final partial lines included.
    fn finish(&mut self) -> Vec<Message> {
        self.streams
            .iter_mut()
            .filter_map(Stream::take_rest)
            .map(content::model_text)
            .collect()
    }

    fn truncated(&self, kind: StreamKind) -> bool {
        self.streams[kind as usize].total > self.limit
    }

    fn text(&self, kind: StreamKind) -> String {
        String::from_utf8_lossy(&self.streams[kind as usize].kept).into_owned()
    }

    fn total(&self, kind: StreamKind) -> u64 {
        self.streams[kind as usize].total
    }

    fn printed_anything(&self) -> bool {
        self.streams.iter().any(|s| s.total > 0)
    }
}

/// How an execution ended, from the agent's point of view.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// What the worker reported; `None` when it never finished (killed, died).
    pub result: Option<ExecuteResult>,
    /// The error the agent reports instead of (or over) the worker's: timeouts, deaths.
    pub error: Option<(String, String)>,
    /// The execution overran its timeout.
    pub timed_out: bool,
    /// The worker was restarted, so earlier variables are gone.
    pub state_lost: bool,
    /// Notes for the model ("the worker had exited since the last execution…").
    pub notices: Vec<String>,
    /// Wall time seen by the agent.
    pub duration: Duration,
    /// Cell number in this conversation (1-based).
    pub cell: u64,
}

/// The final messages: remaining output, a summary text frame (value, traceback, truncation and restart notes)
/// when there is something to say, and the structured result.
pub fn finish(collector: &mut Collector, outcome: &Outcome, call_id: &str) -> Vec<Message> {
    let mut messages = collector.finish();
    let result = outcome.result.clone().unwrap_or_default();
    if let Some(r) = &outcome.result {
        collector.set_totals(r.stdout_bytes, r.stderr_bytes);
    }
    let (error_type, error_message, traceback) = match (&outcome.error, &result.error) {
        (Some((t, m)), py) => {
            let traceback = py
                .as_ref()
                .map(|e| e.traceback.trim_end().to_owned())
                .unwrap_or_default();
            (Some(t.clone()), Some(m.clone()), traceback)
        }
        (None, Some(e)) => (
            Some(e.r#type.clone()),
            Some(e.message.clone()),
            e.traceback.trim_end().to_owned(),
        ),
        (None, None) => (None, None, String::new()),
    };

    let mut summary = Vec::new();
    for kind in [StreamKind::Stdout, StreamKind::Stderr] {
        if collector.truncated(kind) {
            summary.push(format!(
                "[{} truncated: showing the first {} of {} bytes]",
                kind.name(),
                collector.limit,
                collector.total(kind)
            ));
        }
    }
    if let Some(value) = &result.value {
        summary.push(if result.value_truncated {
            format!("{value} [value truncated]")
        } else {
            value.clone()
        });
    }
    match (&outcome.error, error_type.is_some()) {
        (Some((t, m)), _) => {
            if !traceback.is_empty() && outcome.result.is_some() {
                summary.push(traceback.clone());
            }
            summary.push(format!("{t}: {m}"));
        }
        (None, true) => summary.push(traceback.clone()),
        (None, false) => {}
    }
    summary.extend(outcome.notices.iter().cloned());
    if summary.is_empty() && !collector.printed_anything() {
        summary.push("(no output)".to_owned());
    }
    if !summary.is_empty() {
        messages.push(content::model_text(summary.join("\n")));
    }

    let mut fields = std::collections::BTreeMap::new();
    let mut put = |k: &str, v: Kind| {
        fields.insert(k.to_owned(), Value { kind: Some(v) });
    };
    let string_or_null = |v: Option<String>| v.map_or(Kind::NullValue(0), Kind::StringValue);
    put("ok", Kind::BoolValue(error_type.is_none()));
    put("cell", Kind::NumberValue(outcome.cell as f64));
    put(
        "stdout",
        Kind::StringValue(collector.text(StreamKind::Stdout)),
    );
    put(
        "stderr",
        Kind::StringValue(collector.text(StreamKind::Stderr)),
    );
    put(
        "stdout_bytes",
        Kind::NumberValue(collector.total(StreamKind::Stdout) as f64),
    );
    put(
        "stderr_bytes",
        Kind::NumberValue(collector.total(StreamKind::Stderr) as f64),
    );
    put(
        "stdout_truncated",
        Kind::BoolValue(collector.truncated(StreamKind::Stdout)),
    );
    put(
        "stderr_truncated",
        Kind::BoolValue(collector.truncated(StreamKind::Stderr)),
    );
    put("value", string_or_null(result.value.clone()));
    put("value_truncated", Kind::BoolValue(result.value_truncated));
    put("error_type", string_or_null(error_type));
    put("error_message", string_or_null(error_message));
    put(
        "traceback",
        string_or_null((!traceback.is_empty()).then_some(traceback)),
    );
    put("timed_out", Kind::BoolValue(outcome.timed_out));
    put("state_lost", Kind::BoolValue(outcome.state_lost));
    put(
        "duration_ms",
        Kind::NumberValue(outcome.duration.as_secs_f64() * 1000.0),
    );
    put(
        "python_duration_ms",
        Kind::NumberValue(result.duration_us as f64 / 1000.0),
    );
    messages.push(Message {
        role: content::ROLE_MODEL.to_owned(),
        content: Some(Content {
            r#type: Some(content_type::Type::ToolResult(ToolResultContent {
                call_id: call_id.to_owned(),
                signature: Vec::new(),
                r#type: Some(tool_result_content::Type::FunctionResult(
                    FunctionResultContent {
                        name: RESULT_NAME.to_owned(),
                        result: Some(function_result_content::Result::Response(Struct { fields })),
                    },
                )),
            })),
        }),
        internal_only: false,
    });
    messages
}

/// Groups messages, in order, into frames of at most [`FRAME_BYTES`] encoded bytes (a message larger than that
/// alone is a frame of its own).
pub fn frames(messages: Vec<Message>) -> Vec<Vec<Message>> {
    let mut frames: Vec<Vec<Message>> = Vec::new();
    let mut size = 0;
    for message in messages {
        let len = prost::Message::encoded_len(&message);
        match frames.last_mut() {
            Some(frame) if size + len <= FRAME_BYTES => {
                size += len;
                frame.push(message);
            }
            _ => {
                size = len;
                frames.push(vec![message]);
            }
        }
    }
    frames
}

/// The structured result of an execution's outputs, if any (for clients and tests).
pub fn structured_result(messages: &[Message]) -> Option<&Struct> {
    messages
        .iter()
        .rev()
        .find_map(|m| match m.content.as_ref()?.r#type.as_ref()? {
            content_type::Type::ToolResult(ToolResultContent {
                r#type:
                    Some(tool_result_content::Type::FunctionResult(FunctionResultContent {
                        result: Some(function_result_content::Result::Response(s)),
                        ..
                    })),
                ..
            }) => Some(s),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_hold_complete_lines_and_joining_them_rebuilds_the_output() {
        let mut c = Collector::new(1 << 20, Duration::from_millis(25));
        c.push(StreamKind::Stdout, b"a\nb");
        let first = c.flush();
        c.push(StreamKind::Stdout, b"c\n\nd\ne");
        let second = c.flush();
        let rest = finish(&mut c, &Outcome::default(), "x");
        let texts: Vec<_> = first
            .iter()
            .chain(&second)
            .chain(&rest)
            .filter_map(content::text_of)
            .collect();
        assert_eq!(texts, ["a", "bc\n\nd", "e"]);
        assert_eq!(texts.join("\n"), "a\nbc\n\nd\ne");
    }

    #[test]
    fn output_past_the_limit_is_dropped_and_marked() {
        let mut c = Collector::new(10, Duration::from_millis(25));
        for _ in 0..1000 {
            c.push(StreamKind::Stdout, b"0123456789\n");
        }
        assert!(c.streams[0].kept.len() <= 10);
        let messages = finish(&mut c, &Outcome::default(), "x");
        let view = content::planner_view(&messages);
        assert!(
            view.contains("[stdout truncated: showing the first 10 of 11000 bytes]"),
            "{view}"
        );
        let result = structured_result(&messages).unwrap();
        assert_eq!(
            result.fields["stdout_truncated"].kind,
            Some(Kind::BoolValue(true))
        );
    }

    #[test]
    fn a_quick_result_is_one_frame_and_a_big_one_is_split_under_the_frame_size() {
        let mut c = Collector::new(1 << 20, Duration::from_millis(25));
        c.push(StreamKind::Stdout, b"42\n");
        let small = frames(finish(&mut c, &Outcome::default(), "x"));
        assert_eq!(small.len(), 1, "output and structured result in one frame");
        assert_eq!(content::planner_view(&small[0]), "42");

        let mut c = Collector::new(4 << 20, Duration::from_millis(25));
        c.push(StreamKind::Stdout, &vec![b'x'; 3 << 20]);
        let messages = finish(&mut c, &Outcome::default(), "x");
        let count = messages.len();
        let big = frames(messages);
        assert!(big.len() > 1, "{} frames", big.len());
        assert_eq!(
            big.iter().map(Vec::len).sum::<usize>(),
            count,
            "no message lost"
        );
        for frame in &big {
            let bytes: usize = frame.iter().map(prost::Message::encoded_len).sum();
            assert!(
                frame.len() == 1 || bytes <= FRAME_BYTES,
                "{bytes} bytes in {} messages",
                frame.len()
            );
        }
    }

    #[test]
    fn a_silent_cell_still_gives_the_planner_a_text() {
        let mut c = Collector::new(10, Duration::from_millis(25));
        let messages = finish(&mut c, &Outcome::default(), "x");
        assert_eq!(content::planner_view(&messages), "(no output)");
    }

    #[test]
    fn flushes_after_the_first_are_coalesced_to_the_interval() {
        let mut c = Collector::new(1 << 20, Duration::from_secs(10));
        assert!(c.flush_at().is_none());
        c.push(StreamKind::Stdout, b"1\n");
        c.flush();
        c.push(StreamKind::Stdout, b"2\n");
        assert!(c.flush_at().unwrap() > Instant::now() + Duration::from_secs(5));
        c.push(StreamKind::Stdout, &vec![b'x'; FLUSH_BYTES]);
        c.push(StreamKind::Stdout, b"\n");
        assert!(c.flush_at().unwrap() <= Instant::now());
        assert!(!c.may_wait_for_queued(), "heavy output is never held");
    }

    #[test]
    fn output_alone_in_flight_is_due_at_once_whatever_the_interval() {
        let mut c = Collector::new(1 << 20, Duration::from_secs(3600));
        c.push(StreamKind::Stdout, b"partial");
        assert!(c.flush_at().is_none(), "a partial line waits for its end");
        c.push(StreamKind::Stdout, b" line\n");
        assert!(c.flush_at().unwrap() <= Instant::now());
        assert!(
            c.may_wait_for_queued(),
            "a quick cell's output may wait for the result already queued behind it"
        );
    }
}
