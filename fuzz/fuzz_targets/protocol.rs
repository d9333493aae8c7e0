//! Feeds arbitrary bytes to the agent's side of a connection, as the daemon does: through the
//! bounded line splitter (in chunks whose sizes the input chooses) into the connection's rules.
//! Must never panic; and the rules must hold for every sequence:
//! - nothing is served before a `hello` with the right version has been answered;
//! - after a close, nothing more is served or answered;
//! - an error without an id is a `protocol` error about a line that was not a request;
//! - every frame the agent would write reads back, unchanged, on the CLI's side;
//! - the splitter gives the same lines whatever the chunk sizes, and never holds more than its
//!   bound.
//!
//! `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run protocol`
#![no_main]

use compose_fleet_proto::{
    ErrorKind, LineBuffer, LineTooLong, Request, RequestFrame, ResponseFrame, ServerConnection,
    Step, PROTOCOL_VERSION,
};
use libfuzzer_sys::fuzz_target;

/// A small bound, so that the fuzzer reaches "too long" with small inputs.
const MAX: usize = 256;

fn check_frame(frame: &ResponseFrame) {
    assert!(frame.ok.is_none() != frame.err.is_none(), "{frame:?}");
    if frame.id.is_none() {
        assert_eq!(frame.err.as_ref().map(|e| e.kind), Some(ErrorKind::Protocol));
    }
    let line = frame.to_line();
    assert!(!line.contains('\n'));
    assert_eq!(ResponseFrame::parse_line(&line).as_ref(), Some(frame));
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    // The first byte: whether a valid hello comes first (to reach the served state often), and
    // the chunk size the stream arrives in.
    let mut stream = Vec::new();
    if control & 1 == 1 {
        let hello = RequestFrame {
            id: 0,
            request: Request::Hello {
                protocol_version: PROTOCOL_VERSION,
            },
        };
        stream.extend_from_slice(hello.to_line().as_bytes());
        stream.push(b'\n');
    }
    stream.extend_from_slice(rest);
    let chunk = usize::from(control >> 1).max(1);

    // 1. The splitter, fed in chunks, against the oracle: the stream cut at each `\n`, up to the
    //    first segment over the bound.
    let mut lines = LineBuffer::new(MAX);
    let mut got: Vec<Result<Vec<u8>, ()>> = Vec::new();
    'feed: for piece in stream.chunks(chunk) {
        let mut pending = piece;
        while !pending.is_empty() {
            match lines.feed(pending) {
                Ok((used, line)) => {
                    assert!(used >= 1 && used <= pending.len());
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
        got.extend(lines.finish().map(Ok));
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
    assert_eq!(got, expected);

    // 2. The connection's rules over those lines.
    let mut conn = ServerConnection::new("fuzz");
    let mut answered_hello = false;
    for line in &got {
        let step = match line {
            Ok(line) => conn.on_line(line),
            Err(()) => conn.on_line_too_long(LineTooLong { max: MAX }),
        };
        match step {
            Step::Skip => {}
            Step::Hello { .. } => {
                assert!(!answered_hello, "hello answered twice");
                answered_hello = true;
            }
            Step::Serve(frame) => {
                assert!(answered_hello, "served {frame:?} before hello");
                assert!(!matches!(frame.request, Request::Hello { .. }));
            }
            Step::Close(frame) => {
                check_frame(&frame);
                assert!(conn.is_closed());
                // Whatever follows is ignored.
                let status = br#"{"id":1,"type":"status","project":null}"#;
                assert_eq!(conn.on_line(status), Step::Skip);
                assert_eq!(conn.on_line(line.as_deref().unwrap_or(&[])), Step::Skip);
                break;
            }
        }
    }
    // The CLI's reader never panics on what it might get back.
    for line in stream.split(|&b| b == b'\n') {
        if let Some(frame) = ResponseFrame::parse_line(&String::from_utf8_lossy(line)) {
            let _ = frame.to_line();
        }
    }
});
