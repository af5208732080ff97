//! Durations in flags (`--client-header-timeout 60s`, `--etcd-timeout 500ms`), shared by the
//! binaries.

use std::time::Duration;

/// Why a flag's value is not a duration; the message names the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("{0:?} is not a duration (try 60s, 500ms, 2m)")]
    NotANumber(String),
    #[error("{value:?}: unknown unit {unit:?} (use ms, s or m)")]
    Unit { value: String, unit: String },
    #[error("{0:?}: must be greater than zero")]
    NotPositive(String),
}

/// `60s`, `500ms`, `2m` or a bare number of seconds; must be positive (a clap
/// `value_parser`).
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num.parse().map_err(|_| DurationError::NotANumber(s.to_owned()))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(DurationError::Unit { value: s.to_owned(), unit: unit.to_owned() }),
    };
    if !(secs > 0.0 && secs.is_finite()) {
        return Err(DurationError::NotPositive(s.to_owned()));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("60"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        for bad in ["", "0", "-1s", "5h", "x"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_duration("5h").unwrap_err().to_string(), "\"5h\": unknown unit \"h\" (use ms, s or m)");
    }
}
