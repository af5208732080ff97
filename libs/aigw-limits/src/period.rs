//! Budget periods (CONTRACT §14): a calendar day, ISO week (Monday to Sunday) or month in
//! UTC, or a fixed number of seconds aligned to the epoch. Like [`crate::Window`], every node
//! computes the same period for the same instant.

use crate::Window;

const DAY_MS: u64 = 86_400_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Day,
    Week,
    Month,
    Seconds(u64),
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's `days_from_civil`).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

impl Period {
    /// The period containing `now_ms`: its index (unique per period kind) and time left.
    pub fn at(self, now_ms: u64) -> Window {
        let days = (now_ms / DAY_MS) as i64;
        let (index, start_day, end_day) = match self {
            Period::Seconds(s) => return Window::at(now_ms, s),
            Period::Day => (days as u64, days, days + 1),
            Period::Week => {
                // 1970-01-01 was a Thursday: Monday is 3 days before.
                let since_monday = (days + 3).rem_euclid(7);
                let start = days - since_monday;
                (((start + 3) / 7) as u64, start, start + 7)
            }
            Period::Month => {
                let (y, m, _) = civil_from_days(days);
                let start = days_from_civil(y, m, 1);
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                ((y * 12 + m as i64 - 1) as u64, start, days_from_civil(ny, nm, 1))
            }
        };
        let end_ms = end_day as u64 * DAY_MS;
        Window { index, reset_ms: end_ms.saturating_sub(now_ms).max(1), len_ms: (end_day - start_day) as u64 * DAY_MS }
    }

    /// The name used in counter keys.
    pub fn tag(self) -> String {
        match self {
            Period::Day => "day".into(),
            Period::Week => "week".into(),
            Period::Month => "month".into(),
            Period::Seconds(s) => format!("{s}s"),
        }
    }
}

/// The spend counter of an `ai-budget` (nano-dollars) for `scope` (`consumer:NAME`,
/// `route:ID`) in the period `w` of `p`; its tokens counter is the same key with
/// `:tokens`. aigw-proxy charges these, aigw-config's usage read-back reads them.
pub fn budget_key(scope: &str, p: Period, w: &Window) -> String {
    format!("aigw:budget:{scope}:{}:{}", p.tag(), w.index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(y: i64, m: u32, d: u32, h: u64, min: u64, s: u64, milli: u64) -> u64 {
        days_from_civil(y, m, d) as u64 * DAY_MS + ((h * 60 + min) * 60 + s) * 1000 + milli
    }

    #[test]
    fn civil_dates_round_trip() {
        for days in [-1, 0, 59, 365, 10_957, 19_782, 20_513, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(days_from_civil(2028, 2, 29)), (2028, 2, 29));
    }

    /// Period boundaries with an injected clock: day, ISO week, month ends, a leap day.
    #[test]
    fn boundaries() {
        // (period, now, expected reset ms, same period as `now + reset - 1`, not as `now + reset`)
        for (p, now, reset) in [
            (Period::Day, ms(2026, 12, 7, 23, 59, 59, 999), 1),
            (Period::Day, ms(2026, 12, 7, 0, 0, 0, 0), DAY_MS),
            // 2026-12-07 is a Monday: the week ends Sunday 24:00.
            (Period::Week, ms(2026, 12, 7, 0, 0, 0, 0), 7 * DAY_MS),
            (Period::Week, ms(2026, 12, 13, 23, 0, 0, 0), 3_600_000),
            // Month ends: 31 days, 30 days, February of a leap year and of a common year.
            (Period::Month, ms(2026, 1, 31, 23, 59, 59, 999), 1),
            (Period::Month, ms(2026, 4, 30, 12, 0, 0, 0), 12 * 3_600_000),
            (Period::Month, ms(2028, 2, 28, 0, 0, 0, 0), 2 * DAY_MS),
            (Period::Month, ms(2028, 2, 29, 0, 0, 0, 0), DAY_MS),
            (Period::Month, ms(2027, 2, 28, 0, 0, 0, 0), DAY_MS),
            (Period::Month, ms(2026, 12, 31, 23, 0, 0, 0), 3_600_000),
            (Period::Seconds(3600), 3_600_000 * 5 + 10, 3_600_000 - 10),
        ] {
            let w = p.at(now);
            assert_eq!(w.reset_ms, reset, "{p:?} at {:?}", civil_from_days((now / DAY_MS) as i64));
            assert_eq!(p.at(now + reset - 1).index, w.index, "{p:?}: still the same period");
            assert_ne!(p.at(now + reset).index, w.index, "{p:?}: the next period");
        }
        assert_eq!(Period::Month.at(ms(2028, 2, 29, 12, 0, 0, 0)).len_ms, 29 * DAY_MS);
        assert_eq!(Period::Month.at(ms(2027, 2, 1, 0, 0, 0, 0)).len_ms, 28 * DAY_MS);
        assert_eq!(Period::Week.at(ms(2026, 12, 9, 0, 0, 0, 0)).index, Period::Week.at(ms(2026, 12, 7, 0, 0, 0, 0)).index);
        assert_ne!(Period::Week.at(ms(2026, 12, 6, 23, 0, 0, 0)).index, Period::Week.at(ms(2026, 12, 7, 0, 0, 0, 0)).index);
    }
}
