//! Go-style durations (`90s`, `10m`, `1h30m`, `8760h`), the format CEL's `duration()` accepts
//! at admission, so the API server and the operator agree on every value.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {why} (use Go syntax such as 90s, 10m, 24h or 1h30m)")]
pub struct DurationError {
    input: String,
    why: &'static str,
}

/// Parses a Go duration. Negative values and the bare `0` are refused: no lifetime here can be
/// zero or negative.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let err = |why| DurationError { input: input.chars().take(64).collect(), why };
    if input.is_empty() {
        return Err(err("empty"));
    }
    let mut total: u128 = 0; // nanoseconds
    let mut rest = input;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(|| err("missing unit"))?;
        if num_len == 0 {
            return Err(err("expected a number"));
        }
        let (num, tail) = rest.split_at(num_len);
        let unit_len = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(err("missing unit")),
            _ => return Err(err("unknown unit")),
        };
        let (int, frac) = num.split_once('.').unwrap_or((num, ""));
        if int.is_empty() && frac.is_empty() || frac.contains('.') {
            return Err(err("malformed number"));
        }
        let int: u128 = if int.is_empty() { 0 } else { int.parse().map_err(|_| err("number too large"))? };
        let mut value = int.checked_mul(scale).ok_or_else(|| err("too large"))?;
        if !frac.is_empty() {
            let digits = frac.len().min(18) as u32;
            let f: u128 = frac[..digits as usize].parse().map_err(|_| err("malformed number"))?;
            value = value.checked_add(f * scale / 10u128.pow(digits)).ok_or_else(|| err("too large"))?;
        }
        total = total.checked_add(value).ok_or_else(|| err("too large"))?;
        rest = tail;
    }
    // Go's time.Duration is an int64 of nanoseconds (~292 years): CEL refuses anything longer.
    if total > i64::MAX as u128 {
        return Err(err("longer than 292 years"));
    }
    if total == 0 {
        return Err(err("must be positive"));
    }
    Ok(Duration::from_nanos(total as u64))
}

/// Formats a duration the way Go prints it, at second precision (`1h30m0s` → `1h30m`).
pub fn format(d: Duration) -> String {
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out += &format!("{h}h");
    }
    if m > 0 {
        out += &format!("{m}m");
    }
    if s > 0 || out.is_empty() {
        out += &format!("{s}s");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("8760h").unwrap(), Duration::from_secs(8760 * 3600));
        assert_eq!(parse("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("250ms").unwrap(), Duration::from_millis(250));
    }

    #[test]
    fn refuses_garbage_zero_and_overflow() {
        for bad in ["", "10", "h", "1d", "-1h", "0s", "1.2.3h", "99999999999999999999999h", "3000000h"] {
            assert!(parse(bad).is_err(), "{bad} should be refused");
        }
        // The whole hours fit in 128 bits, the fraction tips them over: refused, not wrapped
        // around to a short duration.
        for bad in ["94522879700260684295381835.999999999999h", "340282366920938463463374607431768211455.9ns"] {
            assert!(parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn formats_round_trip() {
        for s in ["1h30m", "24h", "10m", "45s", "8760h"] {
            assert_eq!(format(parse(s).unwrap()), s);
        }
    }
}
