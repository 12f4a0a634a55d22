//! The weather API's JSON shapes, shared so the ingress documents exactly what the proxy
//! produces. Field names are camelCase as the seed's clients send and expect.

use serde::de::value::MapAccessDeserializer;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

/// Longest accepted city name, in characters.
pub const MAX_CITY_CHARS: usize = 100;
/// Longest accepted location, in characters.
pub const MAX_LOCATION_CHARS: usize = 100;

/// The rule of [`CityForecastRequest::validate`] for `city` as a JSON Schema pattern: no control
/// character (Unicode category Cc, `char::is_control`) and at least one character that is
/// neither a control nor white space (`str::trim` would leave something). The length is in
/// `minLength`/`maxLength` (characters, as JSON Schema and the validator count).
pub const CITY_PATTERN: &str = "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\x00-\\x1f\\x7f-\\x9f \\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000][^\\x00-\\x1f\\x7f-\\x9f]*$";
/// The rule for `location`: no control character; may be empty or blank.
pub const LOCATION_PATTERN: &str = "^[^\\x00-\\x1f\\x7f-\\x9f]*$";

/// Body of `POST /WeatherForecast/city`: a JSON object (an array is refused).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"city": "New York", "location": "Downtown"}))]
pub struct CityForecastRequest {
    /// City to forecast: 1 to 100 characters, not only white space, no control characters.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\x00-\\x1f\\x7f-\\x9f \\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000][^\\x00-\\x1f\\x7f-\\x9f]*$",
        example = "New York"
    )]
    pub city: String,
    /// Part of the city: up to 100 characters, no control characters; may be omitted.
    // `default` here only tells the OpenAPI schema that the field is optional.
    #[serde(default)]
    #[schema(
        max_length = 100,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$",
        example = "Downtown"
    )]
    pub location: String,
}

/// Accepts only a JSON object. serde's derived struct impl also takes a sequence, mapping
/// `["Oslo","Center"]` onto the fields by position; an API whose contract is named fields must
/// not accept that (clients would come to depend on field order).
impl<'de> Deserialize<'de> for CityForecastRequest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Fields {
            city: String,
            #[serde(default)]
            location: String,
        }

        struct ObjectOnly;

        impl<'de> Visitor<'de> for ObjectOnly {
            type Value = Fields;

            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("a JSON object with `city` and optionally `location`")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Fields, A::Error> {
                Fields::deserialize(MapAccessDeserializer::new(map))
            }
        }

        let Fields { city, location } = deserializer.deserialize_map(ObjectOnly)?;
        Ok(CityForecastRequest { city, location })
    }
}

impl CityForecastRequest {
    /// Checks the field rules; the message names the field and the rule, for a 400 body.
    pub fn validate(&self) -> Result<(), String> {
        let city_chars = self.city.trim().chars().count();
        if city_chars == 0 {
            return Err("`city` is required and must not be blank".into());
        }
        if self.city.chars().count() > MAX_CITY_CHARS {
            return Err(format!(
                "`city` must be at most {MAX_CITY_CHARS} characters"
            ));
        }
        if self.location.chars().count() > MAX_LOCATION_CHARS {
            return Err(format!(
                "`location` must be at most {MAX_LOCATION_CHARS} characters"
            ));
        }
        if self
            .city
            .chars()
            .chain(self.location.chars())
            .any(char::is_control)
        {
            return Err("`city` and `location` must not contain control characters".into());
        }
        Ok(())
    }
}

/// A forecast for one city, made by the proxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({
    "requestId": "6f1c2a9e-3d0b-4a53-9c1e-5b8f0e2d7a41",
    "city": "New York",
    "location": "Downtown",
    "forecastTime": "2026-11-21T22:30:00Z",
    "temperature": 12.4,
    "condition": "Partly Cloudy",
    "humidity": 63,
    "windSpeed": 14.2
}))]
pub struct CityForecast {
    /// Correlation id of the request; equals the `X-Request-Id` response header.
    pub request_id: String,
    /// The requested city.
    pub city: String,
    /// The requested location.
    pub location: String,
    /// When the forecast was made (RFC 3339, UTC).
    pub forecast_time: String,
    /// Temperature in °C.
    pub temperature: f64,
    /// Sky condition, e.g. `Sunny`.
    pub condition: String,
    /// Relative humidity in percent.
    pub humidity: u8,
    /// Wind speed in km/h.
    pub wind_speed: f64,
}

/// One day of the five-day sample (`GET /WeatherForecast`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"date": "2026-11-22", "temperatureC": 21, "temperatureF": 69, "summary": "Mild"}))]
pub struct DailyForecast {
    /// Day of the forecast (YYYY-MM-DD).
    pub date: String,
    /// Temperature in °C.
    pub temperature_c: i32,
    /// Temperature in °F.
    pub temperature_f: i32,
    /// One-word summary.
    pub summary: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(city: &str, location: &str) -> CityForecastRequest {
        CityForecastRequest {
            city: city.into(),
            location: location.into(),
        }
    }

    #[test]
    fn validation_names_the_field() {
        assert!(request("New York", "Downtown").validate().is_ok());
        assert!(request("New York", "").validate().is_ok());
        assert!(request("  ", "x").validate().unwrap_err().contains("city"));
        assert!(
            request(&"a".repeat(101), "")
                .validate()
                .unwrap_err()
                .contains("city")
        );
        assert!(request(&"é".repeat(100), "").validate().is_ok());
        assert!(
            request("x", &"b".repeat(101))
                .validate()
                .unwrap_err()
                .contains("location")
        );
        assert!(request("x\u{0}", "").validate().is_err());
    }

    /// The document's patterns (the constants, which the schema attributes repeat because
    /// utoipa takes only literals there) agree with `validate` on every character of the Basic
    /// Multilingual Plane, alone and between letters.
    #[test]
    fn the_documented_patterns_match_the_validator() {
        let city = regex::Regex::new(CITY_PATTERN).expect("city pattern"); // invariant: test code; a failure here is the test failing
        let location = regex::Regex::new(LOCATION_PATTERN).expect("location pattern"); // invariant: test code; a failure here is the test failing
        let schema = serde_json::to_value(<CityForecastRequest as utoipa::PartialSchema>::schema())
            .expect("schema"); // invariant: test code; a failure here is the test failing
        assert_eq!(schema["properties"]["city"]["pattern"], CITY_PATTERN);
        assert_eq!(
            schema["properties"]["location"]["pattern"],
            LOCATION_PATTERN
        );
        let chars = (0..=0xFFFFu32)
            .filter_map(char::from_u32)
            .chain(['\u{10FFFF}']);
        for c in chars {
            for text in [c.to_string(), format!("a{c}b"), format!("{c}{c}")] {
                assert_eq!(
                    city.is_match(&text),
                    request(&text, "").validate().is_ok(),
                    "city {text:?}"
                );
                assert_eq!(
                    location.is_match(&text),
                    request("x", &text).validate().is_ok(),
                    "location {text:?}"
                );
            }
        }
    }

    #[test]
    fn only_a_json_object_is_a_request() {
        let parsed: CityForecastRequest =
            serde_json::from_str(r#"{"city":"Oslo","location":"Center","extra":1}"#)
                .expect("an object"); // invariant: test code; a failure here is the test failing
        assert_eq!(parsed, request("Oslo", "Center"));
        let parsed: CityForecastRequest =
            serde_json::from_str(r#"{"city":"Oslo"}"#).expect("location may be left out"); // invariant: test code; a failure here is the test failing
        assert_eq!(parsed, request("Oslo", ""));
        let error = serde_json::from_str::<CityForecastRequest>(r#"["Oslo","Center"]"#)
            .expect_err("an array is not a request");
        assert!(error.to_string().contains("JSON object"), "{error}");
        assert!(serde_json::from_str::<CityForecastRequest>(r#""Oslo""#).is_err());
        let error = serde_json::from_str::<CityForecastRequest>(r#"{"location":"x"}"#)
            .expect_err("city is required");
        assert!(error.to_string().contains("city"), "{error}");
    }
}
