//! The live progress bar on stderr.
//!
//! A background task samples the [`Live`] counters four times a second and
//! shows throughput over the last second plus the error count, so a human can
//! see a run going wrong without waiting for the report. Nothing is printed per
//! request. When disabled (stderr is not a terminal, `--json`, or a library
//! caller) no task is spawned at all.
//!
//! Once the runner stops sending ([`Live::stop_sending`]) the phase still waits
//! for the replies to requests already sent, which can take up to `--timeout`.
//! A full bar at that point would look finished while the tool is not, so the
//! bar is replaced by a spinner saying how many replies are still outstanding.

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

/// What the bar shows once sending is over: how many replies are still awaited.
pub fn draining_message(sent: u64, outstanding: u64) -> String {
    let replies = if outstanding == 1 { "reply" } else { "replies" };
    format!("all {sent} requests sent, waiting for {outstanding} outstanding {replies}")
}

/// Template of the second phase: no bar and no percentage, since nothing is
/// being counted towards the goal any more.
const DRAINING_TEMPLATE: &str = "{prefix} [{elapsed_precise}] {spinner} {msg}";

/// Per-refresh state of the bar: the throughput window and which of the two
/// phases (sending, then waiting for replies) is shown. Kept apart from the
/// ticker task so one refresh can be unit-tested on a hidden bar.
#[derive(Debug)]
struct Refresher {
    goal: Goal,
    started: Instant,
    show_users: bool,
    window: RateWindow,
    draining: bool,
}

impl Refresher {
    fn new(goal: Goal, started: Instant, show_users: bool) -> Self {
        Self {
            goal,
            started,
            show_users,
            window: RateWindow::default(),
            draining: false,
        }
    }

    /// Updates `bar` from the live counters at `now`.
    fn refresh(&mut self, bar: &ProgressBar, live: &Live, now: Instant) {
        let completed = live.completed.load(Ordering::Relaxed);
        let rate = self.window.update(now, completed);
        if live.is_sending_done() {
            if !self.draining {
                self.draining = true;
                bar.unset_length();
                bar.set_style(
                    ProgressStyle::with_template(DRAINING_TEMPLATE)
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
            }
            let sent = live.started.load(Ordering::Relaxed);
            bar.set_message(draining_message(sent, live.outstanding()));
            bar.tick();
            return;
        }
        let failed = live.failed.load(Ordering::Relaxed);
        let users = self
            .show_users
            .then(|| live.active_users.load(Ordering::Relaxed));
        match self.goal {
            Goal::Count(_) => bar.set_position(completed),
            Goal::Duration(_) => bar.set_position(
                u64::try_from(now.duration_since(self.started).as_millis()).unwrap_or(u64::MAX),
            ),
        }
        bar.set_message(message(rate, failed, users));
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
                let mut refresher = Refresher::new(goal, Instant::now(), show_users);
                let mut interval = tokio::time::interval(TICK);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = interval.tick() => {}
                    }
                    refresher.refresh(&bar, &live, Instant::now());
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

    #[test]
    fn draining_message_format() {
        assert_eq!(
            draining_message(4000, 12),
            "all 4000 requests sent, waiting for 12 outstanding replies"
        );
        assert_eq!(
            draining_message(1, 1),
            "all 1 requests sent, waiting for 1 outstanding reply"
        );
    }

    /// The issue: in rate mode the bar sat at 100 % while replies were still
    /// awaited. Once sending is done it must say so instead of showing a bar.
    #[test]
    fn after_sending_the_bar_shows_outstanding_replies() {
        let bar = ProgressBar::hidden();
        bar.set_length(2000);
        let live = Live::default();
        let t0 = Instant::now();
        let mut r = Refresher::new(Goal::Duration(Duration::from_secs(2)), t0, false);
        for _ in 0..10 {
            live.start();
        }
        for _ in 0..7 {
            live.finish(true);
        }
        r.refresh(&bar, &live, t0 + Duration::from_millis(500));
        assert_eq!(bar.position(), 500);
        assert_eq!(bar.length(), Some(2000));
        assert!(bar.message().ends_with("0 errors"), "{}", bar.message());

        live.stop_sending();
        r.refresh(&bar, &live, t0 + Duration::from_millis(2250));
        assert_eq!(bar.length(), None, "no bar (and no 100 %) while draining");
        assert_eq!(
            bar.message(),
            "all 10 requests sent, waiting for 3 outstanding replies"
        );
        live.finish(false);
        r.refresh(&bar, &live, t0 + Duration::from_millis(2500));
        assert_eq!(
            bar.message(),
            "all 10 requests sent, waiting for 2 outstanding replies"
        );
        assert!(!bar.is_finished());
    }

    #[tokio::test]
    async fn disabled_progress_is_inert() {
        let p = Progress::start(false, "x", Goal::Count(1), Arc::new(Live::default()), false);
        assert!(p.bar.is_none());
        p.finish().await;
    }
}
