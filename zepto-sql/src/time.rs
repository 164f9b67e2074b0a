//! Time arithmetic on i64 nanoseconds since the Unix epoch (UTC): ISO-8601 parsing and
//! formatting, calendar truncation, intervals. No time-zone database: every timestamp is UTC.

use crate::error::{invalid, Result};

pub(crate) const NANOS_PER_MICRO: i64 = 1_000;
pub(crate) const NANOS_PER_MILLI: i64 = 1_000_000;
pub(crate) const NANOS_PER_SEC: i64 = 1_000_000_000;
pub(crate) const NANOS_PER_MIN: i64 = 60 * NANOS_PER_SEC;
pub(crate) const NANOS_PER_HOUR: i64 = 60 * NANOS_PER_MIN;
pub(crate) const NANOS_PER_DAY: i64 = 24 * NANOS_PER_HOUR;

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The (year, month, day) of a count of days since 1970-01-01.
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Parse an ISO-8601 timestamp: `2024-01-02`, `2024-01-02T10:00:00`, `2024-01-02 10:00:00.123`,
/// with an optional `Z` or `+hh:mm` offset. Returns nanoseconds since the epoch (UTC).
pub(crate) fn parse_timestamp(s: &str) -> Result<i64> {
    let bad = || {
        invalid(format!(
            "cannot parse '{s}' as a timestamp (expected ISO-8601 like '2024-01-02T10:00:00Z')"
        ))
    };
    let t = s.trim();
    let b = t.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Result<i64> {
        let part = t.get(r).ok_or_else(bad)?;
        if part.is_empty() || !part.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        part.parse::<i64>().map_err(|_| bad())
    };
    if b.len() < 10 || b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return Err(bad());
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    let mut ns = days_from_civil(y, mo as u32, d as u32) * NANOS_PER_DAY;
    let mut i = 10;
    if i < b.len() && (b[i] == b'T' || b[i] == b' ') {
        if b.len() < i + 6 || b.get(i + 3) != Some(&b':') {
            return Err(bad());
        }
        let (h, mi) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
        let mut sec = 0;
        i += 6;
        if b.get(i) == Some(&b':') {
            sec = num(i + 1..i + 3)?;
            i += 3;
        }
        if h > 23 || mi > 59 || sec > 60 {
            return Err(bad());
        }
        ns += h * NANOS_PER_HOUR + mi * NANOS_PER_MIN + sec * NANOS_PER_SEC;
        if b.get(i) == Some(&b'.') {
            let start = i + 1;
            let mut end = start;
            while end < b.len() && b[end].is_ascii_digit() {
                end += 1;
            }
            if end == start || end - start > 9 {
                return Err(bad());
            }
            let frac = num(start..end)?;
            ns += frac * 10i64.pow((9 - (end - start)) as u32);
            i = end;
        }
    }
    match t.get(i..) {
        Some("") | Some("Z") | Some("z") => {}
        Some(off) if (off.starts_with('+') || off.starts_with('-')) && off.len() == 6 => {
            let sign = if off.starts_with('-') { -1 } else { 1 };
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            ns -= sign * (oh * NANOS_PER_HOUR + om * NANOS_PER_MIN);
        }
        _ => return Err(bad()),
    }
    Ok(ns)
}

/// Format nanoseconds since the epoch as `2024-01-02T10:00:00[.fraction]Z`.
pub(crate) fn format_timestamp(ns: i64) -> String {
    let days = ns.div_euclid(NANOS_PER_DAY);
    let rem = ns.rem_euclid(NANOS_PER_DAY);
    let (y, m, d) = civil_from_days(days);
    let (h, mi, s, frac) = (
        rem / NANOS_PER_HOUR,
        rem / NANOS_PER_MIN % 60,
        rem / NANOS_PER_SEC % 60,
        rem % NANOS_PER_SEC,
    );
    if frac == 0 {
        format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
    } else {
        let f = format!("{frac:09}");
        format!(
            "{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{}Z",
            f.trim_end_matches('0')
        )
    }
}

/// A calendar or fixed unit for `date_trunc` and `extract`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimeUnit {
    Nanosecond,
    Microsecond,
    Millisecond,
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Quarter,
    Year,
}

impl TimeUnit {
    pub(crate) fn parse(s: &str) -> Option<TimeUnit> {
        let s = s.trim().to_ascii_lowercase();
        let exact = match s.as_str() {
            "ns" => Some(TimeUnit::Nanosecond),
            "us" => Some(TimeUnit::Microsecond),
            "ms" => Some(TimeUnit::Millisecond),
            "s" => Some(TimeUnit::Second),
            "m" => Some(TimeUnit::Minute),
            _ => None,
        };
        if exact.is_some() {
            return exact;
        }
        let s = s.strip_suffix('s').unwrap_or(&s);
        Some(match s {
            "nanosecond" => TimeUnit::Nanosecond,
            "microsecond" => TimeUnit::Microsecond,
            "millisecond" => TimeUnit::Millisecond,
            "second" | "sec" => TimeUnit::Second,
            "minute" | "min" => TimeUnit::Minute,
            "hour" | "h" => TimeUnit::Hour,
            "day" | "d" => TimeUnit::Day,
            "week" | "w" => TimeUnit::Week,
            "month" | "mon" => TimeUnit::Month,
            "quarter" => TimeUnit::Quarter,
            "year" | "y" => TimeUnit::Year,
            _ => return None,
        })
    }

    /// The fixed length of the unit in nanoseconds, if it has one.
    pub(crate) fn fixed_nanos(self) -> Option<i64> {
        Some(match self {
            TimeUnit::Nanosecond => 1,
            TimeUnit::Microsecond => NANOS_PER_MICRO,
            TimeUnit::Millisecond => NANOS_PER_MILLI,
            TimeUnit::Second => NANOS_PER_SEC,
            TimeUnit::Minute => NANOS_PER_MIN,
            TimeUnit::Hour => NANOS_PER_HOUR,
            TimeUnit::Day => NANOS_PER_DAY,
            TimeUnit::Week => 7 * NANOS_PER_DAY,
            TimeUnit::Month | TimeUnit::Quarter | TimeUnit::Year => return None,
        })
    }
}

/// Truncate a timestamp to the start of its unit (weeks start on Monday).
pub(crate) fn trunc(ns: i64, unit: TimeUnit) -> i64 {
    match unit {
        // 1970-01-05 was a Monday.
        TimeUnit::Week => {
            let off = 4 * NANOS_PER_DAY;
            (ns - off).div_euclid(7 * NANOS_PER_DAY) * 7 * NANOS_PER_DAY + off
        }
        TimeUnit::Month | TimeUnit::Quarter | TimeUnit::Year => {
            let (y, m, _) = civil_from_days(ns.div_euclid(NANOS_PER_DAY));
            let m = match unit {
                TimeUnit::Year => 1,
                TimeUnit::Quarter => (m - 1) / 3 * 3 + 1,
                _ => m,
            };
            days_from_civil(y, m, 1) * NANOS_PER_DAY
        }
        _ => {
            let step = unit.fixed_nanos().unwrap_or(1);
            ns.div_euclid(step) * step
        }
    }
}

/// One field of a timestamp, as `extract(field FROM ts)` returns it.
pub(crate) fn extract(ns: i64, unit: TimeUnit) -> i64 {
    let days = ns.div_euclid(NANOS_PER_DAY);
    let rem = ns.rem_euclid(NANOS_PER_DAY);
    let (y, m, d) = civil_from_days(days);
    match unit {
        TimeUnit::Year => y,
        TimeUnit::Quarter => i64::from((m - 1) / 3 + 1),
        TimeUnit::Month => i64::from(m),
        TimeUnit::Week => {
            // ISO day of week 1..=7 (Monday = 1); cheap and well defined, unlike ISO week numbers.
            (days + 3).rem_euclid(7) + 1
        }
        TimeUnit::Day => i64::from(d),
        TimeUnit::Hour => rem / NANOS_PER_HOUR,
        TimeUnit::Minute => rem / NANOS_PER_MIN % 60,
        TimeUnit::Second => rem / NANOS_PER_SEC % 60,
        TimeUnit::Millisecond => rem / NANOS_PER_MILLI % 1000,
        TimeUnit::Microsecond => rem / NANOS_PER_MICRO % 1_000_000,
        TimeUnit::Nanosecond => rem % NANOS_PER_SEC,
    }
}

/// Parse the text of an interval (`'5 minutes'`, `'1 hour 30 minutes'`, `'250ms'`) into
/// nanoseconds. `unit` is the trailing SQL unit (`INTERVAL '5' MINUTE`) when there is one.
pub(crate) fn parse_interval(text: &str, unit: Option<&str>) -> Result<i64> {
    let bad = || {
        invalid(format!(
            "cannot parse interval '{text}' (expected e.g. '5 minutes')"
        ))
    };
    let mut total: i64 = 0;
    let mut tokens: Vec<String> = Vec::new();
    // Split "250ms" into "250" "ms" and keep "1 hour" as two tokens.
    for word in text.split_whitespace() {
        let split = word
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
            .unwrap_or(word.len());
        let (n, u) = word.split_at(split);
        if !n.is_empty() {
            tokens.push(n.to_string());
        }
        if !u.is_empty() {
            tokens.push(u.to_string());
        }
    }
    if let Some(u) = unit {
        tokens.push(u.to_string());
    }
    let mut it = tokens.iter();
    let mut any = false;
    while let Some(n) = it.next() {
        let value: f64 = n.parse().map_err(|_| bad())?;
        let u = it.next().map(String::as_str).unwrap_or("second");
        let unit = TimeUnit::parse(u).ok_or_else(bad)?;
        let step = unit.fixed_nanos().ok_or_else(|| {
            invalid(format!(
                "interval '{text}': months and years have no fixed length; use days"
            ))
        })?;
        total = total.saturating_add((value * step as f64).round() as i64);
        any = true;
    }
    if any {
        Ok(total)
    } else {
        Err(bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_offsets() {
        let t = parse_timestamp("2024-01-02T10:00:00Z").unwrap();
        assert_eq!(t, 1_704_189_600 * NANOS_PER_SEC);
        assert_eq!(format_timestamp(t), "2024-01-02T10:00:00Z");
        assert_eq!(parse_timestamp("2024-01-02 12:00:00+02:00").unwrap(), t);
        assert_eq!(
            parse_timestamp("2024-01-02").unwrap(),
            t - 10 * NANOS_PER_HOUR
        );
        let f = parse_timestamp("2024-01-02T10:00:00.5Z").unwrap();
        assert_eq!(f - t, 500_000_000);
        assert_eq!(format_timestamp(f), "2024-01-02T10:00:00.5Z");
        assert_eq!(format_timestamp(-1), "1969-12-31T23:59:59.999999999Z");
        assert!(parse_timestamp("2024-13-02").is_err());
        assert!(parse_timestamp("yesterday").is_err());
    }

    #[test]
    fn truncation_and_intervals() {
        let t = parse_timestamp("2024-05-15T10:37:12Z").unwrap();
        let p = |s| parse_timestamp(s).unwrap();
        assert_eq!(trunc(t, TimeUnit::Minute), p("2024-05-15T10:37:00Z"));
        assert_eq!(trunc(t, TimeUnit::Week), p("2024-05-13"));
        assert_eq!(trunc(t, TimeUnit::Month), p("2024-05-01"));
        assert_eq!(trunc(t, TimeUnit::Quarter), p("2024-04-01"));
        assert_eq!(trunc(t, TimeUnit::Year), p("2024-01-01"));
        assert_eq!(extract(t, TimeUnit::Month), 5);
        assert_eq!(
            parse_interval("1 hour 30 minutes", None).unwrap(),
            90 * NANOS_PER_MIN
        );
        assert_eq!(
            parse_interval("250ms", None).unwrap(),
            250 * NANOS_PER_MILLI
        );
        assert_eq!(
            parse_interval("5", Some("MINUTE")).unwrap(),
            5 * NANOS_PER_MIN
        );
        assert!(parse_interval("1 month", None).is_err());
    }
}
