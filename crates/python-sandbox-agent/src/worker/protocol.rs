//! The pipe protocol between the agent and its Python worker process.
//!
//! Every frame is `u32` little-endian length, then one kind byte, then the payload (`length - 1` bytes). Control
//! messages are JSON; output chunks are raw bytes, so the hot path never escapes or copies program output twice.
//!
//! Agent → worker: [`Kind::Execute`] with an [`ExecuteRequest`].
//! Worker → agent: one [`Kind::Ready`] ([`WorkerInfo`]) at start-up; then per execution any number of
//! [`Kind::Stdout`] / [`Kind::Stderr`] chunks and exactly one [`Kind::Done`] ([`ExecuteResult`]), always after the
//! last chunk of that execution. [`Kind::Fatal`] reports a worker that cannot start.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// Largest frame either side accepts; bounded so a corrupted length cannot make the reader allocate gigabytes.
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Worker → agent: the interpreter is up ([`WorkerInfo`] JSON).
    Ready = 1,
    /// Agent → worker: run code ([`ExecuteRequest`] JSON).
    Execute = 2,
    /// Worker → agent: bytes the code wrote to fd 1.
    Stdout = 3,
    /// Worker → agent: bytes the code wrote to fd 2.
    Stderr = 4,
    /// Worker → agent: the execution finished ([`ExecuteResult`] JSON).
    Done = 5,
    /// Worker → agent: the worker cannot run (a message, UTF-8); it exits next.
    Fatal = 6,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => Self::Ready,
            2 => Self::Execute,
            3 => Self::Stdout,
            4 => Self::Stderr,
            5 => Self::Done,
            6 => Self::Fatal,
            _ => return None,
        })
    }
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The pipe failed or closed mid-frame.
    #[error("pipe I/O failed")]
    Io(#[source] io::Error),
    /// The length prefix is zero or above [`MAX_FRAME`].
    #[error("frame length {0} is out of range")]
    BadLength(usize),
    /// The kind byte is unknown.
    #[error("unknown frame kind {0}")]
    BadKind(u8),
    /// A JSON payload did not parse.
    #[error("frame payload is not valid JSON for its kind")]
    BadPayload(#[source] serde_json::Error),
}

/// One frame as read.
#[derive(Debug)]
pub struct Frame {
    /// What it carries.
    pub kind: Kind,
    /// The payload.
    pub payload: Vec<u8>,
}

impl Frame {
    /// Parses the JSON payload.
    ///
    /// # Errors
    ///
    /// [`Error::BadPayload`] when it is not the expected JSON.
    pub fn json<T: for<'de> Deserialize<'de>>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.payload).map_err(Error::BadPayload)
    }
}

/// Encodes a frame header for a payload of `len` bytes.
pub fn header(kind: Kind, len: usize) -> [u8; 5] {
    let total = u32::try_from(len + 1).unwrap_or(u32::MAX).to_le_bytes();
    [total[0], total[1], total[2], total[3], kind as u8]
}

/// Writes one frame (header and payload in one buffer, so a frame is one `write` for small payloads).
///
/// # Errors
///
/// [`Error::Io`] when the pipe fails.
pub fn write_frame(out: &mut impl Write, kind: Kind, payload: &[u8]) -> Result<(), Error> {
    let mut buf = Vec::with_capacity(5 + payload.len());
    buf.extend_from_slice(&header(kind, payload.len()));
    buf.extend_from_slice(payload);
    out.write_all(&buf).map_err(Error::Io)?;
    out.flush().map_err(Error::Io)
}

/// Encodes a JSON frame into a buffer (for async writers).
pub fn encode_json(kind: Kind, value: &impl Serialize) -> Vec<u8> {
    let mut buf = vec![0; 5];
    // Serialising plain structs of strings and numbers cannot fail.
    serde_json::to_writer(&mut buf, value).expect("protocol types serialise");
    let head = header(kind, buf.len() - 5);
    buf[..5].copy_from_slice(&head);
    buf
}

/// Reads one frame; `Ok(None)` on a clean end of stream between frames.
///
/// # Errors
///
/// [`Error`] on I/O failure, truncation, or a malformed header.
pub fn read_frame(input: &mut impl Read) -> Result<Option<Frame>, Error> {
    let mut head = [0u8; 5];
    match input.read_exact(&mut head[..1]) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(Error::Io(e)),
    }
    input.read_exact(&mut head[1..]).map_err(Error::Io)?;
    let (len, kind) = parse_header(head)?;
    let mut payload = vec![0; len - 1];
    input.read_exact(&mut payload).map_err(Error::Io)?;
    Ok(Some(Frame { kind, payload }))
}

/// Splits a 5-byte header into the total length (kind byte included) and the kind.
///
/// # Errors
///
/// [`Error::BadLength`] or [`Error::BadKind`].
pub fn parse_header(head: [u8; 5]) -> Result<(usize, Kind), Error> {
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(Error::BadLength(len));
    }
    let kind = Kind::from_byte(head[4]).ok_or(Error::BadKind(head[4]))?;
    Ok((len, kind))
}

/// The worker's greeting: which interpreter it runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WorkerInfo {
    /// `sys.version`.
    pub version: String,
    /// `sys.prefix`.
    pub prefix: String,
    /// `sys.base_prefix`'s Python executable, if found (what `sys.executable` is set to).
    pub executable: String,
    /// The worker's process id.
    pub pid: u32,
}

/// Run one snippet.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExecuteRequest {
    /// The Python source.
    pub code: String,
    /// The file name tracebacks show (`<cell 3>`).
    pub filename: String,
    /// Bytes forwarded per stream before the rest is counted and dropped.
    pub output_limit: u64,
    /// Largest `repr` of the value reported, in bytes.
    pub value_limit: u64,
    /// CPU seconds this execution may use (RLIMIT_CPU soft limit, relative to now).
    pub cpu_limit_secs: u64,
    /// Start from an empty namespace.
    pub reset: bool,
}

/// How an execution ended, as the worker saw it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExecuteResult {
    /// `repr` of the last expression's value, if it was an expression whose value is not `None`.
    pub value: Option<String>,
    /// Whether `value` was cut at the value limit.
    pub value_truncated: bool,
    /// The exception, if the code raised.
    pub error: Option<PyError>,
    /// Bytes the code wrote to stdout (all of them, forwarded or not).
    pub stdout_bytes: u64,
    /// Bytes the code wrote to stderr (all of them, forwarded or not).
    pub stderr_bytes: u64,
    /// Wall time of the execution inside the worker, in microseconds.
    pub duration_us: u64,
}

/// A Python exception.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PyError {
    /// The exception class name (`ZeroDivisionError`).
    pub r#type: String,
    /// `str(exception)`.
    pub message: String,
    /// The formatted traceback, the agent's own frames removed.
    pub traceback: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_through_a_byte_pipe() {
        let mut pipe = Vec::new();
        write_frame(&mut pipe, Kind::Stdout, b"42\n").unwrap();
        let request = ExecuteRequest {
            code: "print(1)".into(),
            filename: "<cell 1>".into(),
            output_limit: 10,
            value_limit: 10,
            cpu_limit_secs: 1,
            reset: false,
        };
        pipe.extend_from_slice(&encode_json(Kind::Execute, &request));
        let mut reader = pipe.as_slice();
        let first = read_frame(&mut reader).unwrap().unwrap();
        assert_eq!(
            (first.kind, first.payload.as_slice()),
            (Kind::Stdout, &b"42\n"[..])
        );
        let second = read_frame(&mut reader).unwrap().unwrap();
        assert_eq!(second.kind, Kind::Execute);
        assert_eq!(second.json::<ExecuteRequest>().unwrap(), request);
        assert!(read_frame(&mut reader).unwrap().is_none());
    }

    #[test]
    fn a_corrupt_header_is_an_error_not_an_allocation() {
        let mut reader: &[u8] = &[0xff, 0xff, 0xff, 0xff, 3];
        assert!(matches!(read_frame(&mut reader), Err(Error::BadLength(_))));
        let mut reader: &[u8] = &[1, 0, 0, 0, 99];
        assert!(matches!(read_frame(&mut reader), Err(Error::BadKind(99))));
    }
}
