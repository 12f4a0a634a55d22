//! Failure injection (the seed's FailureSimulator), for demos and chaos tests.
//!
//! All rates are 0 at start. Operators set rates in [0, 1] at run time through `/api/config`; each
//! request draws once and at most one fault applies. Every injected fault is counted in
//! `proxy_faults_injected_total{kind}` so a dashboard shows what was injected and what broke.
//! With FAULT_INJECTION=off ([`FailureInjection::disabled`]) nothing can switch it on: no
//! fault is ever drawn, whatever reaches `update`.

use std::sync::RwLock;
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Kinds of injected faults, as metric labels.
pub const FAULT_KINDS: &[&str] = &[
    "processing_error",
    "crash_before_ack",
    "slow_response",
    "response_timeout",
];

/// Longest delay of a slow response, in milliseconds (10 minutes).
pub const MAX_SLOW_RESPONSE_DELAY_MS: u64 = 600_000;

/// Allowance for rounding when the rates are added up: `0.1 + 0.2 + 0.3 + 0.4` is
/// `1.0000000000000002` in floating point and must still count as 1.
const SUM_TOLERANCE: f64 = 1e-9;

/// The injection settings. All rates are probabilities in [0, 1] and add up to at most 1: each
/// request draws once, so rates summing above 1 would leave the later kinds never drawn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({
    "processingErrorRate": 0.2, "crashBeforeAckRate": 0.1, "slowResponseRate": 0.0,
    "slowResponseDelayMs": 2000, "responseTimeoutRate": 0.0
}))]
pub struct FaultConfig {
    /// Reply with an error (the caller gets 502) instead of processing.
    #[schema(minimum = 0, maximum = 1)]
    pub processing_error_rate: f64,
    /// Drop the entry without reply or acknowledgement, as if the proxy died: it stays pending
    /// and is redelivered after RECLAIM_MIN_IDLE (dead-lettered after MAX_DELIVERIES).
    #[schema(minimum = 0, maximum = 1)]
    pub crash_before_ack_rate: f64,
    /// Add `slowResponseDelayMs` before processing.
    #[schema(minimum = 0, maximum = 1)]
    pub slow_response_rate: f64,
    /// Extra delay of a slow response, in milliseconds (at most 600000).
    #[schema(maximum = 600000)]
    pub slow_response_delay_ms: u64,
    /// Hold the request past its deadline, then reply `backend_timeout` (the caller has
    /// already had its 504).
    #[schema(minimum = 0, maximum = 1)]
    pub response_timeout_rate: f64,
}

impl Default for FaultConfig {
    fn default() -> Self {
        FaultConfig {
            processing_error_rate: 0.0,
            crash_before_ack_rate: 0.0,
            slow_response_rate: 0.0,
            slow_response_delay_ms: 2_000,
            response_timeout_rate: 0.0,
        }
    }
}

/// A partial update of the failure-injection settings: fields left out (or `null`) keep their value. Each rate
/// lies in [0, 1], and the four rates in force afterwards must add up to at most 1 (else 400 and
/// nothing changes).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"processingErrorRate": 0.2, "crashBeforeAckRate": 0.1}))]
pub struct FaultConfigUpdate {
    /// Rate of requests answered with an error (0 to 1).
    #[schema(minimum = 0, maximum = 1)]
    pub processing_error_rate: Option<f64>,
    /// Rate of requests dropped without reply or acknowledgement (0 to 1).
    #[schema(minimum = 0, maximum = 1)]
    pub crash_before_ack_rate: Option<f64>,
    /// Rate of requests delayed by `slowResponseDelayMs` (0 to 1).
    #[schema(minimum = 0, maximum = 1)]
    pub slow_response_rate: Option<f64>,
    /// Extra delay of a slow response in milliseconds, at most 600000 (10 minutes).
    #[schema(maximum = 600000)]
    pub slow_response_delay_ms: Option<u64>,
    /// Rate of requests held past their deadline (0 to 1).
    #[schema(minimum = 0, maximum = 1)]
    pub response_timeout_rate: Option<f64>,
}

/// The fault drawn for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    ProcessingError,
    CrashBeforeAck,
    SlowResponse(Duration),
    ResponseTimeout,
}

impl Fault {
    /// Label for `proxy_faults_injected_total{kind}`.
    pub fn kind(self) -> &'static str {
        match self {
            Fault::ProcessingError => "processing_error",
            Fault::CrashBeforeAck => "crash_before_ack",
            Fault::SlowResponse(_) => "slow_response",
            Fault::ResponseTimeout => "response_timeout",
        }
    }
}

/// The live injection settings of this proxy.
#[derive(Debug)]
pub struct FailureInjection {
    config: RwLock<FaultConfig>,
    enabled: bool,
}

impl Default for FailureInjection {
    /// Enabled, every rate 0 (FAULT_INJECTION=on).
    fn default() -> Self {
        FailureInjection {
            config: RwLock::new(FaultConfig::default()),
            enabled: true,
        }
    }
}

impl FailureInjection {
    /// Switched off for the life of the process (FAULT_INJECTION=off): `draw` never injects and
    /// `update` refuses, so no request or bug can turn faults on in production.
    pub fn disabled() -> Self {
        FailureInjection {
            enabled: false,
            ..Default::default()
        }
    }

    /// Whether faults can be configured at all (FAULT_INJECTION=on).
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// The current settings.
    pub fn get(&self) -> FaultConfig {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Applies `update`; every rate must lie in [0, 1] (the message names the first that does
    /// not), the rates in force afterwards must add up to at most 1, and the delay must be at
    /// most [`MAX_SLOW_RESPONSE_DELAY_MS`]. A refused update changes nothing.
    pub fn update(&self, update: FaultConfigUpdate) -> Result<FaultConfig, String> {
        if !self.enabled {
            return Err("failure injection is off (FAULT_INJECTION=off)".into());
        }
        let mut next = self.get();
        let rates = [
            (
                "processingErrorRate",
                update.processing_error_rate,
                &mut next.processing_error_rate,
            ),
            (
                "crashBeforeAckRate",
                update.crash_before_ack_rate,
                &mut next.crash_before_ack_rate,
            ),
            (
                "slowResponseRate",
                update.slow_response_rate,
                &mut next.slow_response_rate,
            ),
            (
                "responseTimeoutRate",
                update.response_timeout_rate,
                &mut next.response_timeout_rate,
            ),
        ];
        for (name, value, slot) in rates {
            if let Some(value) = value {
                if !(0.0..=1.0).contains(&value) {
                    return Err(format!("`{name}` must be between 0 and 1, got {value}"));
                }
                *slot = value;
            }
        }
        if let Some(ms) = update.slow_response_delay_ms {
            if ms > MAX_SLOW_RESPONSE_DELAY_MS {
                return Err(format!(
                    "`slowResponseDelayMs` must be at most {MAX_SLOW_RESPONSE_DELAY_MS}, got {ms}"
                ));
            }
            next.slow_response_delay_ms = ms;
        }
        let total = next.processing_error_rate
            + next.crash_before_ack_rate
            + next.slow_response_rate
            + next.response_timeout_rate;
        if total > 1.0 + SUM_TOLERANCE {
            return Err(format!(
                "the rates would add up to {total} (processingErrorRate {}, crashBeforeAckRate {}, slowResponseRate {}, responseTimeoutRate {}): each request draws one fault at most, so together they must not exceed 1; lower one (rates left out keep their current value)",
                next.processing_error_rate,
                next.crash_before_ack_rate,
                next.slow_response_rate,
                next.response_timeout_rate
            ));
        }
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = next.clone();
        tracing::warn!(?next, "failure injection changed");
        Ok(next)
    }

    /// Turns every fault off.
    pub fn reset(&self) -> FaultConfig {
        let config = FaultConfig::default();
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = config.clone();
        tracing::info!("failure injection reset: off");
        config
    }

    /// Draws the fault for one request (at most one), and counts it.
    pub fn draw(&self) -> Option<Fault> {
        if !self.enabled {
            return None;
        }
        let config = self.get();
        let total = config.processing_error_rate
            + config.crash_before_ack_rate
            + config.slow_response_rate
            + config.response_timeout_rate;
        if total <= 0.0 {
            return None;
        }
        let mut roll: f64 = rand::rng().random();
        let candidates = [
            (config.processing_error_rate, Fault::ProcessingError),
            (config.crash_before_ack_rate, Fault::CrashBeforeAck),
            (
                config.slow_response_rate,
                Fault::SlowResponse(Duration::from_millis(config.slow_response_delay_ms)),
            ),
            (config.response_timeout_rate, Fault::ResponseTimeout),
        ];
        for (rate, fault) in candidates {
            if roll < rate {
                metrics::counter!("proxy_faults_injected_total", "kind" => fault.kind())
                    .increment(1);
                return Some(fault);
            }
            roll -= rate;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default_and_rates_are_checked() {
        let injection = FailureInjection::default();
        assert_eq!(injection.draw(), None);
        let err = injection
            .update(FaultConfigUpdate {
                crash_before_ack_rate: Some(1.5),
                ..Default::default()
            })
            .err();
        assert!(err.is_some_and(|e| e.contains("crashBeforeAckRate")));
        assert_eq!(
            injection.get(),
            FaultConfig::default(),
            "a rejected update changes nothing"
        );
    }

    #[test]
    fn rates_adding_up_to_more_than_one_are_refused() {
        let injection = FailureInjection::default();
        let set = |processing, crash| {
            injection.update(FaultConfigUpdate {
                processing_error_rate: processing,
                crash_before_ack_rate: crash,
                ..Default::default()
            })
        };
        let err = set(Some(0.7), Some(0.4)).expect_err("1.1 in total");
        assert!(err.contains("add up to"), "{err}");
        assert_eq!(injection.get(), FaultConfig::default(), "nothing changed");
        assert!(set(Some(0.7), Some(0.3)).is_ok(), "exactly 1 is fine");
        // Rates left out keep their value and count towards the sum.
        let err = set(None, Some(0.4)).expect_err("0.7 kept + 0.4");
        assert!(err.contains("add up to"), "{err}");
        assert_eq!(injection.get().crash_before_ack_rate, 0.3);
        // Rounding does not refuse four rates that add up to 1.
        assert!(
            injection
                .update(FaultConfigUpdate {
                    processing_error_rate: Some(0.1),
                    crash_before_ack_rate: Some(0.2),
                    slow_response_rate: Some(0.3),
                    response_timeout_rate: Some(0.4),
                    ..Default::default()
                })
                .is_ok()
        );
    }

    #[test]
    fn a_rate_of_one_always_injects_and_reset_turns_it_off() {
        let injection = FailureInjection::default();
        let updated = injection.update(FaultConfigUpdate {
            processing_error_rate: Some(1.0),
            ..Default::default()
        });
        assert!(updated.is_ok());
        assert!((0..100).all(|_| injection.draw() == Some(Fault::ProcessingError)));
        injection.reset();
        assert_eq!(injection.draw(), None);
    }

    #[test]
    fn disabled_injection_refuses_updates_and_never_draws() {
        let injection = FailureInjection::disabled();
        assert!(!injection.is_enabled());
        let refused = injection.update(FaultConfigUpdate {
            processing_error_rate: Some(1.0),
            ..Default::default()
        });
        assert!(refused.is_err());
        assert_eq!(injection.get(), FaultConfig::default());
        assert!((0..1_000).all(|_| injection.draw().is_none()));
    }

    #[test]
    fn rates_are_roughly_honoured() {
        let injection = FailureInjection::default();
        let _ = injection.update(FaultConfigUpdate {
            processing_error_rate: Some(0.2),
            crash_before_ack_rate: Some(0.1),
            ..Default::default()
        });
        let draws: Vec<_> = (0..10_000).map(|_| injection.draw()).collect();
        let errors = draws
            .iter()
            .filter(|d| **d == Some(Fault::ProcessingError))
            .count();
        let crashes = draws
            .iter()
            .filter(|d| **d == Some(Fault::CrashBeforeAck))
            .count();
        assert!((1_600..2_400).contains(&errors), "{errors}");
        assert!((700..1_300).contains(&crashes), "{crashes}");
    }
}
