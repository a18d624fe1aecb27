//! Timestamps in Vault's API format, shared by the sidecar's and the server's JSON APIs.

/// Unix seconds as an RFC 3339 UTC timestamp.
pub fn rfc3339(secs: u64) -> String {
    let (date, time) = civil(secs);
    format!("{date}T{time}Z")
}

/// Unix seconds and microseconds as an RFC 3339 UTC timestamp to the microsecond, as Vault's
/// audit log writes it: `2026-12-05T09:30:00.123456Z`.
pub fn rfc3339_micros(secs: u64, micros: u32) -> String {
    let (date, time) = civil(secs);
    format!("{date}T{time}.{micros:06}Z")
}

/// The date (`YYYY-MM-DD`) and time of day (`hh:mm:ss`) of unix seconds, UTC.
fn civil(secs: u64) -> (String, String) {
    let secs = secs.min(i64::MAX as u64) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        format!("{year:04}-{month:02}-{day:02}"),
        format!("{:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60),
    )
}

/// Seconds in a duration as Vault's API writes it: whole seconds, or a number followed by
/// `s`, `m`, `h` or `d`. `None` when it is not one (or overflows).
pub fn parse_duration(text: &str) -> Option<u64> {
    let text = text.trim();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = digits.parse().ok()?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30m"), Some(1800));
        assert_eq!(parse_duration(" 45 "), Some(45));
        assert_eq!(parse_duration("2d"), Some(172_800));
        assert_eq!(parse_duration("5y"), None);
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(parse_duration(""), None);
    }
}
