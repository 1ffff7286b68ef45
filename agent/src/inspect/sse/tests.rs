use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::inspect::{
    tokens::Encoding,
    usage::{EventKind, Meter},
};

/// (name, data) of every event with data.
type Events = Vec<(String, String)>;

fn scan(chunks: &[&[u8]], max_line: usize) -> (Events, Vec<u8>) {
    let mut relay = Relay::new(max_line, false);
    let mut events = Events::new();
    let mut out = Vec::new();
    let mut record = |e: &Event<'_>| {
        if e.has_data {
            events.push((
                String::from_utf8_lossy(e.name).into_owned(),
                String::from_utf8_lossy(e.data).into_owned(),
            ));
        }
        Verdict::Forward
    };
    for chunk in chunks {
        out.extend_from_slice(&relay.feed(Bytes::copy_from_slice(chunk), &mut record));
    }
    out.extend_from_slice(&relay.finish(&mut record));
    (events, out)
}

fn split_at(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    let mut pieces = Vec::new();
    let mut last = 0;
    for cut in cuts {
        pieces.push(bytes[last..cut].to_vec());
        last = cut;
    }
    pieces.push(bytes[last..].to_vec());
    pieces
}

const MIXED: &[u8] = b": keep-alive\r\n\r\nevent: message_start\r\ndata: {\"a\":\"h\xc3\xa9llo \xe4\xb8\x96\xf0\x9f\x8c\x8d\"}\r\n\r\ndata:no-space\rdata: second line\r\rid: 7\nretry: 10\ndata: [DONE]\n\ndata: tail without newline";

#[test]
fn frames_every_line_ending_and_field() {
    let (events, out) = scan(&[MIXED], 1 << 20);
    assert_eq!(out, MIXED, "relayed byte for byte");
    assert_eq!(
        events,
        vec![
            (
                "message_start".to_owned(),
                "{\"a\":\"héllo 世🌍\"}".to_owned()
            ),
            (String::new(), "no-space\nsecond line".to_owned()),
            (String::new(), "[DONE]".to_owned()),
            (String::new(), "tail without newline".to_owned()),
        ]
    );
}

#[test]
fn every_single_split_point_gives_the_same_events() {
    let (whole, _) = scan(&[MIXED], 1 << 20);
    for cut in 0..=MIXED.len() {
        let (events, out) = scan(&[&MIXED[..cut], &MIXED[cut..]], 1 << 20);
        assert_eq!(events, whole, "split at {cut}");
        assert_eq!(out, MIXED);
    }
    let bytes: Vec<&[u8]> = MIXED.chunks(1).collect();
    assert_eq!(scan(&bytes, 1 << 20).0, whole, "byte by byte");
}

#[test]
fn a_line_without_newline_stays_bounded() {
    let mut relay = Relay::new(1024, false);
    let chunk = Bytes::from(vec![b'x'; 16 * 1024]);
    for _ in 0..1024 {
        let out = relay.feed(chunk.clone(), |_| Verdict::Forward);
        assert_eq!(out.len(), chunk.len(), "still relayed");
        assert!(relay.buffered() <= 1024, "{}", relay.buffered());
    }
    // The oversize line is skipped, and the stream recovers at the next line.
    let mut seen = Vec::new();
    relay.feed(Bytes::from_static(b"\n\ndata: ok\n\n"), |e| {
        seen.push((e.data.to_vec(), e.truncated));
        Verdict::Forward
    });
    assert_eq!(seen.last(), Some(&(b"ok".to_vec(), false)));
    assert_eq!(relay.scanner().oversize_lines(), 1);
}

#[test]
fn an_event_over_the_limit_is_marked_truncated() {
    let line = format!("data: {}\n", "y".repeat(600));
    let stream = format!("{line}{line}\n");
    let mut truncated = None;
    let mut relay = Relay::new(1000, false);
    relay.feed(Bytes::from(stream), |e| {
        truncated = Some(e.truncated);
        Verdict::Forward
    });
    assert_eq!(truncated, Some(true));
    assert!(relay.buffered() <= 1000);
}

const STRIP_STREAM: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\r\n\r\n: ping\r\n\r\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1,\"total_tokens\":6}}\r\n\r\ndata: [DONE]\r\n\r\n";

fn strip(chunks: &[Vec<u8>]) -> (Vec<u8>, Meter) {
    let mut relay = Relay::new(4096, true);
    let mut meter = Meter::new(Encoding::O200k);
    let mut out = Vec::new();
    let mut judge = |e: &Event<'_>| match meter.on_event(e) {
        EventKind::UsageOnly => Verdict::Drop,
        EventKind::Other => Verdict::Forward,
    };
    for chunk in chunks {
        out.extend_from_slice(&relay.feed(Bytes::copy_from_slice(chunk), &mut judge));
    }
    out.extend_from_slice(&relay.finish(&mut judge));
    (out, meter)
}

#[test]
fn the_usage_only_chunk_is_stripped_at_any_split() {
    let expected = STRIP_STREAM.replace(
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1,\"total_tokens\":6}}\r\n\r\n",
        "",
    );
    for a in 0..=STRIP_STREAM.len() {
        for b in (a..=STRIP_STREAM.len()).step_by(7) {
            let pieces = split_at(STRIP_STREAM.as_bytes(), &[a, b]);
            let (out, meter) = strip(&pieces);
            assert_eq!(String::from_utf8_lossy(&out), expected, "cuts {a},{b}");
            assert_eq!(meter.reported(), (Some(5), Some(1)));
            assert!(meter.done);
        }
    }
}

#[test]
fn holding_is_bounded_and_large_events_pass() {
    let big = format!(
        "data: {{\"choices\":[{{\"delta\":{{\"content\":\"{}\"}}}}]}}\n\n",
        "z".repeat(10_000)
    );
    let mut relay = Relay::new(4096, true);
    let mut out = Vec::new();
    for chunk in big.as_bytes().chunks(100) {
        out.extend_from_slice(&relay.feed(Bytes::copy_from_slice(chunk), |_| Verdict::Drop));
        assert!(relay.buffered() <= 2 * 4096 + 100);
    }
    out.extend_from_slice(&relay.finish(|_| Verdict::Drop));
    assert_eq!(
        out,
        big.as_bytes(),
        "an event that outgrew the hold is forwarded whole"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn split_invariance(cuts in proptest::collection::vec(0usize..4096, 0..12)) {
        let (whole, _) = scan(&[MIXED], 1 << 20);
        let pieces = split_at(MIXED, &cuts);
        let refs: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
        let (events, out) = scan(&refs, 1 << 20);
        prop_assert_eq!(events, whole);
        prop_assert_eq!(out, MIXED);
    }

    #[test]
    fn strip_split_invariance(cuts in proptest::collection::vec(0usize..4096, 0..12)) {
        let (whole, _) = strip(&[STRIP_STREAM.as_bytes().to_vec()]);
        let (out, meter) = strip(&split_at(STRIP_STREAM.as_bytes(), &cuts));
        prop_assert_eq!(out, whole);
        prop_assert_eq!(meter.reported(), (Some(5), Some(1)));
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_relay_unchanged(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        cuts in proptest::collection::vec(0usize..4096, 0..8),
    ) {
        let pieces = split_at(&bytes, &cuts);
        let refs: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
        let (_, out) = scan(&refs, 64);
        prop_assert_eq!(out, bytes);
    }
}
