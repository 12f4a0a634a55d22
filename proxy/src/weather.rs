//! The seed's weather "backend", with a configurable simulated processing time: the default
//! [`Handler`] (without `UPSTREAM_URL`).

use std::time::{Duration, SystemTime};

use rand::Rng;
use shared::protocol::Operation;
use shared::weather::{CityForecast, CityForecastRequest, DailyForecast};

use crate::config::DelayRange;
use crate::handler::{BoxFuture, Handler, HandlerError, Request, Response};

/// Sky conditions a forecast can have.
const CONDITIONS: &[&str] = &[
    "Sunny",
    "Partly Cloudy",
    "Cloudy",
    "Rainy",
    "Stormy",
    "Snowy",
    "Windy",
    "Foggy",
];

/// The five-day sample's summaries (the ASP.NET template's).
const SUMMARIES: &[&str] = &[
    "Freezing",
    "Bracing",
    "Chilly",
    "Cool",
    "Mild",
    "Warm",
    "Balmy",
    "Hot",
    "Sweltering",
    "Scorching",
];

/// A request the weather handler could not handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessError {
    /// Machine-readable kind, e.g. `invalid_request`.
    pub code: &'static str,
    /// What went wrong, for the caller.
    pub message: String,
}

/// Produces forecasts.
#[derive(Debug, Clone)]
pub struct Weather {
    delay: DelayRange,
}

impl Handler for Weather {
    fn name(&self) -> &'static str {
        "weather"
    }

    /// A city and a location: nothing a caller needs to keep from whoever reads the proxy's
    /// dead letters, so that list stays open (monitoring, demos).
    fn private_payloads(&self) -> bool {
        false
    }

    fn handle<'a>(&'a self, request: Request<'a>) -> BoxFuture<'a, Result<Response, HandlerError>> {
        Box::pin(async move {
            let entry = request.entry;
            match self
                .process(&entry.request_id, &entry.operation, &entry.payload)
                .await
            {
                Ok(json) => Ok(Response {
                    payload: json.into(),
                    http: None,
                }),
                // Neither can succeed on another attempt: dead-lettered.
                Err(ProcessError {
                    code: code @ ("invalid_request" | "unknown_operation"),
                    message,
                }) => Err(HandlerError::Invalid { code, message }),
                Err(ProcessError { code, message }) => Err(HandlerError::Failed { code, message }),
            }
        })
    }
}

impl Weather {
    /// A weather handler that takes `delay` per request (simulated backend latency).
    pub fn new(delay: DelayRange) -> Self {
        Weather { delay }
    }

    /// Runs `operation` on `payload` for `request_id`; returns the JSON reply payload.
    pub async fn process(
        &self,
        request_id: &str,
        operation: &str,
        payload: &[u8],
    ) -> Result<String, ProcessError> {
        let Some(operation) = Operation::parse(operation) else {
            return Err(ProcessError {
                code: "unknown_operation",
                message: format!("this proxy does not know the operation `{operation}`"),
            });
        };
        if operation == Operation::Http {
            return Err(not_forwarding());
        }
        self.simulate_work().await;
        let json = match operation {
            Operation::CityForecast => {
                let request: CityForecastRequest =
                    serde_json::from_slice(payload).map_err(|e| ProcessError {
                        code: "invalid_request",
                        message: format!("payload is not a city forecast request: {e}"),
                    })?;
                request.validate().map_err(|message| ProcessError {
                    code: "invalid_request",
                    message,
                })?;
                serde_json::to_string(&city_forecast(request_id, request))
            }
            Operation::SampleForecast => serde_json::to_string(&sample_forecast()),
            Operation::Http => return Err(not_forwarding()),
        };
        json.map_err(|e| ProcessError {
            code: "internal",
            message: format!("could not encode the forecast: {e}"),
        })
    }

    async fn simulate_work(&self) {
        if self.delay.max_ms == 0 {
            return;
        }
        let ms = rand::rng().random_range(self.delay.min_ms..=self.delay.max_ms);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// An `http` entry reached a proxy that serves the weather demo.
fn not_forwarding() -> ProcessError {
    ProcessError {
        code: "unknown_operation",
        message: "this proxy serves the weather demo; start it with UPSTREAM_URL to forward `http` requests".into(),
    }
}

fn city_forecast(request_id: &str, request: CityForecastRequest) -> CityForecast {
    let mut rng = rand::rng();
    CityForecast {
        request_id: request_id.to_string(),
        city: request.city,
        location: request.location,
        forecast_time: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        temperature: (rng.random_range(-100..=400) as f64) / 10.0,
        condition: CONDITIONS[rng.random_range(0..CONDITIONS.len())].to_string(),
        humidity: rng.random_range(10..=100),
        wind_speed: (rng.random_range(0..=600) as f64) / 10.0,
    }
}

fn sample_forecast() -> Vec<DailyForecast> {
    let mut rng = rand::rng();
    (1..=5u64)
        .map(|day| {
            let date = SystemTime::now() + Duration::from_secs(day * 86_400);
            let temperature_c = rng.random_range(-20..55);
            DailyForecast {
                date: humantime::format_rfc3339_seconds(date).to_string()[..10].to_string(),
                temperature_c,
                temperature_f: 32 + (temperature_c as f64 / 0.5556) as i32,
                summary: SUMMARIES[rng.random_range(0..SUMMARIES.len())].to_string(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instant() -> Weather {
        Weather::new(DelayRange {
            min_ms: 0,
            max_ms: 0,
        })
    }

    #[tokio::test]
    async fn city_forecast_echoes_the_request() -> Result<(), serde_json::Error> {
        let result = instant()
            .process(
                "r1",
                "weather.city",
                br#"{"city":"Paris","location":"Montmartre"}"#,
            )
            .await;
        let Ok(json) = result else {
            panic!("no forecast: {result:?}");
        };
        let forecast: CityForecast = serde_json::from_str(&json)?;
        assert_eq!(forecast.request_id, "r1");
        assert_eq!(forecast.city, "Paris");
        assert_eq!(forecast.location, "Montmartre");
        assert!(CONDITIONS.contains(&forecast.condition.as_str()));
        assert!((-10.0..=40.0).contains(&forecast.temperature));
        Ok(())
    }

    #[tokio::test]
    async fn sample_has_five_consecutive_days() -> Result<(), serde_json::Error> {
        let result = instant().process("r2", "weather.sample", b"{}").await;
        let Ok(json) = result else {
            panic!("no sample: {result:?}");
        };
        let days: Vec<DailyForecast> = serde_json::from_str(&json)?;
        assert_eq!(days.len(), 5);
        assert!(days.windows(2).all(|pair| pair[0].date < pair[1].date));
        Ok(())
    }

    #[tokio::test]
    async fn bad_payloads_and_operations_are_errors_not_panics() {
        let p = instant();
        assert_eq!(
            p.process("r", "weather.city", b"not json")
                .await
                .unwrap_err()
                .code,
            "invalid_request"
        );
        assert_eq!(
            p.process("r", "weather.city", br#"{"city":""}"#)
                .await
                .unwrap_err()
                .code,
            "invalid_request"
        );
        assert_eq!(
            p.process("r", "weather.nope", b"{}")
                .await
                .unwrap_err()
                .code,
            "unknown_operation"
        );
    }
}
