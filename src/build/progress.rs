//! Bytes sent per host and image while built images are delivered: a bar per host and image on
//! a terminal, plain lines (at the start and every few seconds) otherwise, nothing when quiet.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::output;

/// How often a plain line repeats a transfer's progress.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

enum Mode {
    Quiet,
    Plain,
    Bars(MultiProgress),
}

struct Item {
    total: u64,
    sent: u64,
    started: Instant,
    last_line: Instant,
    bar: Option<ProgressBar>,
}

/// Shared by the delivery tasks of every host (they report from their own tasks).
pub struct DeliveryProgress {
    mode: Mode,
    items: Mutex<BTreeMap<(String, String), Item>>,
}

impl DeliveryProgress {
    /// Bars when stderr is a terminal (and not CI), plain lines otherwise.
    pub fn for_stderr() -> DeliveryProgress {
        let mode = if output::interactive() {
            Mode::Bars(MultiProgress::new())
        } else {
            Mode::Plain
        };
        DeliveryProgress {
            mode,
            items: Mutex::new(BTreeMap::new()),
        }
    }

    /// Reports nothing (`--json`, library callers).
    pub fn quiet() -> DeliveryProgress {
        DeliveryProgress {
            mode: Mode::Quiet,
            items: Mutex::new(BTreeMap::new()),
        }
    }

    /// `host` lacks `total` bytes of `reference`; sending starts.
    pub fn start(&self, host: &str, reference: &str, total: u64) {
        if matches!(self.mode, Mode::Quiet) || total == 0 {
            return;
        }
        let now = Instant::now();
        let bar = match &self.mode {
            Mode::Bars(multi) => {
                let bar = multi.add(ProgressBar::new(total));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix:<16} {bar:30} {bytes}/{total_bytes} {byter} {wide_msg}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                bar.set_prefix(host.to_string());
                bar.set_message(short(reference).to_string());
                Some(bar)
            }
            _ => {
                output::status(&format!(
                    "{host}: sending {} of {}",
                    human_bytes(total),
                    short(reference)
                ));
                None
            }
        };
        let mut items = self.items.lock().unwrap_or_else(|p| p.into_inner());
        items.insert(
            (host.to_string(), reference.to_string()),
            Item {
                total,
                sent: 0,
                started: now,
                last_line: now,
                bar,
            },
        );
    }

    /// `bytes` more of `reference` reached `host`.
    pub fn sent(&self, host: &str, reference: &str, bytes: u64) {
        if matches!(self.mode, Mode::Quiet) {
            return;
        }
        let mut items = self.items.lock().unwrap_or_else(|p| p.into_inner());
        let Some(item) = items.get_mut(&(host.to_string(), reference.to_string())) else {
            return;
        };
        item.sent += bytes;
        if let Some(bar) = &item.bar {
            bar.set_position(item.sent.min(item.total));
            return;
        }
        let now = Instant::now();
        if now.duration_since(item.last_line) >= PLAIN_EVERY && item.sent < item.total {
            item.last_line = now;
            let secs = now.duration_since(item.started).as_secs_f64().max(1e-3);
            output::status(&format!(
                "{host}: {} of {} of {} sent ({}/s)",
                human_bytes(item.sent),
                human_bytes(item.total),
                short(reference),
                human_bytes((item.sent as f64 / secs) as u64)
            ));
        }
    }

    /// Sending `reference` to `host` ended (the caller prints the outcome).
    pub fn finish(&self, host: &str, reference: &str) {
        let mut items = self.items.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(item) = items.remove(&(host.to_string(), reference.to_string())) {
            if let Some(bar) = item.bar {
                bar.finish_and_clear();
            }
        }
    }
}

/// `name@sha256:0123456789ab…` shortened to `name@sha256:0123456789ab`.
fn short(reference: &str) -> &str {
    match reference.find("@sha256:") {
        Some(at) => &reference[..(at + 20).min(reference.len())],
        None => reference,
    }
}

/// Decimal units, as `--max-upload-rate` reads them.
pub fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2} GB", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1} MB", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1} kB", n as f64 / 1e3),
        n => format!("{n} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_and_sizes_read_short() {
        assert_eq!(
            short("localhost/app-web@sha256:0123456789abcdef0123"),
            "localhost/app-web@sha256:0123456789ab"
        );
        assert_eq!(short("busybox:latest"), "busybox:latest");
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(101_099_926), "101.1 MB");
        assert_eq!(human_bytes(1_500_000_000), "1.50 GB");
    }
}
