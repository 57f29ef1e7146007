//! Incremental framing of the QMP input stream.
//!
//! QMP input is a stream of JSON objects with no required separator: several
//! may come in one read, and one may be split over many reads. The
//! [`Framer`] scans bytes as they arrive, tracks string/escape state and the
//! bracket nesting outside strings, and hands out each complete top-level
//! value as bytes for `serde_json` to parse. It never holds more than
//! [`MAX_MESSAGE_SIZE`] bytes, whatever the input.
//!
//! Rules:
//! - whitespace between values is skipped;
//! - `{` or `[` starts a value, and so does `"` (a top-level string, which
//!   the protocol layer then rejects as "not an object");
//! - any other byte outside a value is garbage: one [`FrameError::Garbage`]
//!   per run of garbage (a run ends at a newline), and scanning resumes at
//!   the next `{`;
//! - a closing bracket that does not match its opener ends the value with
//!   [`FrameError::Mismatched`];
//! - an ASCII control character (other than tab, CR, LF) or a byte that
//!   never occurs in UTF-8 (`0xC0`, `0xC1`, `0xF5`..=`0xFF`) inside a value
//!   abandons it with [`FrameError::Aborted`]; this is the parser reset the
//!   QMP specification tells clients to use;
//! - a value longer than [`MAX_MESSAGE_SIZE`] bytes or nested deeper than
//!   [`MAX_NESTING`] is reported once and the rest of it is skipped without
//!   being stored.

use std::fmt;

/// Largest accepted message, in bytes (1 MiB).
pub const MAX_MESSAGE_SIZE: usize = 1 << 20;

/// Deepest accepted nesting of objects and arrays.
///
/// `serde_json` refuses more than 127 levels, so the framer stops well
/// before that.
pub const MAX_NESTING: usize = 100;

/// One unit of output from the [`Framer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The bytes of one complete top-level JSON value (not yet parsed).
    Message(Vec<u8>),
    /// Input that can not form a message; answered with a parse error.
    Error(FrameError),
}

/// Why part of the input was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Bytes outside any JSON value; `0` is the first byte of the run.
    Garbage(u8),
    /// A closing bracket that does not match the open one.
    Mismatched(u8),
    /// A control character or non-UTF-8 byte inside a value.
    Aborted(u8),
    /// The value exceeded [`MAX_MESSAGE_SIZE`].
    TooLarge,
    /// The value was nested deeper than [`MAX_NESTING`].
    TooDeep,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Garbage(b) => write!(f, "unexpected {} outside of a JSON object", Byte(*b)),
            FrameError::Mismatched(b) => write!(f, "mismatched {}", Byte(*b)),
            FrameError::Aborted(b) => write!(f, "invalid byte {} inside a value", Byte(*b)),
            FrameError::TooLarge => {
                write!(f, "message exceeds the limit of {MAX_MESSAGE_SIZE} bytes")
            }
            FrameError::TooDeep => write!(f, "nesting exceeds the limit of {MAX_NESTING} levels"),
        }
    }
}

/// Prints a byte as `'c'` when printable, else as `0xNN`.
struct Byte(u8);

impl fmt::Display for Byte {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() {
            write!(f, "'{}'", self.0 as char)
        } else {
            write!(f, "0x{:02x}", self.0)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between values.
    Idle,
    /// In a run of garbage; the error was already reported.
    Garbage,
    /// Inside a value that is being stored.
    Value,
    /// Inside a value that was refused; tracking its end without storing it.
    Discard,
}

/// Splits a byte stream into top-level JSON values. See the module docs.
#[derive(Debug)]
pub struct Framer {
    state: State,
    buf: Vec<u8>,
    /// Open brackets of the current stored value (`b'{'` or `b'['`).
    stack: Vec<u8>,
    /// Nesting depth while discarding (no bracket types kept).
    discard_depth: u64,
    in_string: bool,
    escaped: bool,
    max_size: usize,
    max_nesting: usize,
}

impl Default for Framer {
    fn default() -> Self {
        Self::new()
    }
}

impl Framer {
    /// A framer with the default limits.
    pub fn new() -> Self {
        Self::with_limits(MAX_MESSAGE_SIZE, MAX_NESTING)
    }

    /// A framer with other limits (`max_nesting` is capped at [`MAX_NESTING`]).
    pub fn with_limits(max_size: usize, max_nesting: usize) -> Self {
        Framer {
            state: State::Idle,
            buf: Vec::new(),
            stack: Vec::new(),
            discard_depth: 0,
            in_string: false,
            escaped: false,
            max_size: max_size.max(2),
            max_nesting: max_nesting.clamp(1, MAX_NESTING),
        }
    }

    /// Bytes held for the value being assembled.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Consumes bytes from `data` until one frame is complete.
    ///
    /// Returns how many bytes were consumed and the frame, if any. Call again
    /// with the rest of `data` until it is empty.
    pub fn feed(&mut self, data: &[u8]) -> (usize, Option<Frame>) {
        for (i, &b) in data.iter().enumerate() {
            if let Some(frame) = self.push(b) {
                return (i + 1, Some(frame));
            }
        }
        (data.len(), None)
    }

    /// Feeds all of `data`, collecting every frame (convenient for tests).
    pub fn feed_all(&mut self, mut data: &[u8]) -> Vec<Frame> {
        let mut frames = Vec::new();
        while !data.is_empty() {
            let (used, frame) = self.feed(data);
            data = &data[used..];
            frames.extend(frame);
        }
        frames
    }

    fn push(&mut self, b: u8) -> Option<Frame> {
        match self.state {
            State::Idle | State::Garbage => self.between_values(b),
            State::Value => self.in_value(b),
            State::Discard => {
                self.discarding(b);
                None
            }
        }
    }

    fn between_values(&mut self, b: u8) -> Option<Frame> {
        match b {
            b'{' | b'[' => {
                self.start_value();
                self.stack.push(b);
                self.buf.push(b);
                None
            }
            b'"' => {
                self.start_value();
                self.in_string = true;
                self.buf.push(b);
                None
            }
            // A garbage run ends at a newline (so that each bad line typed
            // interactively is answered) or at the next `{`.
            b'\n' => {
                self.state = State::Idle;
                None
            }
            b' ' | b'\t' | b'\r' => None,
            _ if self.state == State::Garbage => None,
            _ => {
                self.state = State::Garbage;
                Some(Frame::Error(FrameError::Garbage(b)))
            }
        }
    }

    fn start_value(&mut self) {
        self.state = State::Value;
        self.buf.clear();
        self.stack.clear();
        self.in_string = false;
        self.escaped = false;
    }

    /// True for bytes that can never be part of valid JSON text in a value.
    fn is_abort_byte(b: u8, in_string: bool) -> bool {
        let control = b < 0x20 && (in_string || !matches!(b, b'\t' | b'\r' | b'\n'));
        control || b == 0x7f && !in_string || matches!(b, 0xc0 | 0xc1 | 0xf5..=0xff)
    }

    fn in_value(&mut self, b: u8) -> Option<Frame> {
        if Self::is_abort_byte(b, self.in_string) {
            self.reset();
            return Some(Frame::Error(FrameError::Aborted(b)));
        }
        if self.buf.len() >= self.max_size {
            // Switch to discarding, keeping the structure state.
            let (depth, in_string, escaped) =
                (self.stack.len() as u64, self.in_string, self.escaped);
            self.reset();
            self.state = State::Discard;
            self.discard_depth = depth;
            self.in_string = in_string;
            self.escaped = escaped;
            // The byte itself still counts towards the structure.
            self.discarding(b);
            return Some(Frame::Error(FrameError::TooLarge));
        }
        self.buf.push(b);
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.in_string = false;
                if self.stack.is_empty() {
                    return Some(self.finish());
                }
            }
            return None;
        }
        match b {
            b'"' => self.in_string = true,
            b'{' | b'[' => {
                if self.stack.len() >= self.max_nesting {
                    let depth = self.stack.len() as u64 + 1;
                    self.reset();
                    self.state = State::Discard;
                    self.discard_depth = depth;
                    return Some(Frame::Error(FrameError::TooDeep));
                }
                self.stack.push(b);
            }
            b'}' | b']' => {
                let open = if b == b'}' { b'{' } else { b'[' };
                if self.stack.pop() != Some(open) {
                    self.reset();
                    return Some(Frame::Error(FrameError::Mismatched(b)));
                }
                if self.stack.is_empty() {
                    return Some(self.finish());
                }
            }
            _ => {}
        }
        None
    }

    fn discarding(&mut self, b: u8) {
        if Self::is_abort_byte(b, self.in_string) {
            self.reset();
            return;
        }
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.in_string = false;
                if self.discard_depth == 0 {
                    self.reset();
                }
            }
            return;
        }
        match b {
            b'"' => self.in_string = true,
            b'{' | b'[' => self.discard_depth = self.discard_depth.saturating_add(1),
            b'}' | b']' => {
                self.discard_depth = self.discard_depth.saturating_sub(1);
                if self.discard_depth == 0 {
                    self.reset();
                }
            }
            _ => {}
        }
    }

    fn finish(&mut self) -> Frame {
        let msg = std::mem::take(&mut self.buf);
        self.reset();
        Frame::Message(msg)
    }

    /// Back to idle, releasing the buffer if it grew large.
    fn reset(&mut self) {
        self.state = State::Idle;
        self.buf.clear();
        if self.buf.capacity() > 64 * 1024 {
            self.buf = Vec::new();
        }
        self.stack.clear();
        self.discard_depth = 0;
        self.in_string = false;
        self.escaped = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(frames: &[Frame]) -> Vec<String> {
        frames
            .iter()
            .map(|f| match f {
                Frame::Message(m) => String::from_utf8(m.clone()).unwrap(),
                Frame::Error(e) => format!("ERR {e:?}"),
            })
            .collect()
    }

    #[test]
    fn objects_back_to_back_and_with_whitespace() {
        let mut f = Framer::new();
        let out = f.feed_all(b" {\"a\":1}{\"b\":[2,{}]}\r\n\t{ }");
        assert_eq!(msgs(&out), ["{\"a\":1}", "{\"b\":[2,{}]}", "{ }"]);
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn byte_by_byte_equals_whole() {
        let input = br#"{"execute":"x","arguments":{"s":"a}\"{[\\"},"id":[1,{"k":"]"}]}"#;
        let mut whole = Framer::new();
        let expected = whole.feed_all(input);
        assert_eq!(expected.len(), 1);
        let mut f = Framer::new();
        let mut got = Vec::new();
        for b in input.iter() {
            got.extend(f.feed_all(std::slice::from_ref(b)));
        }
        assert_eq!(got, expected);
        let text = msgs(&got).remove(0);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["arguments"]["s"], "a}\"{[\\");
    }

    #[test]
    fn feed_stops_after_each_frame() {
        let mut f = Framer::new();
        let data = b"{}{}";
        let (used, frame) = f.feed(data);
        assert_eq!(used, 2);
        assert_eq!(frame, Some(Frame::Message(b"{}".to_vec())));
        let (used, frame) = f.feed(&data[2..]);
        assert_eq!(used, 2);
        assert!(frame.is_some());
    }

    #[test]
    fn garbage_run_gives_one_error_then_resyncs() {
        let mut f = Framer::new();
        let out = f.feed_all(b"hello world}]{\"a\":1} 42 {}x\ny\n z{}");
        assert_eq!(
            msgs(&out),
            [
                "ERR Garbage(104)",
                "{\"a\":1}",
                "ERR Garbage(52)",
                "{}",
                "ERR Garbage(120)",
                "ERR Garbage(121)",
                "ERR Garbage(122)",
                "{}"
            ]
        );
    }

    #[test]
    fn top_level_strings_and_arrays_are_values() {
        let mut f = Framer::new();
        let out = f.feed_all(b"\"x{\\\"\" [1,[2]]");
        assert_eq!(msgs(&out), ["\"x{\\\"\"", "[1,[2]]"]);
    }

    #[test]
    fn mismatched_bracket_is_an_error() {
        let mut f = Framer::new();
        let out = f.feed_all(b"{\"a\":[}{}");
        assert_eq!(msgs(&out), ["ERR Mismatched(125)", "{}"]);
    }

    #[test]
    fn control_character_resets_a_partial_value() {
        let mut f = Framer::new();
        let out = f.feed_all(b"{\"execute\": \"sto\x1b{\"execute\":\"stop\"}");
        assert_eq!(msgs(&out), ["ERR Aborted(27)", "{\"execute\":\"stop\"}"]);
        let out = f.feed_all(b"{\"a\": \xff{}");
        assert_eq!(msgs(&out), ["ERR Aborted(255)", "{}"]);
        // Valid UTF-8 inside strings is kept.
        let out = f.feed_all("{\"a\":\"é€😀\"}".as_bytes());
        assert_eq!(msgs(&out), ["{\"a\":\"é€😀\"}"]);
    }

    #[test]
    fn oversized_value_is_skipped_without_buffering() {
        let mut f = Framer::with_limits(64, MAX_NESTING);
        let mut input = b"{\"a\":\"".to_vec();
        input.extend(std::iter::repeat_n(b'x', 10_000));
        input.extend(b"\",\"b\":{\"c\":\"}\"}}{\"ok\":1}");
        let mut got = Vec::new();
        for chunk in input.chunks(7) {
            got.extend(f.feed_all(chunk));
            assert!(f.buffered() <= 64);
        }
        assert_eq!(msgs(&got), ["ERR TooLarge", "{\"ok\":1}"]);
    }

    #[test]
    fn too_deep_nesting_is_skipped() {
        let mut f = Framer::new();
        let mut input = Vec::new();
        input.extend(std::iter::repeat_n(b'[', 5000));
        input.extend(std::iter::repeat_n(b']', 5000));
        input.extend(b"{\"ok\":1}");
        let out = f.feed_all(&input);
        assert_eq!(msgs(&out), ["ERR TooDeep", "{\"ok\":1}"]);
        // Exactly at the limit is fine.
        let mut input = Vec::new();
        input.extend(std::iter::repeat_n(b'[', MAX_NESTING));
        input.extend(std::iter::repeat_n(b']', MAX_NESTING));
        let out = f.feed_all(&input);
        let Frame::Message(m) = &out[0] else {
            panic!("{out:?}")
        };
        assert!(serde_json::from_slice::<serde_json::Value>(m).is_ok());
    }

    #[test]
    fn error_texts() {
        assert_eq!(
            FrameError::Garbage(b'x').to_string(),
            "unexpected 'x' outside of a JSON object"
        );
        assert_eq!(
            FrameError::Aborted(0x1b).to_string(),
            "invalid byte 0x1b inside a value"
        );
        assert!(FrameError::TooLarge.to_string().contains("1048576"));
    }
}
