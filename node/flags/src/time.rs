//! RFC 3339 times for scheduled changes, in whole seconds, UTC.

/// Seconds since the Unix epoch of an RFC 3339 time in UTC
/// (`2026-12-01T09:00:00Z`; fractions of a second are refused rather than
/// rounded, a schedule is to the second).
pub fn parse_rfc3339_utc(s: &str) -> Result<u64, String> {
    if s.contains('.') {
        return Err("give whole seconds".into());
    }
    let t = humantime::parse_rfc3339(s)
        .map_err(|e| format!("not an RFC 3339 UTC time (like 2026-12-01T09:00:00Z): {e}"))?;
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|_| "before 1970".to_string())
}

/// The RFC 3339 form of Unix seconds, UTC.
pub fn format_rfc3339_utc(at_s: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(at_s))
        .to_string()
}

/// A point in time as a person gives one: an RFC 3339 UTC time, Unix
/// seconds, or a duration before `now_s` (`90m`, `24h`, `7d`).
pub fn parse_instant(s: &str, now_s: u64) -> Result<u64, String> {
    if let Ok(n) = s.parse::<u64>() {
        return Ok(n);
    }
    if let Ok(t) = parse_rfc3339_utc(s) {
        return Ok(t);
    }
    match humantime::parse_duration(s) {
        Ok(d) => Ok(now_s.saturating_sub(d.as_secs())),
        Err(_) => Err(format!(
            "{s:?} is not a time: give an RFC 3339 UTC time (2026-12-01T09:00:00Z), \
             Unix seconds, or how long ago (90m, 24h, 7d)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_are_times_seconds_or_durations_ago() {
        assert_eq!(parse_instant("2026-12-01T09:00:00Z", 0), Ok(1_796_115_600));
        assert_eq!(parse_instant("1800000000", 0), Ok(1_800_000_000));
        assert_eq!(parse_instant("90m", 10_000), Ok(10_000 - 5400));
        assert_eq!(parse_instant("7d", 100), Ok(0));
        assert!(parse_instant("yesterday", 0).is_err());
    }

    #[test]
    fn round_trips_and_refuses_what_is_not_utc_seconds() {
        let at = parse_rfc3339_utc("2026-12-01T09:00:00Z").expect("parses");
        assert_eq!(at, 1_796_115_600);
        assert_eq!(format_rfc3339_utc(at), "2026-12-01T09:00:00Z");
        assert!(parse_rfc3339_utc("2026-12-01T09:00:00.5Z").is_err());
        assert!(parse_rfc3339_utc("2026-12-01 09:00").is_err());
        assert!(parse_rfc3339_utc("tomorrow").is_err());
    }
}
