//! Durations and sizes as people write them in `.nightshift.toml` ("59m", "1h30m", "4G").
//!
//! Both keep one canonical spelling for display and JSON, so `nightshift env check` shows a
//! value the way it could be written back into the file.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

/// A length of time written with units: `90s`, `10m`, `1h30m`, `500ms`, `2d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(Duration);

impl HumanDuration {
    pub const fn from_secs(secs: u64) -> HumanDuration {
        HumanDuration(Duration::from_secs(secs))
    }

    pub fn as_duration(self) -> Duration {
        self.0
    }
}

impl From<HumanDuration> for Duration {
    fn from(value: HumanDuration) -> Duration {
        value.0
    }
}

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(text: &str) -> Result<HumanDuration, String> {
        let spelled = text.trim();
        if spelled.is_empty() {
            return Err("is empty; write a duration such as \"10m\" or \"1h30m\"".into());
        }
        let mut total_ms: u64 = 0;
        let mut rest = spelled;
        while !rest.is_empty() {
            let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            if digits == 0 {
                return Err(format!(
                    "expected a number at `{rest}`; write a duration such as \"10m\" or \"1h30m\""
                ));
            }
            let number: u64 = rest[..digits]
                .parse()
                .map_err(|_| "is too large".to_string())?;
            rest = rest[digits..].trim_start();
            let unit_len = rest.len()
                - rest
                    .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                    .len();
            let unit = &rest[..unit_len];
            rest = rest[unit_len..].trim_start();
            let unit_ms: u64 = match unit {
                "ms" => 1,
                "s" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                "" => {
                    return Err(format!(
                        "`{number}` has no unit; write \"{number}s\" or \"{number}m\""
                    ));
                }
                other => {
                    return Err(format!(
                        "`{other}` is not a unit of time; use ms, s, m, h or d"
                    ));
                }
            };
            total_ms = number
                .checked_mul(unit_ms)
                .and_then(|ms| total_ms.checked_add(ms))
                .ok_or_else(|| "is too large".to_string())?;
        }
        Ok(HumanDuration(Duration::from_millis(total_ms)))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total_ms = self.0.as_millis();
        if total_ms == 0 {
            return f.write_str("0s");
        }
        let parts = [
            (86_400_000, "d"),
            (3_600_000, "h"),
            (60_000, "m"),
            (1_000, "s"),
            (1, "ms"),
        ];
        let mut rest = total_ms;
        for (size, unit) in parts {
            if rest >= size {
                write!(f, "{}{unit}", rest / size)?;
                rest %= size;
            }
        }
        Ok(())
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// An amount of memory or disk: a number of bytes, or a number with a binary unit
/// (`512M`, `4G`, `1.5GiB`; K, M, G and T are all powers of 1024, with or without `B`/`iB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(u64);

impl ByteSize {
    pub const KIB: u64 = 1024;
    pub const MIB: u64 = 1024 * 1024;
    pub const GIB: u64 = 1024 * 1024 * 1024;
    pub const TIB: u64 = 1024 * 1024 * 1024 * 1024;

    pub const fn from_bytes(bytes: u64) -> ByteSize {
        ByteSize(bytes)
    }

    pub const fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<ByteSize, String> {
        let spelled = text.trim();
        let number_len = spelled.len()
            - spelled
                .trim_start_matches(|c: char| c.is_ascii_digit() || c == '.')
                .len();
        let (number, unit) = spelled.split_at(number_len);
        if number.is_empty() {
            return Err("expected a size such as \"512M\" or \"4G\"".into());
        }
        let multiplier = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => ByteSize::KIB,
            "m" | "mb" | "mib" => ByteSize::MIB,
            "g" | "gb" | "gib" => ByteSize::GIB,
            "t" | "tb" | "tib" => ByteSize::TIB,
            _ => {
                return Err(format!(
                    "`{}` is not a unit of size; use K, M, G or T (powers of 1024)",
                    unit.trim()
                ));
            }
        };
        let bytes = if let Ok(whole) = number.parse::<u64>() {
            whole
                .checked_mul(multiplier)
                .ok_or_else(|| "is too large".to_string())?
        } else {
            let fraction: f64 = number
                .parse()
                .map_err(|_| format!("`{number}` is not a number"))?;
            let bytes = (fraction * multiplier as f64).round();
            if !bytes.is_finite() || bytes >= u64::MAX as f64 {
                return Err("is too large".into());
            }
            bytes as u64
        };
        Ok(ByteSize(bytes))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let units = [
            (ByteSize::TIB, "T"),
            (ByteSize::GIB, "G"),
            (ByteSize::MIB, "M"),
            (ByteSize::KIB, "K"),
        ];
        for (size, unit) in units {
            if self.0 >= size && self.0.is_multiple_of(size) {
                return write!(f, "{}{unit}", self.0 / size);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn duration(text: &str) -> Result<HumanDuration, String> {
        text.parse()
    }

    #[test]
    fn durations_parse_and_print_canonically() {
        assert_eq!(
            duration("59m").unwrap().as_duration(),
            Duration::from_secs(59 * 60)
        );
        assert_eq!(
            duration("1h30m").unwrap().as_duration(),
            Duration::from_secs(5400)
        );
        assert_eq!(duration("1h 30m").unwrap().to_string(), "1h30m");
        assert_eq!(duration("90s").unwrap().to_string(), "1m30s");
        assert_eq!(duration("1500ms").unwrap().to_string(), "1s500ms");
        assert_eq!(duration("0s").unwrap().to_string(), "0s");
        assert!(duration("10").unwrap_err().contains("no unit"));
        assert!(duration("10 minutes").unwrap_err().contains("not a unit"));
        assert!(duration("").unwrap_err().contains("empty"));
        assert!(duration("m").unwrap_err().contains("expected a number"));
        assert!(
            duration("99999999999999999999d")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn sizes_parse_and_print_canonically() {
        let size = |text: &str| text.parse::<ByteSize>();
        assert_eq!(size("4G").unwrap().bytes(), 4 * ByteSize::GIB);
        assert_eq!(size("4gib").unwrap().to_string(), "4G");
        assert_eq!(size("512 MB").unwrap().to_string(), "512M");
        assert_eq!(size("1.5G").unwrap().to_string(), "1536M");
        assert_eq!(size("1000").unwrap().to_string(), "1000B");
        assert!(size("4X").unwrap_err().contains("not a unit of size"));
        assert!(size("G").unwrap_err().contains("expected a size"));
        assert!(size("1.2.3G").unwrap_err().contains("not a number"));
        assert!(size("99999999999T").unwrap_err().contains("too large"));
    }
}
