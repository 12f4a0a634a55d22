//! Drives a run: health check, optional warm-up, the measured phase, report.
//!
//! Three ways of generating load share one code path each:
//! * closed loop (`sequential`, `concurrent`, profiles): N worker tasks, each
//!   sending its next request when the previous one finished; a profile adds a
//!   controller that changes how many of the workers are active over time;
//! * open loop (`rate`): a generator that starts request `i` at its scheduled
//!   time whatever happened to earlier requests, with latency measured from
//!   that scheduled time.
//!
//! Cancelling the token (Ctrl-C in the binary) stops generating, abandons
//! requests in flight, and still returns a report of what ran.
//!
//! A profile run also records each request in the recorder of the stage it
//! was sent in, for the per-stage figures of the report.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::Target;
use crate::config::{Config, Mode, Stop};
use crate::profile::{self, Stage};
use crate::progress::{Goal, Progress};
use crate::report::{LatencyOrigin, Report, ScheduleReport, error_rate, passes, per_second};
use crate::schedule::{Lag, RateSchedule};
use crate::stage_report::stage_reports;
use crate::stats::{Live, Recorder};

/// How often a profile's controller re-computes the number of active users
/// within a stage (it also wakes exactly at each stage boundary, so a jump
/// such as the start of a spike is applied on time, and the stage a request
/// is counted in matches the number of users it was sent under).
const PROFILE_TICK: Duration = Duration::from_millis(100);

/// Runs the configured load test against a live service.
///
/// This is the whole tool minus argument parsing and printing, so an
/// end-to-end test can run it in-process and inspect the [`Report`]. A failed
/// health check is returned as an error wrapping
/// [`crate::client::HealthCheckError`]; failed *requests* are not errors, they
/// are counted in the report (use [`Report::passed`]).
pub async fn run(config: &Config) -> anyhow::Result<Report> {
    run_with_cancel(config, CancellationToken::new()).await
}

/// [`run`], stoppable early through `cancel` (the binary wires it to Ctrl-C).
pub async fn run_with_cancel(config: &Config, cancel: CancellationToken) -> anyhow::Result<Report> {
    config.validate()?;
    let target = Arc::new(Target::new(config)?);
    target.health_check().await?;
    let run_id = format!("{:08x}", rand::random::<u32>());

    let mut warmup_requests = 0;
    if let Some(warmup) = config.warmup {
        let plan = Plan::warmup(config, warmup);
        let out = execute(
            &target,
            &plan,
            &format!("lt-{run_id}-w"),
            config.show_progress,
            "warm-up",
            &cancel,
        )
        .await?;
        warmup_requests = out.recorder.requests();
    }

    let plan = Plan::measured(config);
    let out = if cancel.is_cancelled() {
        PhaseOutcome::default()
    } else {
        let label = match config.profile {
            Some(p) => p.name(),
            None => "load",
        };
        execute(
            &target,
            &plan,
            &format!("lt-{run_id}"),
            config.show_progress,
            label,
            &cancel,
        )
        .await?
    };

    Ok(build_report(
        config,
        &plan,
        run_id,
        warmup_requests,
        cancel.is_cancelled(),
        out,
    ))
}

/// What one phase (warm-up or measured) does.
#[derive(Debug, Clone)]
enum Plan {
    /// `workers` closed-loop users until `stop`.
    Closed { workers: usize, stop: Stop },
    /// Closed-loop users varying over the stages of a profile.
    Profile { stages: Vec<Stage> },
    /// Open loop at a fixed rate until `stop`.
    Open {
        schedule: RateSchedule,
        stop: Stop,
        max_in_flight: usize,
    },
}

impl Plan {
    /// The plan for the measured phase.
    fn measured(config: &Config) -> Self {
        if let Some(p) = config.profile {
            let total = config
                .profile_duration
                .unwrap_or_else(|| p.default_duration());
            return Plan::Profile {
                stages: profile::stages(p, config.concurrency, total, config.spike_multiplier),
            };
        }
        Self::fixed(config, config.stop)
    }

    /// Warm-up: the same kind of load (a profile's base level) for `duration`.
    fn warmup(config: &Config, duration: Duration) -> Self {
        Self::fixed(config, Stop::Duration(duration))
    }

    fn fixed(config: &Config, stop: Stop) -> Self {
        match (config.mode, config.rate.and_then(RateSchedule::new)) {
            (Mode::Rate, Some(schedule)) => Plan::Open {
                schedule,
                stop,
                max_in_flight: config.max_in_flight,
            },
            (Mode::Sequential, _) => Plan::Closed { workers: 1, stop },
            // `validate` guarantees a rate in rate mode; closed loop is the safe fallback.
            (Mode::Concurrent | Mode::Rate, _) => Plan::Closed {
                workers: config.concurrency,
                stop,
            },
        }
    }

    fn goal(&self) -> Goal {
        match self {
            Plan::Closed { stop, .. } | Plan::Open { stop, .. } => match *stop {
                Stop::Count(n) => Goal::Count(n),
                Stop::Duration(d) => Goal::Duration(d),
            },
            Plan::Profile { stages } => Goal::Duration(profile::total_duration(stages)),
        }
    }
}

/// What a phase produced.
#[derive(Debug, Default)]
struct PhaseOutcome {
    recorder: Recorder,
    /// One recorder per profile stage (empty outside profiles).
    stages: Vec<Recorder>,
    elapsed: Duration,
    lag: Lag,
}

/// The whole phase's recorder plus, for profiles, one per stage; behind one
/// mutex so a request is recorded in both under a single lock.
#[derive(Debug, Default)]
struct Recorders {
    total: Recorder,
    stages: Vec<Recorder>,
}

/// Tells which stage of a profile a moment falls in.
#[derive(Debug)]
struct StageClock {
    start: Instant,
    stages: Vec<Stage>,
}

impl StageClock {
    /// Index of the stage running at `at`. A request sent after the last
    /// stage ended (the instant the timer fires) counts towards the last
    /// stage, so the stages always add up to the whole run.
    fn index(&self, at: Instant) -> usize {
        let elapsed = at.saturating_duration_since(self.start);
        profile::stage_index_at(&self.stages, elapsed)
            .unwrap_or_else(|| self.stages.len().saturating_sub(1))
    }
}

/// Everything a worker or request task needs, shared by reference count.
struct Shared {
    target: Arc<Target>,
    live: Arc<Live>,
    recorder: Mutex<Recorders>,
    id_prefix: String,
    /// Set when the user interrupts: abandon requests in flight.
    cancel: CancellationToken,
}

impl Shared {
    /// Records one finished request (open loop: with both latencies); `stage`
    /// is the profile stage it was sent in, if any.
    fn record(
        &self,
        outcome: Result<(), crate::verify::Failure>,
        latency: Duration,
        service: Duration,
        stage: Option<usize>,
    ) {
        self.live.finish(outcome.is_ok());
        let mut recorders = self.recorder.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(rec) = stage.and_then(|i| recorders.stages.get_mut(i)) {
            rec.record_open(outcome.clone(), latency, service);
        }
        recorders.total.record_open(outcome, latency, service);
    }

    /// Sends request `n` unless interrupted; `None` means it was abandoned.
    async fn send(&self, n: u64) -> Option<Result<(), crate::verify::Failure>> {
        let id = format!("{}-{n}", self.id_prefix);
        self.live.start();
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => None,
            outcome = self.target.send(&id, n) => Some(outcome),
        }
    }
}

async fn execute(
    target: &Arc<Target>,
    plan: &Plan,
    id_prefix: &str,
    show_progress: bool,
    label: &str,
    cancel: &CancellationToken,
) -> anyhow::Result<PhaseOutcome> {
    let live = Arc::new(Live::default());
    let stage_count = match plan {
        Plan::Profile { stages } => stages.len(),
        Plan::Closed { .. } | Plan::Open { .. } => 0,
    };
    let shared = Arc::new(Shared {
        target: Arc::clone(target),
        live: Arc::clone(&live),
        recorder: Mutex::new(Recorders {
            total: Recorder::new(),
            stages: vec![Recorder::new(); stage_count],
        }),
        id_prefix: id_prefix.to_owned(),
        cancel: cancel.clone(),
    });
    let progress = Progress::start(
        show_progress,
        label,
        plan.goal(),
        Arc::clone(&live),
        matches!(plan, Plan::Profile { .. }),
    );
    let started = Instant::now();
    let result = match plan {
        Plan::Closed { workers, stop } => {
            live.active_users.store(*workers, Ordering::Relaxed);
            run_closed(&shared, *workers, *stop, None).await
        }
        Plan::Profile { stages } => run_profile(&shared, stages).await,
        Plan::Open {
            schedule,
            stop,
            max_in_flight,
        } => run_open(&shared, *schedule, *stop, *max_in_flight).await,
    };
    let elapsed = started.elapsed();
    progress.finish().await;
    let lag = result?;
    let recorders = std::mem::take(
        &mut *shared
            .recorder
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
    );
    Ok(PhaseOutcome {
        recorder: recorders.total,
        stages: recorders.stages,
        elapsed,
        lag,
    })
}

/// What the closed-loop workers of a profile need from its controller.
struct ProfileControl {
    /// How many workers may send right now.
    users: watch::Receiver<usize>,
    /// Cancelled when the profile is over.
    done: CancellationToken,
    /// Which stage a send belongs to.
    clock: Arc<StageClock>,
}

/// Closed loop: `workers` tasks; under a profile only the first
/// `*control.users` of them send, the rest wait for the number to change.
async fn run_closed(
    shared: &Arc<Shared>,
    workers: usize,
    stop: Stop,
    control: Option<ProfileControl>,
) -> anyhow::Result<Lag> {
    // The phase ends on the user's cancel, the profile's end, or the duration.
    let phase = match &control {
        Some(c) => c.done.clone(),
        None => shared.cancel.child_token(),
    };
    let clock = control.as_ref().map(|c| Arc::clone(&c.clock));
    let timer = match stop {
        Stop::Duration(d) => {
            let phase = phase.clone();
            let live = Arc::clone(&shared.live);
            Some(tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep(d) => {
                        live.stop_sending();
                        phase.cancel();
                    }
                    _ = phase.cancelled() => {}
                }
            }))
        }
        Stop::Count(_) => None,
    };
    let limit = match stop {
        Stop::Count(n) => n,
        Stop::Duration(_) => u64::MAX,
    };
    let next = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::with_capacity(workers);
    for worker in 0..workers {
        let shared = Arc::clone(shared);
        let next = Arc::clone(&next);
        let phase = phase.clone();
        let clock = clock.clone();
        let mut active = control.as_ref().map(|c| c.users.clone());
        handles.push(tokio::spawn(async move {
            loop {
                if phase.is_cancelled() {
                    break;
                }
                if let Some(rx) = active.as_mut() {
                    let allowed = *rx.borrow_and_update();
                    if worker >= allowed {
                        tokio::select! {
                            changed = rx.changed() => if changed.is_err() { break },
                            _ = phase.cancelled() => break,
                        }
                        continue;
                    }
                }
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= limit {
                    shared.live.stop_sending();
                    break;
                }
                let sent = Instant::now();
                let stage = clock.as_ref().map(|c| c.index(sent));
                let Some(outcome) = shared.send(n).await else {
                    break;
                };
                let latency = sent.elapsed();
                shared.record(outcome, latency, latency, stage);
            }
        }));
    }
    let mut joined = Ok(());
    for h in handles {
        if let Err(e) = h.await {
            joined = Err(anyhow::anyhow!("a load worker failed: {e}"));
        }
    }
    // Count-stopped runs end before the timer; make sure it does not linger.
    phase.cancel();
    if let Some(t) = timer {
        let _ = t.await;
    }
    joined.map(|()| Lag::default())
}

/// Profile: a controller samples the stage table and publishes the number of
/// active users; `peak` workers are spawned and park when not needed.
async fn run_profile(shared: &Arc<Shared>, stages: &[Stage]) -> anyhow::Result<Lag> {
    let peak = profile::peak_concurrency(stages);
    let initial = profile::concurrency_at(stages, Duration::ZERO).unwrap_or(1);
    let (tx, rx) = watch::channel(initial);
    let done = shared.cancel.child_token();
    let start = Instant::now();
    let clock = Arc::new(StageClock {
        start,
        stages: stages.to_vec(),
    });
    let controller = {
        let stages = stages.to_vec();
        let done = done.clone();
        let live = Arc::clone(&shared.live);
        tokio::spawn(async move {
            loop {
                match profile::concurrency_at(&stages, start.elapsed()) {
                    Some(users) => {
                        live.active_users.store(users, Ordering::Relaxed);
                        tx.send_if_modified(|current| {
                            let changed = *current != users;
                            *current = users;
                            changed
                        });
                    }
                    None => {
                        live.stop_sending();
                        done.cancel();
                        break;
                    }
                }
                let pause = profile::until_next_stage(&stages, start.elapsed())
                    .map_or(PROFILE_TICK, |d| d.min(PROFILE_TICK));
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = done.cancelled() => break,
                }
            }
        })
    };
    let total = profile::total_duration(stages);
    let result = run_closed(
        shared,
        peak,
        Stop::Duration(total),
        Some(ProfileControl {
            users: rx,
            done: done.clone(),
            clock,
        }),
    )
    .await;
    done.cancel();
    let _ = controller.await;
    result
}

/// Open loop at a fixed rate. Request `i` is due at `start + i / rate`; its
/// latency is measured from then. At most `max_in_flight` requests are
/// outstanding; waiting for a slot makes sends late, which is reported.
async fn run_open(
    shared: &Arc<Shared>,
    schedule: RateSchedule,
    stop: Stop,
    max_in_flight: usize,
) -> anyhow::Result<Lag> {
    let slots = Arc::new(Semaphore::new(max_in_flight));
    let mut lag = Lag::default();
    let start = Instant::now();
    let mut i: u64 = 0;
    loop {
        let due = match stop {
            Stop::Count(n) => i < n,
            Stop::Duration(d) => schedule.within(i, d),
        };
        if !due {
            break;
        }
        let Some(intended) = start.checked_add(schedule.offset(i)) else {
            break;
        };
        if intended > Instant::now() {
            tokio::select! {
                biased;
                _ = shared.cancel.cancelled() => break,
                _ = tokio::time::sleep_until(intended) => {}
            }
        }
        let permit = tokio::select! {
            biased;
            _ = shared.cancel.cancelled() => break,
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let sent = Instant::now();
        lag.record(sent.saturating_duration_since(intended));
        let shared = Arc::clone(shared);
        let n = i;
        tokio::spawn(async move {
            if let Some(outcome) = shared.send(n).await {
                let done = Instant::now();
                shared.record(outcome, done - intended, done - sent, None);
            }
            drop(permit);
        });
        i += 1;
    }
    shared.live.stop_sending();
    // Wait for everything still in flight: all slots free again.
    let all = u32::try_from(max_in_flight).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(all).await;
    Ok(lag)
}

fn build_report(
    config: &Config,
    plan: &Plan,
    run_id: String,
    warmup_requests: u64,
    interrupted: bool,
    out: PhaseOutcome,
) -> Report {
    let rec = &out.recorder;
    let requests = rec.requests();
    let failures = rec.failures();
    let secs = out.elapsed.as_secs_f64();
    let (stages, concurrency) = match plan {
        Plan::Profile { stages } => (
            Some(stage_reports(stages, &out.stages, out.elapsed)),
            Some(profile::peak_concurrency(stages)),
        ),
        Plan::Closed { workers, .. } => (None, Some(*workers)),
        Plan::Open { .. } => (None, None),
    };
    let open = matches!(plan, Plan::Open { .. });
    Report {
        url: config.url.clone(),
        run_id,
        mode: config.mode,
        profile: config.profile,
        stages,
        concurrency,
        target_rate: if open { config.rate } else { None },
        timeout_ms: config.timeout.as_secs_f64() * 1000.0,
        interrupted,
        warmup_requests,
        duration_secs: secs,
        requests,
        successes: rec.successes(),
        failures,
        error_rate: error_rate(requests, failures),
        max_error_rate: config.max_error_rate,
        passed: passes(requests, failures, config.max_error_rate),
        throughput_rps: per_second(requests, secs),
        requests_per_second: per_second(requests, secs),
        successes_per_second: per_second(rec.successes(), secs),
        failures_by_kind: rec.failures_by_kind(),
        failures_by_status: rec.failures_by_status(),
        latency_from: if open {
            LatencyOrigin::IntendedSend
        } else {
            LatencyOrigin::Send
        },
        latency_ms: rec.latency(),
        service_latency_ms: if open { rec.service_latency() } else { None },
        schedule: open.then(|| ScheduleReport::new(&out.lag, config.max_late_fraction)),
        sample_errors: rec.samples().to_vec(),
    }
}
