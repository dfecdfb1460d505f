//! Durations as definitions write them: a whole number and one unit, `500ms`, `30s`, `5m`, `1h`.
//!
//! One unit per value keeps the text unambiguous and makes the written form canonical: a
//! duration always serializes with the largest unit that divides it exactly, so `90s` reads back
//! as `90s` and `60s` is written `1m`.

use std::time::Duration;

/// The shortest duration a definition may write.
pub const MIN: Duration = Duration::from_millis(1);
/// The longest duration a definition may write: a day.
pub const MAX: Duration = Duration::from_secs(24 * 60 * 60);

/// Parses `<digits><unit>` with unit `ms`, `s`, `m` or `h`, within [`MIN`]`..=`[`MAX`].
///
/// # Errors
/// A message saying what is wrong with `text`.
pub fn parse(text: &str) -> Result<Duration, String> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => {
            return Err(format!(
                "`{text}` is not a duration: write a whole number and one unit, e.g. \"500ms\", \"30s\", \"5m\", \"1h\""
            ));
        }
    };
    let too_long = || format!("`{text}` is longer than the maximum {}", format(MAX));
    if number.is_empty() {
        return Err(format!("`{text}` has no number before its unit"));
    }
    let count: u64 = number.parse().map_err(|_| too_long())?;
    let millis = count.checked_mul(millis_per_unit).ok_or_else(too_long)?;
    let duration = Duration::from_millis(millis);
    if duration < MIN {
        return Err(format!(
            "`{text}` is shorter than the minimum {}",
            format(MIN)
        ));
    }
    if duration > MAX {
        return Err(too_long());
    }
    Ok(duration)
}

/// The written form: the largest unit that divides the duration exactly (sub-millisecond parts
/// are dropped; definitions can't write them).
#[must_use]
pub fn format(duration: Duration) -> String {
    let millis = duration.as_millis();
    for (unit, size) in [("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
        if millis != 0 && millis.is_multiple_of(size) {
            return format!("{}{unit}", millis / size);
        }
    }
    format!("{millis}ms")
}

/// `serialize_with` for [`Duration`] fields.
pub(crate) fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(*d))
}

/// Serializes an optional duration (`None` is skipped by the field's attribute).
#[allow(clippy::ref_option)]
pub(crate) fn serialize_option<S: serde::Serializer>(
    d: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => serialize(d, s),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// Every unit parses, and formatting picks the largest exact unit.
    #[test]
    fn parses_and_formats_each_unit() {
        for (text, ms, canonical) in [
            ("500ms", 500, "500ms"),
            ("1000ms", 1_000, "1s"),
            ("30s", 30_000, "30s"),
            ("90s", 90_000, "90s"),
            ("60s", 60_000, "1m"),
            ("5m", 300_000, "5m"),
            ("1h", 3_600_000, "1h"),
            ("24h", 86_400_000, "24h"),
            ("1ms", 1, "1ms"),
        ] {
            let d = parse(text).expect(text);
            assert_eq!(d, Duration::from_millis(ms), "{text}");
            assert_eq!(format(d), canonical, "{text}");
        }
    }

    /// Anything but `<digits><unit>` within bounds is refused.
    #[test]
    fn refuses_malformed_and_out_of_bounds() {
        for text in [
            "",
            "30",
            "s",
            "1.5s",
            "-1s",
            "1 s",
            " 1s",
            "1h30m",
            "2d",
            "0s",
            "0ms",
            "25h",
            "1441m",
            "99999999999999999999h",
            "1S",
        ] {
            assert!(parse(text).is_err(), "{text:?} should be refused");
        }
    }
}
