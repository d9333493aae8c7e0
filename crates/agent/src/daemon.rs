//! `agent daemon`: the long-lived process that owns `/var/lib/compose-fleet` and answers protocol
//! requests on a unix socket (`/run/compose-fleet/agent.sock`). One per host, guaranteed by an
//! exclusive `flock` on `agent.lock`; `agent rpc` connects to it (and starts it when needed).
//!
//! Each connection is a sequence of request lines; each request is answered by [`dispatch`] in its
//! own task, so a streaming request (logs, exec) does not block the others. `dispatch` is the seam
//! where the supervisor plugs in `Apply`/`Status`/`Logs`/`Exec`/`Remove`.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use crate::proto::{
    AgentError, ErrorKind, Request, RequestFrame, Response, ResponseFrame, MAX_LINE_BYTES,
    PROTOCOL_VERSION,
};
use crate::store::{write_atomic, Paths};

/// What every request handler can reach.
#[derive(Debug)]
pub struct Context {
    pub paths: Paths,
}

/// The replies to one request. Streams send [`Replies::more`] frames, then exactly one final
/// [`Replies::ok`] or [`Replies::err`] (which consume the handle).
#[derive(Debug, Clone)]
pub struct Replies {
    id: u64,
    tx: mpsc::Sender<ResponseFrame>,
}

impl Replies {
    /// One more reply of a stream. Returns false once the client is gone (stop streaming).
    pub async fn more(&self, response: Response) -> bool {
        let mut frame = ResponseFrame::ok(self.id, response);
        frame.more = true;
        self.tx.send(frame).await.is_ok()
    }

    pub async fn ok(self, response: Response) {
        let _ = self.tx.send(ResponseFrame::ok(self.id, response)).await;
    }

    pub async fn err(self, error: AgentError) {
        let _ = self.tx.send(ResponseFrame::err(self.id, error)).await;
    }
}

/// Another daemon holds the lock: not an error for `agent rpc`, which then just connects.
#[derive(Debug)]
pub struct AlreadyRunning;

/// Runs the daemon until SIGTERM/SIGINT. Returns `Ok(Err(AlreadyRunning))` when another daemon
/// holds the lock.
pub async fn run(paths: Paths) -> io::Result<Result<(), AlreadyRunning>> {
    std::fs::create_dir_all(&paths.run).map_err(|e| with_path(e, &paths.run))?;
    std::fs::create_dir_all(&paths.state).map_err(|e| with_path(e, &paths.state))?;
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(paths.lock())
        .map_err(|e| with_path(e, &paths.lock()))?;
    // Held (and released by the kernel when we exit) for the daemon's whole life.
    let _lock =
        match nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(Err(AlreadyRunning)),
            Err((_, e)) => return Err(with_path(e.into(), &paths.lock())),
        };
    write_atomic(
        &paths.pid_file(),
        format!("{}\n", std::process::id()).as_bytes(),
        0o644,
    )?;
    // We hold the lock, so a socket file left here is stale (a crashed daemon).
    let socket = paths.socket();
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).map_err(|e| with_path(e, &socket))?;
    // Only root (the SSH user that runs `agent rpc`) may talk to the daemon.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
    eprintln!(
        "compose-fleet-agent {} daemon: listening on {} (pid {})",
        crate::AGENT_VERSION,
        socket.display(),
        std::process::id()
    );

    let ctx = Arc::new(Context { paths });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => { tokio::spawn(serve(ctx.clone(), stream)); }
                Err(e) => eprintln!("accept: {e}"),
            },
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    eprintln!("daemon: stopping");
    let _ = std::fs::remove_file(ctx.paths.pid_file());
    Ok(Ok(()))
}

fn with_path(e: io::Error, path: &std::path::Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Serves one connection: request lines in, reply lines out, until the client closes its side and
/// every request has had its final reply.
async fn serve(ctx: Arc<Context>, stream: UnixStream) {
    let (read, mut write) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<ResponseFrame>(64);
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            let mut line = frame.to_line();
            line.push('\n');
            if write.write_all(line.as_bytes()).await.is_err() {
                break;
            }
        }
        let _ = write.shutdown().await;
    });

    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        match read_line_limited(&mut reader, &mut line).await {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                let _ = tx
                    .send(bad_request(0, format!("reading request: {e}")))
                    .await;
                break;
            }
        }
        let text = String::from_utf8_lossy(&line);
        if text.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<RequestFrame>(text.trim()) {
            Ok(frame) => {
                let replies = Replies {
                    id: frame.id,
                    tx: tx.clone(),
                };
                tokio::spawn(dispatch(ctx.clone(), frame.request, replies));
            }
            Err(e) => {
                // Recover the id if the line at least has one, so the client can match the error.
                let id = serde_json::from_str::<serde_json::Value>(text.trim())
                    .ok()
                    .and_then(|v| v.get("id").and_then(|i| i.as_u64()))
                    .unwrap_or(0);
                let _ = tx
                    .send(bad_request(id, format!("malformed request: {e}")))
                    .await;
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}

fn bad_request(id: u64, message: String) -> ResponseFrame {
    ResponseFrame::err(
        id,
        AgentError {
            kind: ErrorKind::BadRequest,
            message,
            causes: vec![],
        },
    )
}

/// Reads one `\n`-terminated line of at most [`MAX_LINE_BYTES`]; returns the bytes read (0 at EOF).
async fn read_line_limited<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
) -> io::Result<usize> {
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok(line.len());
        }
        let (used, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        line.extend_from_slice(&buf[..used]);
        reader.consume(used);
        if line.len() > MAX_LINE_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("line longer than {MAX_LINE_BYTES} bytes"),
            ));
        }
        if done {
            return Ok(line.len());
        }
    }
}

/// Answers one request. **The seam**: the supervisor's requests are wired in here, one arm each.
pub async fn dispatch(ctx: Arc<Context>, request: Request, replies: Replies) {
    match request {
        Request::Hello { protocol_version } => hello(&ctx, protocol_version, replies).await,
        Request::Apply(_) => not_yet("apply", replies).await,
        Request::Status { .. } => not_yet("status", replies).await,
        Request::Logs(_) => not_yet("logs", replies).await,
        Request::Exec(_) => not_yet("exec", replies).await,
        Request::Remove { .. } => not_yet("remove", replies).await,
    }
}

async fn hello(ctx: &Context, protocol_version: u32, replies: Replies) {
    if protocol_version != PROTOCOL_VERSION {
        return replies
            .err(AgentError {
                kind: ErrorKind::VersionMismatch,
                message: format!(
                    "the agent speaks protocol {PROTOCOL_VERSION}, the client {protocol_version}"
                ),
                causes: vec![format!("agent version {}", crate::AGENT_VERSION)],
            })
            .await;
    }
    let state = ctx.paths.state.clone();
    // Reading /proc and statvfs may block briefly; keep it off the reactor.
    match tokio::task::spawn_blocking(move || crate::facts::collect(&state)).await {
        Ok(facts) => replies.ok(Response::Hello(facts)).await,
        Err(e) => {
            replies
                .err(AgentError {
                    kind: ErrorKind::Host,
                    message: "collecting host facts failed".into(),
                    causes: vec![e.to_string()],
                })
                .await
        }
    }
}

async fn not_yet(what: &str, replies: Replies) {
    replies
        .err(AgentError {
            kind: ErrorKind::Host,
            message: format!("`{what}` is not yet implemented by this agent"),
            causes: vec![],
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_longer_than_the_limit_are_refused() {
        let data = vec![b'x'; MAX_LINE_BYTES + 10];
        let mut reader = BufReader::new(&data[..]);
        let mut line = Vec::new();
        assert!(read_line_limited(&mut reader, &mut line).await.is_err());
    }

    #[tokio::test]
    async fn reads_lines_one_at_a_time() {
        let data = b"{\"a\":1}\n{\"b\":2}\nrest";
        let mut reader = BufReader::new(&data[..]);
        let mut line = Vec::new();
        assert_eq!(
            read_line_limited(&mut reader, &mut line).await.ok(),
            Some(8)
        );
        line.clear();
        assert_eq!(
            read_line_limited(&mut reader, &mut line).await.ok(),
            Some(8)
        );
        line.clear();
        assert_eq!(
            read_line_limited(&mut reader, &mut line).await.ok(),
            Some(4)
        );
        line.clear();
        assert_eq!(
            read_line_limited(&mut reader, &mut line).await.ok(),
            Some(0)
        );
    }
}
