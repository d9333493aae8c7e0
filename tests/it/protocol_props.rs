//! The protocol fuzz target's properties (`fuzz/fuzz_targets/protocol.rs`) as a proptest in the
//! normal suite, so that they hold on every `cargo test`, not only where nightly and cargo-fuzz
//! run. Generated streams of request lines — valid and mismatched `hello`s, requests, garbage,
//! unknown types, lines over the bound, broken UTF-8 — go through the bounded line splitter in
//! chunks of every size and into [`ServerConnection`], the rules the agent's `rpc` loop
//! (`crates/agent/src/daemon.rs`) applies to each line it reads.

use compose_fleet::proto::{
    ErrorKind, LineBuffer, LineTooLong, Request, RequestFrame, ResponseFrame, ServerConnection,
    Step, PROTOCOL_VERSION,
};
use proptest::prelude::*;

/// A small bound, so that generated lines go over it.
const MAX: usize = 256;

fn hello(id: u64, version: u32) -> Vec<u8> {
    RequestFrame {
        id,
        request: Request::Hello {
            protocol_version: version,
        },
    }
    .to_line()
    .into_bytes()
}

/// One line of a stream (without its `\n`).
fn line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (0u64..5).prop_map(|id| hello(id, PROTOCOL_VERSION)),
        (0u64..5).prop_map(|id| hello(id, PROTOCOL_VERSION + 1)),
        (0u64..5)
            .prop_map(|id| format!(r#"{{"id":{id},"type":"status","project":null}}"#).into_bytes()),
        (0u64..5).prop_map(|id| format!(r#"{{"id":{id},"type":"reboot"}}"#).into_bytes()),
        Just(b"not json at all".to_vec()),
        Just(Vec::new()),
        Just(b"{\"id\":1,\"type\":\"status\",\"project\":\"\xff\xfe\"}".to_vec()),
        (MAX - 2..MAX + 40).prop_map(|n| vec![b'x'; n]),
        prop::collection::vec(
            any::<u8>().prop_filter("no newline", |b| *b != b'\n'),
            0..40
        ),
    ]
}

fn check_frame(frame: &ResponseFrame) -> Result<(), TestCaseError> {
    prop_assert!(frame.ok.is_none() != frame.err.is_none(), "{frame:?}");
    if frame.id.is_none() {
        prop_assert_eq!(
            frame.err.as_ref().map(|e| e.kind),
            Some(ErrorKind::Protocol)
        );
    }
    let line = frame.to_line();
    prop_assert!(!line.contains('\n'));
    let back = ResponseFrame::parse_line(&line);
    prop_assert_eq!(back.as_ref(), Some(frame));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn line_sequences_obey_the_protocol_rules(
        lines in prop::collection::vec(line(), 0..12),
        trailing_newline in any::<bool>(),
        chunk in 1usize..80,
    ) {
        let mut stream = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            stream.extend_from_slice(l);
            if i + 1 < lines.len() || trailing_newline {
                stream.push(b'\n');
            }
        }

        // 1. The splitter, fed in chunks, gives the stream cut at each `\n`, up to the first
        //    line over the bound, whatever the chunk size.
        let mut buffer = LineBuffer::new(MAX);
        let mut got: Vec<Result<Vec<u8>, ()>> = Vec::new();
        'feed: for piece in stream.chunks(chunk) {
            let mut pending = piece;
            while !pending.is_empty() {
                match buffer.feed(pending) {
                    Ok((used, line)) => {
                        prop_assert!(used >= 1 && used <= pending.len());
                        pending = &pending[used..];
                        got.extend(line.map(Ok));
                    }
                    Err(_) => {
                        got.push(Err(()));
                        break 'feed;
                    }
                }
            }
        }
        if got.last() != Some(&Err(())) {
            got.extend(buffer.finish().map(Ok));
        }
        let mut expected: Vec<Result<Vec<u8>, ()>> = Vec::new();
        let mut segments: Vec<&[u8]> = stream.split(|&b| b == b'\n').collect();
        if segments.last().is_some_and(|l| l.is_empty()) {
            segments.pop();
        }
        for segment in segments {
            if segment.len() > MAX {
                expected.push(Err(()));
                break;
            }
            expected.push(Ok(segment.to_vec()));
        }
        prop_assert_eq!(&got, &expected);

        // 2. The connection's rules: nothing served before a hello with our version has been
        //    answered; hello answered once; after a close nothing is served or answered; an error
        //    without an id is a `protocol` error.
        let mut conn = ServerConnection::new("proptest");
        let mut answered_hello = false;
        for line in &got {
            let step = match line {
                Ok(line) => conn.on_line(line),
                Err(()) => conn.on_line_too_long(LineTooLong { max: MAX }),
            };
            match step {
                Step::Skip => {}
                Step::Hello { .. } => {
                    prop_assert!(!answered_hello, "hello answered twice");
                    answered_hello = true;
                }
                Step::Serve(frame) => {
                    prop_assert!(answered_hello, "served {:?} before hello", frame);
                    let is_hello = matches!(frame.request, Request::Hello { .. });
                    prop_assert!(!is_hello, "served a second hello");
                }
                Step::Close(frame) => {
                    check_frame(&frame)?;
                    prop_assert!(conn.is_closed());
                    let status = br#"{"id":1,"type":"status","project":null}"#;
                    prop_assert_eq!(conn.on_line(status), Step::Skip);
                    prop_assert_eq!(conn.on_line(&hello(9, PROTOCOL_VERSION)), Step::Skip);
                    break;
                }
            }
        }
    }
}
