//! City/location pairs sent in request bodies.
//!
//! Each request carries a pair and the reply must echo it back; cycling through
//! several distinct pairs (instead of one constant body) is what lets the
//! verification notice a reply that was routed to the wrong request.

use serde::Serialize;

/// One `city,location` pair, as sent in the request body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct City {
    /// City name, e.g. `New York`.
    pub city: String,
    /// Location within the city, e.g. `Downtown`.
    pub location: String,
}

impl City {
    /// Convenience constructor used by the built-in list and tests.
    pub fn new(city: impl Into<String>, location: impl Into<String>) -> Self {
        Self {
            city: city.into(),
            location: location.into(),
        }
    }
}

/// The seed project's 15 pairs, used when `--cities` is not given.
pub const DEFAULT_CITIES: [(&str, &str); 15] = [
    ("New York", "Downtown"),
    ("London", "Westminster"),
    ("Tokyo", "Shibuya"),
    ("Paris", "Montmartre"),
    ("Sydney", "Harbour"),
    ("Berlin", "Mitte"),
    ("Toronto", "Downtown"),
    ("Singapore", "Marina Bay"),
    ("Dubai", "Downtown"),
    ("Mumbai", "Bandra"),
    ("São Paulo", "Paulista"),
    ("Cape Town", "Waterfront"),
    ("Moscow", "Arbat"),
    ("Seoul", "Gangnam"),
    ("Mexico City", "Centro"),
];

/// The built-in pairs as owned values.
pub fn default_cities() -> Vec<City> {
    DEFAULT_CITIES
        .iter()
        .map(|(c, l)| City::new(*c, *l))
        .collect()
}

/// Parses a cities file: one `city,location` per line.
///
/// Blank lines and lines starting with `#` are skipped; surrounding whitespace
/// (including a Windows `\r` and a UTF-8 BOM) is trimmed. The first comma
/// separates city from location, so a location may itself contain commas.
/// A malformed line is an error that names `source` and the 1-based line
/// number, because silently dropping a line would change the test.
pub fn parse_cities_file(source: &str, text: &str) -> anyhow::Result<Vec<City>> {
    let mut cities = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line_no = index + 1;
        let line = raw.trim_start_matches('\u{feff}').trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((city, location)) = line.split_once(',') else {
            anyhow::bail!("{source}:{line_no}: expected `city,location`, got {line:?} (no comma)");
        };
        let (city, location) = (city.trim(), location.trim());
        if city.is_empty() {
            anyhow::bail!("{source}:{line_no}: empty city in {line:?}");
        }
        if location.is_empty() {
            anyhow::bail!("{source}:{line_no}: empty location in {line:?}");
        }
        cities.push(City::new(city, location));
    }
    if cities.is_empty() {
        anyhow::bail!("{source}: no `city,location` lines found");
    }
    Ok(cities)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_list_is_the_seed_projects() {
        let cities = default_cities();
        assert_eq!(cities.len(), 15);
        assert_eq!(cities[0], City::new("New York", "Downtown"));
        assert_eq!(cities[10], City::new("São Paulo", "Paulista"));
        assert_eq!(cities[14], City::new("Mexico City", "Centro"));
    }

    #[test]
    fn parses_lines_comments_blanks_and_crlf() {
        let text =
            "\u{feff}# header\r\nNew York, Downtown\r\n\r\n  Cape Town ,Waterfront  \nA,b,c\n";
        let cities = parse_cities_file("c.txt", text).unwrap();
        assert_eq!(
            cities,
            vec![
                City::new("New York", "Downtown"),
                City::new("Cape Town", "Waterfront"),
                City::new("A", "b,c"),
            ]
        );
    }

    #[test]
    fn bad_line_reports_file_and_line_number() {
        let err = parse_cities_file("c.txt", "London,Westminster\n\nTokyo\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("c.txt:3:"), "{msg}");
        assert!(msg.contains("Tokyo"), "{msg}");
    }

    #[test]
    fn empty_fields_are_errors() {
        let err = parse_cities_file("c.txt", ",Downtown")
            .unwrap_err()
            .to_string();
        assert!(err.contains("c.txt:1: empty city"), "{err}");
        let err = parse_cities_file("c.txt", "Paris,\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("c.txt:1: empty location"), "{err}");
    }

    #[test]
    fn file_without_entries_is_an_error() {
        let err = parse_cities_file("c.txt", "# only a comment\n\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no `city,location` lines"), "{err}");
    }
}
