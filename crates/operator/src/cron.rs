//! Cron schedules for pipeline triggers: a 5-field expression read in an IANA time zone.
//!
//! Fields are minute, hour, day of month, month, day of week, with croner's syntax (`*`, lists,
//! ranges, `*/n` steps, `JAN`–`DEC`, `SUN`–`SAT`, and its extensions `L`, `W`, `#`, `?`). The
//! nicknames `@hourly`, `@daily`, `@weekly`, `@monthly` and `@yearly` are accepted because
//! croner expands them to exact 5-field expressions; no other nickname is (`@reboot` has no
//! meaning for a scheduler that isn't a machine's init), and neither is a seconds or years field.
//!
//! Ticks follow the wall clock of the time zone, the way croner resolves DST: a time that a
//! spring-forward skips fires at the first instant after the gap for schedules naming that time,
//! and a fixed time that an autumn fall-back repeats fires once, at its first occurrence;
//! interval schedules (`*/15 * * * *`) keep ticking through both passes of a repeated hour.

use std::fmt;

use chrono::{DateTime, SubsecRound, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::pipeline::codes;

/// The nicknames accepted in place of five fields.
pub const NICKNAMES: &[&str] = &["@hourly", "@daily", "@weekly", "@monthly", "@yearly"];

/// The time zone of a trigger that names none.
pub const DEFAULT_TIMEZONE: &str = "UTC";

/// A validated cron schedule in a time zone.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    expr: String,
    cron: Cron,
    tz: Tz,
}

/// Why an expression or a time zone was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct CronError {
    /// `ERR_CRON_INVALID` or `ERR_TIMEZONE_INVALID`.
    pub code: &'static str,
    /// What is wrong.
    pub message: String,
}

impl CronError {
    fn cron(message: String) -> Self {
        Self {
            code: codes::CRON_INVALID,
            message,
        }
    }
}

impl Schedule {
    /// Parses a 5-field expression (or an accepted nickname) in the IANA time zone `timezone`.
    ///
    /// # Errors
    /// `ERR_CRON_INVALID` for anything but 5 valid fields or one of [`NICKNAMES`];
    /// `ERR_TIMEZONE_INVALID` for a name that isn't in the IANA database.
    pub fn parse(expr: &str, timezone: &str) -> Result<Self, CronError> {
        let expr = expr.trim();
        if expr.starts_with('@') {
            if !NICKNAMES.contains(&expr) {
                return Err(CronError::cron(format!(
                    "`{expr}` is not an accepted nickname (accepted: {})",
                    NICKNAMES.join(", ")
                )));
            }
        } else {
            let fields = expr.split_whitespace().count();
            if fields != 5 {
                return Err(CronError::cron(format!(
                    "`{expr}` has {fields} fields; write exactly 5: minute hour day-of-month month day-of-week"
                )));
            }
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(expr)
            .map_err(|e| {
                CronError::cron(format!("`{expr}` is not a valid cron expression: {e}"))
            })?;
        let tz: Tz = timezone.parse().map_err(|_| CronError {
            code: codes::TIMEZONE_INVALID,
            message: format!(
                "`{timezone}` is not an IANA time zone name (e.g. \"UTC\", \"Europe/Paris\")"
            ),
        })?;
        Ok(Self {
            expr: expr.to_owned(),
            cron,
            tz,
        })
    }

    /// The expression as written (trimmed).
    #[must_use]
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The time zone's IANA name.
    #[must_use]
    pub fn timezone(&self) -> &str {
        self.tz.name()
    }

    /// The first tick strictly after `after`, or `None` when there is none (an expression that
    /// never matches, such as `0 0 30 2 *`).
    #[must_use]
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Ticks are whole minutes, so searching from the whole second at or before `after`,
        // exclusively, finds exactly the ticks later than `after`.
        let start = after.trunc_subsecs(0).with_timezone(&self.tz);
        self.cron
            .find_next_occurrence(&start, false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.expr, self.timezone())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Written {
    cron: String,
    #[serde(default = "default_timezone")]
    timezone: String,
}

fn default_timezone() -> String {
    DEFAULT_TIMEZONE.to_owned()
}

/// Written as `{"cron": "<expr>", "timezone": "<IANA name>"}` (the trigger's own fields).
impl Serialize for Schedule {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Written {
            cron: self.expr.clone(),
            timezone: self.timezone().to_owned(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Schedule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = Written::deserialize(d)?;
        Self::parse(&w.cron, &w.timezone).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use chrono::TimeZone;

    use super::*;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    fn ticks(s: &Schedule, mut t: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        (0..n)
            .map(|_| {
                t = s.next_after(t).expect("a tick");
                t
            })
            .collect()
    }

    /// Every-5-minutes in UTC ticks on the fives, strictly after the given instant.
    #[test]
    fn next_ticks_in_utc() {
        let s = Schedule::parse("*/5 * * * *", "UTC").unwrap();
        assert_eq!(
            ticks(&s, utc(2025, 1, 1, 10, 0), 3),
            vec![
                utc(2025, 1, 1, 10, 5),
                utc(2025, 1, 1, 10, 10),
                utc(2025, 1, 1, 10, 15)
            ]
        );
        // Strictly after, even a fraction of a second before the next tick.
        let just_before = utc(2025, 1, 1, 10, 4) + chrono::Duration::milliseconds(59_999);
        assert_eq!(s.next_after(just_before), Some(utc(2025, 1, 1, 10, 5)));
        let just_after = utc(2025, 1, 1, 10, 5) + chrono::Duration::milliseconds(1);
        assert_eq!(s.next_after(just_after), Some(utc(2025, 1, 1, 10, 10)));
        // Nicknames expand to their fields.
        let daily = Schedule::parse("@daily", "UTC").unwrap();
        assert_eq!(
            daily.next_after(utc(2025, 1, 1, 10, 0)),
            Some(utc(2025, 1, 2, 0, 0))
        );
    }

    /// 02:30 Paris time daily: in UTC it moves by an hour across the March change, and the
    /// day the clock skips 02:30 it fires once, right after the gap.
    #[test]
    fn paris_ticks_follow_dst() {
        let s = Schedule::parse("30 2 * * *", "Europe/Paris").unwrap();
        assert_eq!(s.timezone(), "Europe/Paris");
        // 2025-03-30 02:00 CET jumps to 03:00 CEST.
        assert_eq!(
            ticks(&s, utc(2025, 3, 28, 12, 0), 4),
            vec![
                utc(2025, 3, 29, 1, 30), // 02:30 CET = 01:30 UTC
                utc(2025, 3, 30, 1, 0),  // 02:30 doesn't exist: 03:00 CEST = 01:00 UTC
                utc(2025, 3, 31, 0, 30), // 02:30 CEST = 00:30 UTC
                utc(2025, 4, 1, 0, 30),
            ]
        );
        // 2025-10-26 03:00 CEST falls back to 02:00 CET: 02:30 happens twice, fires once.
        assert_eq!(
            ticks(&s, utc(2025, 10, 25, 12, 0), 2),
            vec![utc(2025, 10, 26, 0, 30), utc(2025, 10, 27, 1, 30)]
        );
    }

    /// An hourly schedule keeps one tick per real hour through the repeated hour in autumn.
    #[test]
    fn interval_schedules_tick_through_the_repeated_hour() {
        let s = Schedule::parse("0 * * * *", "Europe/Paris").unwrap();
        assert_eq!(
            ticks(&s, utc(2025, 10, 25, 23, 30), 3),
            vec![
                utc(2025, 10, 26, 0, 0), // 02:00 CEST
                utc(2025, 10, 26, 1, 0), // 02:00 CET
                utc(2025, 10, 26, 2, 0), // 03:00 CET
            ]
        );
    }

    /// Seconds, years, unknown nicknames and bad fields are ERR_CRON_INVALID; bad zones are
    /// ERR_TIMEZONE_INVALID.
    #[test]
    fn refuses_invalid_expressions_and_zones() {
        for bad in [
            "",
            "* * * *",
            "0 * * * * *",
            "0 0 * * * * 2025",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * * 13 *",
            "* * * * 8",
            "@reboot",
            "@annually",
            "@every 5m",
            "*/0 * * * *",
            "a b c d e",
        ] {
            let e = Schedule::parse(bad, "UTC").expect_err(bad);
            assert_eq!(e.code, codes::CRON_INVALID, "{bad}: {e}");
        }
        for bad in ["", "Mars/Olympus", "europe/paris", "UTC+2", "Europe/Paris "] {
            let e = Schedule::parse("* * * * *", bad).expect_err(bad);
            assert_eq!(e.code, codes::TIMEZONE_INVALID, "{bad:?}: {e}");
        }
    }

    /// A schedule serializes as its `cron` and `timezone` fields and reads back equal.
    #[test]
    fn serde_round_trip() {
        let s = Schedule::parse("0 3 * * 1-5", "America/New_York").unwrap();
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"cron": "0 3 * * 1-5", "timezone": "America/New_York"})
        );
        assert_eq!(serde_json::from_value::<Schedule>(json).unwrap(), s);
        let utc_default: Schedule =
            serde_json::from_value(serde_json::json!({"cron": "@hourly"})).unwrap();
        assert_eq!(utc_default.timezone(), "UTC");
    }
}
