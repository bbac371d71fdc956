//! Local calendar days. A day is the calendar date of the event time in a
//! named IANA zone (chrono-tz bundles the tz database, so DST transitions are
//! exact and no system zoneinfo is needed). Days are stored as day numbers
//! (days since 1970-01-01) because they are small and subtract cleanly.

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;

/// The calendar date of `instant` in `zone`.
pub fn local_date(instant: DateTime<Utc>, zone: Tz) -> NaiveDate {
    instant.with_timezone(&zone).date_naive()
}

/// Days since 1970-01-01 (negative before).
pub fn day_number(date: NaiveDate) -> i32 {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or(NaiveDate::MIN);
    (date - epoch).num_days() as i32
}

/// The inverse of [`day_number`].
pub fn date_from_day_number(day: i32) -> NaiveDate {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or(NaiveDate::MIN);
    epoch + chrono::Duration::days(i64::from(day))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn local_day_differs_from_utc_day() {
        // 02:30 UTC on March 10 is still the evening of March 9 in New York.
        let t = utc("2026-03-10T02:30:00Z");
        assert_eq!(
            local_date(t, chrono_tz::America::New_York),
            NaiveDate::from_ymd_opt(2026, 3, 9).unwrap()
        );
        assert_eq!(
            local_date(t, chrono_tz::UTC),
            NaiveDate::from_ymd_opt(2026, 3, 10).unwrap()
        );
        // And 23:30 UTC is already the next day in Tokyo.
        let t = utc("2026-03-10T23:30:00Z");
        assert_eq!(
            local_date(t, chrono_tz::Asia::Tokyo),
            NaiveDate::from_ymd_opt(2026, 3, 11).unwrap()
        );
    }

    #[test]
    fn dst_transitions_are_exact() {
        let ny = chrono_tz::America::New_York;
        // Spring forward: 2026-03-08 02:00 EST -> 03:00 EDT. 23:59 local on
        // March 8 is 03:59 UTC on March 9 (offset -4), not 04:59.
        let t = utc("2026-03-09T03:59:00Z");
        assert_eq!(
            local_date(t, ny),
            NaiveDate::from_ymd_opt(2026, 3, 8).unwrap()
        );
        let t = utc("2026-03-09T04:00:00Z");
        assert_eq!(
            local_date(t, ny),
            NaiveDate::from_ymd_opt(2026, 3, 9).unwrap()
        );
        // Fall back: 2026-11-01 is 25 hours long; 23:30 EST is 04:30 UTC Nov 2.
        let t = utc("2026-11-02T04:30:00Z");
        assert_eq!(
            local_date(t, ny),
            NaiveDate::from_ymd_opt(2026, 11, 1).unwrap()
        );
        let t = utc("2026-11-02T05:00:00Z");
        assert_eq!(
            local_date(t, ny),
            NaiveDate::from_ymd_opt(2026, 11, 2).unwrap()
        );
        // A fixed -5h (EST) offset gets the day after spring-forward wrong:
        // 04:30 UTC on March 9 is 00:30 EDT on March 9, not 23:30 on March 8.
        let t = utc("2026-03-09T04:30:00Z");
        let fixed = chrono::FixedOffset::west_opt(5 * 3600).unwrap();
        assert_eq!(
            t.with_timezone(&fixed).date_naive(),
            NaiveDate::from_ymd_opt(2026, 3, 8).unwrap()
        );
        assert_eq!(
            local_date(t, ny),
            NaiveDate::from_ymd_opt(2026, 3, 9).unwrap()
        );
        assert_eq!(
            local_date(Utc.timestamp_millis_opt(0).unwrap(), chrono_tz::UTC),
            NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()
        );
    }

    #[test]
    fn day_numbers_round_trip() {
        let d = NaiveDate::from_ymd_opt(2026, 3, 8).unwrap();
        assert_eq!(date_from_day_number(day_number(d)), d);
        assert_eq!(day_number(NaiveDate::from_ymd_opt(1970, 1, 2).unwrap()), 1);
        assert_eq!(
            day_number(NaiveDate::from_ymd_opt(1969, 12, 31).unwrap()),
            -1
        );
    }
}
