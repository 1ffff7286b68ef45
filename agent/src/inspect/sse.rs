//! Server-sent events, scanned as they stream past.
//!
//! [`Scanner`] frames events (`\n`, `\r\n` or `\r` line ends, `:` comments, multi-line `data`)
//! across arbitrary chunk splits, including inside a UTF-8 character, and keeps at most one
//! bounded partial line and one bounded event: a broken or hostile upstream that never sends a
//! newline cannot grow memory. [`Relay`] forwards the bytes and, when asked, drops whole events
//! (the usage-only chunk sluice asked for on a client's behalf) without touching the others.

use bytes::{Bytes, BytesMut};
use memchr::memchr2;

/// One event. `data` is empty when the event had no `data` line (a bare blank line).
#[derive(Debug, PartialEq, Eq)]
pub struct Event<'a> {
    /// The `event:` field, empty for the default ("message").
    pub name: &'a [u8],
    pub data: &'a [u8],
    pub has_data: bool,
    /// A line of this event was over the limit and was skipped: `data` is incomplete.
    pub truncated: bool,
}

/// Frames events from a byte stream.
#[derive(Debug)]
pub struct Scanner {
    max_line: usize,
    line: Vec<u8>,
    line_overflow: bool,
    skip_lf: bool,
    name: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
    truncated: bool,
    dispatched: bool,
    oversize_lines: u64,
}

/// What to do with an event's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Forward,
    Drop,
}

/// Forwards a stream's bytes while its events are scanned; in stripping mode, events the
/// caller rejects are removed whole.
#[derive(Debug)]
pub struct Relay {
    scanner: Scanner,
    strip: bool,
    /// Bytes of the event in progress, held until it is decided (stripping mode only).
    held: BytesMut,
    /// Part of the event in progress was already forwarded (it outgrew the hold): it stays.
    passing: bool,
    /// The last chunk ended with the `\r` that ended an event: a `\n` opening the next chunk
    /// belongs to that event and shares its verdict.
    lf_verdict: Option<Verdict>,
}

/// Longest event name kept (names are short protocol words).
const MAX_NAME: usize = 128;

// === impl Scanner ===

impl Scanner {
    /// `max_line` bounds both the partial line and one event's data.
    pub fn new(max_line: usize) -> Self {
        Self {
            max_line,
            line: Vec::new(),
            line_overflow: false,
            skip_lf: false,
            name: Vec::new(),
            data: Vec::new(),
            has_data: false,
            truncated: false,
            dispatched: false,
            oversize_lines: 0,
        }
    }

    /// Lines that were over the limit and skipped.
    pub fn oversize_lines(&self) -> u64 {
        self.oversize_lines
    }

    /// Bytes held between calls (the partial line and the event in progress).
    pub fn buffered(&self) -> usize {
        self.line.len() + self.data.len() + self.name.len()
    }

    /// Scans `chunk` from `*pos` up to the next blank line and returns the event it ended
    /// (`*pos` is then just past it), or `None` when the chunk ran out first.
    pub fn next(&mut self, chunk: &[u8], pos: &mut usize) -> Option<Event<'_>> {
        if self.dispatched {
            self.dispatched = false;
            self.name.clear();
            self.data.clear();
            self.has_data = false;
            self.truncated = false;
        }
        while let Some(rest) = chunk.get(*pos..).filter(|r| !r.is_empty()) {
            if std::mem::take(&mut self.skip_lf) && rest[0] == b'\n' {
                *pos += 1;
                continue;
            }
            let Some(i) = memchr2(b'\n', b'\r', rest) else {
                self.append_partial(rest);
                *pos = chunk.len();
                break;
            };
            let mut advance = i + 1;
            if rest[i] == b'\r' {
                match rest.get(i + 1) {
                    Some(b'\n') => advance += 1,
                    Some(_) => {}
                    None => self.skip_lf = true,
                }
            }
            *pos += advance;
            if self.end_line(&rest[..i]) {
                self.dispatched = true;
                return Some(self.event());
            }
        }
        None
    }

    /// End of stream: the last line and event, even without their terminators (a stream cut
    /// short still has usage or text worth reading).
    pub fn finish(&mut self) -> Option<Event<'_>> {
        if self.dispatched {
            return None;
        }
        if !self.line.is_empty() || self.line_overflow {
            self.end_line(&[]);
        }
        self.dispatched = true;
        (self.has_data || self.truncated).then(|| self.event())
    }

    /// A `\n` that would end the last line is still to come (the chunk ended in `\r`).
    pub fn pending_lf(&self) -> bool {
        self.skip_lf
    }

    fn event(&self) -> Event<'_> {
        Event {
            name: &self.name,
            data: &self.data,
            has_data: self.has_data,
            truncated: self.truncated,
        }
    }

    fn append_partial(&mut self, bytes: &[u8]) {
        if self.line_overflow {
            return;
        }
        if self.line.len() + bytes.len() > self.max_line {
            self.line_overflow = true;
            self.line = Vec::new();
            self.oversize_lines += 1;
            return;
        }
        self.line.extend_from_slice(bytes);
    }

    /// Ends the current line (`tail` is its last piece); true when it ended an event.
    fn end_line(&mut self, tail: &[u8]) -> bool {
        if std::mem::take(&mut self.line_overflow) {
            self.truncated = true;
            return false;
        }
        if self.line.is_empty() {
            return self.process_line(tail);
        }
        self.append_partial(tail);
        if std::mem::take(&mut self.line_overflow) {
            self.truncated = true;
            return false;
        }
        let line = std::mem::take(&mut self.line);
        let ended = self.process_line(&line);
        self.line = line;
        self.line.clear();
        ended
    }

    fn process_line(&mut self, line: &[u8]) -> bool {
        if line.is_empty() {
            // A blank line ends an event; one with no data still marks a boundary.
            return true;
        }
        if line[0] == b':' {
            return false;
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(i) => {
                let value = &line[i + 1..];
                (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        match field {
            b"data" => {
                if self.data.len() + value.len() + 1 > self.max_line {
                    self.truncated = true;
                    self.oversize_lines += 1;
                    self.data = Vec::new();
                } else if !self.truncated {
                    if self.has_data {
                        self.data.push(b'\n');
                    }
                    self.data.extend_from_slice(value);
                }
                self.has_data = true;
            }
            b"event" => {
                self.name.clear();
                self.name
                    .extend_from_slice(&value[..value.len().min(MAX_NAME)]);
            }
            _ => {}
        }
        false
    }
}

// === impl Relay ===

impl Relay {
    /// `strip`: events the caller answers [`Verdict::Drop`] for are removed from the output.
    /// Without it the output is always the input, byte for byte and without a copy.
    pub fn new(max_line: usize, strip: bool) -> Self {
        Self {
            scanner: Scanner::new(max_line),
            strip,
            held: BytesMut::new(),
            passing: false,
            lf_verdict: None,
        }
    }

    /// Whether this relay removes events.
    pub fn strips(&self) -> bool {
        self.strip
    }

    pub fn scanner(&self) -> &Scanner {
        &self.scanner
    }

    /// Bytes held back (stripping mode) plus the scanner's buffers.
    pub fn buffered(&self) -> usize {
        self.held.len() + self.scanner.buffered()
    }

    /// Scans `chunk`, calling `on_event` for each event, and returns the bytes to forward now.
    pub fn feed(&mut self, chunk: Bytes, mut on_event: impl FnMut(&Event<'_>) -> Verdict) -> Bytes {
        let mut pos = 0;
        if !self.strip || chunk.is_empty() {
            while let Some(event) = self.scanner.next(&chunk, &mut pos) {
                on_event(&event);
            }
            return chunk;
        }
        let mut start = 0;
        let mut out = BytesMut::new();
        if let Some(verdict) = self.lf_verdict.take()
            && chunk.first() == Some(&b'\n')
        {
            start = 1;
            if verdict == Verdict::Forward {
                out.extend_from_slice(b"\n");
            }
        }
        while let Some((verdict, droppable)) = self
            .scanner
            .next(&chunk, &mut pos)
            .map(|event| (on_event(&event), !event.truncated))
        {
            let end = pos.max(start);
            let verdict = if verdict == Verdict::Drop && droppable && !self.passing {
                self.held.clear();
                Verdict::Drop
            } else {
                out.extend_from_slice(&self.held.split());
                out.extend_from_slice(&chunk[start..end]);
                Verdict::Forward
            };
            self.lf_verdict = self.scanner.pending_lf().then_some(verdict);
            start = end;
            self.passing = false;
        }
        let rest = &chunk[start.min(chunk.len())..];
        if self.passing {
            out.extend_from_slice(rest);
        } else {
            self.held.extend_from_slice(rest);
            if self.held.len() > self.scanner.max_line {
                out.extend_from_slice(&self.held.split());
                self.passing = true;
            }
        }
        out.freeze()
    }

    /// End of stream: reports the last, unterminated event and returns the bytes still held.
    pub fn finish(&mut self, mut on_event: impl FnMut(&Event<'_>) -> Verdict) -> Bytes {
        let verdict = match self.scanner.finish() {
            Some(event) => (on_event(&event), !event.truncated),
            None => (Verdict::Forward, true),
        };
        if verdict == (Verdict::Drop, true) && !self.passing {
            self.held.clear();
        }
        self.held.split().freeze()
    }
}

#[cfg(test)]
mod tests;
