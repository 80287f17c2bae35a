//! RFC 3339 timestamps as clients write them (`2026-11-23T09:30:00Z`,
//! `2026-11-23T15:30:00.250+06:00`), read by hand: small enough not to
//! pull a date-time crate into the build.

use super::UnixMillis;

/// Milliseconds since the epoch of an RFC 3339 date-time; sub-millisecond
/// digits are dropped. `None` when the text is not one.
pub fn parse(s: &str) -> Option<UnixMillis> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !matches!(b[10], b'T' | b't') {
        return None;
    }
    let year = digits(&b[0..4])?;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    let hour = digits(&b[11..13])?;
    let minute = digits(&b[14..16])?;
    // 60 is a leap second; it reads as the next second's start.
    let second = digits(&b[17..19])?;
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &b[19..];
    let mut millis = 0;
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        for (i, d) in frac[..n.min(3)].iter().enumerate() {
            millis += i64::from(d - b'0') * [100, 10, 1][i];
        }
        rest = &frac[n..];
    }
    let offset_minutes = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let h = digits(&[*h1, *h2])?;
            let m = digits(&[*m1, *m2])?;
            if h > 23 || m > 59 {
                return None;
            }
            let total = h * 60 + m;
            if *sign == b'-' { -total } else { total }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_minutes * 60;
    Some(UnixMillis(seconds * 1_000 + millis))
}

fn digits(b: &[u8]) -> Option<i64> {
    b.iter().try_fold(0i64, |acc, c| {
        c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
    })
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the given date of the proleptic Gregorian
/// calendar (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_it_writes() {
        let t = UnixMillis(1_700_000_000_123);
        let shown = serde_json::to_value(t).unwrap();
        assert_eq!(parse(shown.as_str().unwrap()), Some(t));
    }

    #[test]
    fn offsets_fractions_and_the_epoch() {
        assert_eq!(parse("1970-01-01T00:00:00Z"), Some(UnixMillis(0)));
        assert_eq!(
            parse("2023-11-14T22:13:20.123456Z"),
            Some(UnixMillis(1_700_000_000_123))
        );
        assert_eq!(
            parse("2023-11-15T04:13:20.1+06:00"),
            Some(UnixMillis(1_700_000_000_100))
        );
        assert_eq!(
            parse("2023-11-14T20:13:20-02:00"),
            Some(UnixMillis(1_700_000_000_000))
        );
        assert_eq!(
            parse("2024-02-29t00:00:00z"),
            Some(UnixMillis(1_709_164_800_000))
        );
    }

    #[test]
    fn refuses_what_is_not_rfc3339() {
        for bad in [
            "",
            "2023-11-14",
            "2023-11-14T22:13:20",
            "2023-11-14 22:13:20Z",
            "2023-13-14T22:13:20Z",
            "2023-02-29T22:13:20Z",
            "2023-11-14T24:00:00Z",
            "2023-11-14T22:13:20.Z",
            "2023-11-14T22:13:20+0600",
            "2023-11-14T22:13:20+06:00 ",
            "tomorrow at noon, please",
            "２023-11-14T22:13:20Z",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
