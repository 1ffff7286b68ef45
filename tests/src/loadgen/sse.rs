//! Just enough of an SSE reader to time a streamed completion: when the first generated token
//! arrived (the first `data:` event that carries non-empty `content` or `text`; the role-only
//! chunk that servers send first is not a token), how many token events came, and whether the
//! stream ended with `data: [DONE]`.
//!
//! It runs on every byte the load generator receives, so it looks for the fields textually
//! instead of parsing each event as JSON, and it keeps at most one bounded partial line.

/// Longest line kept across reads; a longer one is counted as malformed and skipped.
const MAX_LINE: usize = 256 * 1024;

/// What a stream has shown so far.
#[derive(Debug, Default)]
pub struct StreamScan {
    partial: Vec<u8>,
    /// Skipping the rest of an over-long line.
    discarding: bool,
    /// `data:` events that carried a generated token.
    pub tokens: u32,
    pub done: bool,
    /// Lines longer than the limit (the stream is not what a model server sends).
    pub malformed: u32,
}

// === impl StreamScan ===

impl StreamScan {
    /// Feeds received bytes; returns true when they contained the stream's first token.
    pub fn feed(&mut self, mut bytes: &[u8]) -> bool {
        let before = self.tokens;
        while let Some(end) = bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
            let (line, rest) = bytes.split_at(end);
            bytes = &rest[1..];
            if self.discarding {
                self.discarding = false;
                continue;
            }
            if self.partial.is_empty() {
                self.line(line);
            } else {
                let mut whole = std::mem::take(&mut self.partial);
                whole.extend_from_slice(line);
                self.line(&whole);
                whole.clear();
                self.partial = whole;
            }
        }
        if !self.discarding && !bytes.is_empty() {
            if self.partial.len() + bytes.len() > MAX_LINE {
                self.partial.clear();
                self.discarding = true;
                self.malformed += 1;
            } else {
                self.partial.extend_from_slice(bytes);
            }
        }
        before == 0 && self.tokens > 0
    }

    fn line(&mut self, line: &[u8]) {
        let Some(data) = line.strip_prefix(b"data:") else {
            return; // blank line, comment, `event:`, `id:` or `retry:`
        };
        let data = data.strip_prefix(b" ").unwrap_or(data);
        if data == b"[DONE]" {
            self.done = true;
        } else if has_nonempty_string(data, b"\"content\"")
            || has_nonempty_string(data, b"\"text\"")
        {
            self.tokens += 1;
        }
    }
}

/// Whether `json` has `key` followed by `:` and a non-empty string (any spacing; Python
/// servers write `": "`). A `null` or `""` value is not a token.
fn has_nonempty_string(json: &[u8], key: &[u8]) -> bool {
    let mut rest = json;
    while let Some(at) = find(rest, key) {
        rest = &rest[at + key.len()..];
        let value = skip_space(rest);
        let Some(value) = value.strip_prefix(b":") else {
            continue;
        };
        let value = skip_space(value);
        if let Some(s) = value.strip_prefix(b"\"")
            && s.first().is_some_and(|&c| c != b'"')
        {
            return true;
        }
    }
    false
}

fn skip_space(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|c| c.is_ascii_whitespace()).count();
    &s[n..]
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VLLM: &str = concat!(
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":null}]}\n\n",
        ": keep-alive\n\n",
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}\n\n",
        "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\n\n",
        "data: [DONE]\n\n",
    );

    #[test]
    fn counts_tokens_and_done_in_one_read() {
        let mut s = StreamScan::default();
        assert!(s.feed(VLLM.as_bytes()));
        assert_eq!((s.tokens, s.done, s.malformed), (2, true, 0));
    }

    #[test]
    fn every_split_gives_the_same_result_and_one_first_token() {
        let bytes = VLLM.as_bytes();
        for a in 0..bytes.len() {
            for b in [a, (a + 7).min(bytes.len()), (a + 61).min(bytes.len())] {
                let mut s = StreamScan::default();
                let firsts = [&bytes[..a], &bytes[a..b], &bytes[b..]]
                    .iter()
                    .filter(|part| s.feed(part))
                    .count();
                assert_eq!((s.tokens, s.done, firsts), (2, true, 1), "split {a}/{b}");
            }
        }
    }

    #[test]
    fn python_spacing_crlf_and_completions_text() {
        let mut s = StreamScan::default();
        s.feed(b"data: {\"choices\": [{\"delta\": {\"content\": \"a\"}}]}\r\n\r\n");
        s.feed(b"data:{\"choices\":[{\"text\":\"b\",\"logprobs\":null}]}\r\n\r\n");
        s.feed(b"data: {\"choices\": [{\"delta\": {\"content\": null}}]}\n\n");
        s.feed(b"data: [DONE]\r\n");
        assert_eq!((s.tokens, s.done), (2, true));
    }

    #[test]
    fn a_stream_cut_short_is_not_done() {
        let cut = &VLLM.as_bytes()[..VLLM.find("data: [DONE]").unwrap() + 8];
        let mut s = StreamScan::default();
        s.feed(cut);
        assert!(!s.done);
    }

    #[test]
    fn an_endless_line_is_bounded_and_counted() {
        let mut s = StreamScan::default();
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..10 {
            s.feed(&chunk);
        }
        assert!(s.partial.len() <= MAX_LINE);
        assert_eq!(s.malformed, 1);
        s.feed(b"\ndata: {\"content\":\"t\"}\n");
        assert_eq!(s.tokens, 1, "the reader recovers at the next line");
    }
}
