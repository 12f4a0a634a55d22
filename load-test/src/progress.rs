//! The live progress bar on stderr.
//!
//! A background task samples the [`Live`] counters four times a second and
//! shows throughput over the last second plus the error count, so a human can
//! see a run going wrong without waiting for the report. Nothing is printed per
//! request. When disabled (stderr is not a terminal, `--json`, or a library
//! caller) no task is spawned at all.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::stats::Live;

/// How often the bar is refreshed.
const TICK: Duration = Duration::from_millis(250);
/// Window over which the live req/s figure is computed.
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// What the bar measures progress against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    /// A number of requests.
    Count(u64),
    /// A length of time.
    Duration(Duration),
}

/// Throughput over a sliding window of `(time, completed)` samples.
#[derive(Debug, Default)]
pub struct RateWindow {
    samples: VecDeque<(Instant, u64)>,
}

impl RateWindow {
    /// Adds a sample and returns requests per second over the window.
    pub fn update(&mut self, now: Instant, completed: u64) -> f64 {
        self.samples.push_back((now, completed));
        while self.samples.len() > 2
            && self
                .samples
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
        {
            self.samples.pop_front();
        }
        match self.samples.front() {
            Some((t0, c0)) => {
                let secs = now.duration_since(*t0).as_secs_f64();
                if secs > 0.0 {
                    completed.saturating_sub(*c0) as f64 / secs
                } else {
                    0.0
                }
            }
            None => 0.0,
        }
    }
}

/// The text after the bar: live throughput, errors, and active users when a
/// profile is varying them.
pub fn message(rate: f64, failed: u64, users: Option<usize>) -> String {
    let errors = if failed == 1 { "error" } else { "errors" };
    match users {
        Some(u) => format!("{rate:.0} req/s, {failed} {errors}, {u} users"),
        None => format!("{rate:.0} req/s, {failed} {errors}"),
    }
}

/// A running progress bar; call [`Progress::finish`] to remove it.
#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
    ticker: Option<JoinHandle<()>>,
    stop: CancellationToken,
}

impl Progress {
    /// A progress handle that draws nothing.
    pub fn disabled() -> Self {
        Self {
            bar: None,
            ticker: None,
            stop: CancellationToken::new(),
        }
    }

    /// Starts drawing (if `enabled`) a bar labelled `label` towards `goal`.
    pub fn start(
        enabled: bool,
        label: &str,
        goal: Goal,
        live: Arc<Live>,
        show_users: bool,
    ) -> Self {
        if !enabled {
            return Self::disabled();
        }
        let (len, template) = match goal {
            Goal::Count(n) => (
                n,
                "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
            ),
            Goal::Duration(d) => (
                u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
                "{prefix} [{elapsed_precise}] {wide_bar} {percent}% {msg}",
            ),
        };
        let style =
            ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar());
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr_with_hz(4))
            .with_style(style)
            .with_prefix(label.to_owned());
        let stop = CancellationToken::new();
        let ticker = {
            let bar = bar.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let mut window = RateWindow::default();
                let mut interval = tokio::time::interval(TICK);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = interval.tick() => {}
                    }
                    let now = Instant::now();
                    let completed = live.completed.load(Ordering::Relaxed);
                    let failed = live.failed.load(Ordering::Relaxed);
                    let users = show_users.then(|| live.active_users.load(Ordering::Relaxed));
                    let rate = window.update(now, completed);
                    match goal {
                        Goal::Count(_) => bar.set_position(completed),
                        Goal::Duration(_) => bar.set_position(
                            u64::try_from(now.duration_since(started).as_millis())
                                .unwrap_or(u64::MAX),
                        ),
                    }
                    bar.set_message(message(rate, failed, users));
                }
            })
        };
        Self {
            bar: Some(bar),
            ticker: Some(ticker),
            stop,
        }
    }

    /// Stops the refresher and clears the bar so the report prints cleanly.
    pub async fn finish(self) {
        self.stop.cancel();
        if let Some(t) = self.ticker {
            let _ = t.await;
        }
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_format() {
        assert_eq!(message(20_123.4, 0, None), "20123 req/s, 0 errors");
        assert_eq!(message(5.0, 1, Some(40)), "5 req/s, 1 error, 40 users");
    }

    #[test]
    fn rate_over_sliding_window() {
        let t0 = Instant::now();
        let mut w = RateWindow::default();
        assert_eq!(w.update(t0, 0), 0.0);
        let r = w.update(t0 + Duration::from_millis(500), 1000);
        assert!((r - 2000.0).abs() < 1e-6, "{r}");
        w.update(t0 + Duration::from_millis(1000), 2000);
        // After 3 s with no progress the old samples fall out of the window.
        w.update(t0 + Duration::from_millis(3000), 2000);
        let r = w.update(t0 + Duration::from_millis(3250), 2000);
        assert_eq!(r, 0.0);
    }

    #[tokio::test]
    async fn disabled_progress_is_inert() {
        let p = Progress::start(false, "x", Goal::Count(1), Arc::new(Live::default()), false);
        assert!(p.bar.is_none());
        p.finish().await;
    }
}
