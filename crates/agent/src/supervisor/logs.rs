//! `Logs`: every record of a service's containers from the shims' rotated JSON-lines files, and
//! with `follow` the new ones as they are written, across rotations — including containers that
//! start after the request (a redeploy, a restart policy's new pod), as `docker compose logs -f`
//! picks them up.

use super::*;

impl Supervisor {
    /// Streams log lines: each container's last `tail` lines since `since`, merged by time, then
    /// (with `follow`) new lines until the receiver is dropped.
    pub(super) async fn logs(
        &self,
        id: u64,
        req: LogsRequest,
        tx: &mpsc::Sender<ResponseFrame>,
    ) -> Result<Response, Failure> {
        // A host without the project yet may get it while we follow.
        let selected = match self.containers_of(&req.project, &req.services).await {
            Err(_) if req.follow => Vec::new(),
            other => other?,
        };
        let since_ms = req.since.map(|s| s.saturating_mul(1000)).unwrap_or(0);
        let mut all = Vec::new();
        let mut cursors = Vec::new();
        for c in &selected {
            let (records, cursor) = read_logs(&c.launch);
            let mut records: Vec<_> = records
                .into_iter()
                .filter(|r| r.time_ms >= since_ms)
                .collect();
            if let Some(tail) = req.tail {
                let skip = records.len().saturating_sub(tail as usize);
                records.drain(..skip);
            }
            all.extend(records.into_iter().map(|r| log_line(&c.launch, r)));
            cursors.push((c.launch.clone(), cursor));
        }
        all.sort_by_key(|l| l.time_ms);
        for line in all {
            if tx.send(more(id, Response::LogLine(line))).await.is_err() {
                return Ok(Response::End);
            }
        }
        if req.follow {
            // One follower per container incarnation (a replaced pod's containers are new
            // `ContainerRt`s, even under the same names): the old one's ends with it, the new
            // one's reads its log from the start.
            let mut followers: Vec<(Arc<ContainerRt>, tokio::task::JoinHandle<()>)> = selected
                .into_iter()
                .zip(cursors)
                .map(|(c, (launch, cursor))| {
                    let task = tokio::spawn(follow_log(id, launch, cursor, since_ms, tx.clone()));
                    (c, task)
                })
                .collect();
            loop {
                tokio::select! {
                    _ = tx.closed() => break,
                    _ = tokio::time::sleep(NEW_CONTAINERS_EVERY) => {}
                }
                let now = self
                    .containers_of(&req.project, &req.services)
                    .await
                    .unwrap_or_default();
                followers.retain(|(c, task)| {
                    let alive = now.iter().any(|n| Arc::ptr_eq(n, c));
                    if !alive {
                        task.abort();
                    }
                    alive
                });
                for c in now {
                    if !followers.iter().any(|(f, _)| Arc::ptr_eq(f, &c)) {
                        let task = tokio::spawn(follow_log(
                            id,
                            c.launch.clone(),
                            None,
                            since_ms,
                            tx.clone(),
                        ));
                        followers.push((c, task));
                    }
                }
            }
            for (_, task) in followers {
                task.abort();
            }
        }
        Ok(Response::End)
    }
}

/// How often a follow looks for containers that started after it.
const NEW_CONTAINERS_EVERY: Duration = Duration::from_millis(500);

/// Where a follower resumes: the current log file's inode and the offset read up to.
pub(super) type Cursor = Option<(u64, u64)>;

pub(super) fn log_line(launch: &Launch, r: logfile::Record) -> LogLine {
    LogLine {
        pod: launch.pod.clone(),
        service: launch.service.clone(),
        replica: launch.replica,
        stream: r.stream,
        time_ms: r.time_ms,
        line: r.line,
    }
}

/// Every record of a container plus a cursor at the end of its current file.
pub(super) fn read_logs(launch: &Launch) -> (Vec<logfile::Record>, Cursor) {
    use std::io::BufRead;
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for n in (1..launch.log_max_files.max(1)).rev() {
        if let Ok(f) = std::fs::File::open(logfile::log_path(&launch.dir, n)) {
            logfile::read_records(std::io::BufReader::new(f), &mut out);
        }
    }
    let Ok(f) = std::fs::File::open(logfile::log_path(&launch.dir, 0)) else {
        return (out, None);
    };
    let ino = f.metadata().map(|m| m.ino()).unwrap_or(0);
    let mut reader = std::io::BufReader::new(f);
    let mut offset = 0u64;
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            // A last line without its newline is being written: leave it to the follower.
            Ok(_) if !line.ends_with('\n') => break,
            Ok(n) => {
                offset += n as u64;
                if let Ok(r) = serde_json::from_str(&line) {
                    out.push(r);
                }
            }
        }
    }
    (out, Some((ino, offset)))
}

/// Sends new records of one container's log as they are written, across rotations.
pub(super) async fn follow_log(
    id: u64,
    launch: Launch,
    mut cursor: Cursor,
    since_ms: u64,
    tx: mpsc::Sender<ResponseFrame>,
) {
    use std::io::{BufRead, Seek, SeekFrom};
    use std::os::unix::fs::MetadataExt;
    let current = logfile::log_path(&launch.dir, 0);
    loop {
        let ino_now = std::fs::metadata(&current).map(|m| m.ino()).ok();
        // Read the rest of the file we were in (it may have been rotated to `.1`), then move on.
        let (ino, offset) = cursor.unwrap_or((ino_now.unwrap_or(0), 0));
        let path = if Some(ino) == ino_now {
            current.clone()
        } else {
            logfile::log_path(&launch.dir, 1)
        };
        let mut records = Vec::new();
        let mut new_offset = offset;
        if let Ok(mut f) = std::fs::File::open(&path) {
            if f.metadata().map(|m| m.ino()).ok() == Some(ino)
                && f.seek(SeekFrom::Start(offset)).is_ok()
            {
                let mut reader = std::io::BufReader::new(f);
                let mut line = String::new();
                loop {
                    line.clear();
                    match reader.read_line(&mut line) {
                        Ok(n) if n > 0 && line.ends_with('\n') => {
                            new_offset += n as u64;
                            if let Ok(r) = serde_json::from_str::<logfile::Record>(&line) {
                                records.push(r);
                            }
                        }
                        _ => break,
                    }
                }
            }
        }
        for r in records.into_iter().filter(|r| r.time_ms >= since_ms) {
            if tx
                .send(more(id, Response::LogLine(log_line(&launch, r))))
                .await
                .is_err()
            {
                return;
            }
        }
        cursor = match ino_now {
            Some(now) if now != ino => Some((now, 0)),
            Some(_) => Some((ino, new_offset)),
            None => None,
        };
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = tx.closed() => return,
        }
    }
}
