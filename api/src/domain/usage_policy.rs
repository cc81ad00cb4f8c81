//! A usage-right donor's terms: for what, when (weekly windows in the donor's time zone), how
//! many at once and for how long the community may use the donated machines.

use chrono::{DateTime, Datelike, TimeZone, Timelike, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error as _};
use utoipa::ToSchema;

use super::Problem;
use super::validation::{FieldErrors, check_time_zone};

text_enum! {
    /// What a lease or job is for.
    pub enum Purpose {
        Build => "build",
        Ci => "ci",
        Test => "test",
    }
}

text_enum! {
    /// A day of the week.
    pub enum Weekday {
        Mon => "mon",
        Tue => "tue",
        Wed => "wed",
        Thu => "thu",
        Fri => "fri",
        Sat => "sat",
        Sun => "sun",
    }
}

impl Weekday {
    fn from_chrono(day: chrono::Weekday) -> Self {
        Weekday::ALL[day.num_days_from_monday() as usize]
    }

    fn previous(self) -> Self {
        Weekday::ALL[(self as usize + 6) % 7]
    }
}

/// A time of day as minutes since local midnight, written `HH:MM`; `24:00` is midnight at the
/// end of the day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClockTime(u16);

impl ClockTime {
    pub const END_OF_DAY: ClockTime = ClockTime(24 * 60);

    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("`{text}` is not a time of day in HH:MM form (00:00 to 24:00)");
        let (hours, minutes) = text.split_once(':').ok_or_else(bad)?;
        // Two digits each, nothing else (integer parsing would also take `+1`).
        let two_digits = |s: &str| s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit());
        if !two_digits(hours) || !two_digits(minutes) {
            return Err(bad());
        }
        let hours: u16 = hours.parse().map_err(|_| bad())?;
        let minutes: u16 = minutes.parse().map_err(|_| bad())?;
        let total = hours * 60 + minutes;
        if minutes >= 60 || total > Self::END_OF_DAY.0 {
            return Err(bad());
        }
        Ok(ClockTime(total))
    }

    pub fn minutes(self) -> u16 {
        self.0
    }
}

impl Serialize for ClockTime {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{:02}:{:02}", self.0 / 60, self.0 % 60))
    }
}

impl<'de> Deserialize<'de> for ClockTime {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        ClockTime::parse(&text).map_err(D::Error::custom)
    }
}

/// A weekly window. A window whose `end` is not after its `start` runs overnight into the
/// next day: `{"days": ["fri"], "start": "20:00", "end": "08:00"}` is Friday 20:00 to
/// Saturday 08:00.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeWindow {
    /// The days on which the window opens.
    #[schema(min_items = 1, max_items = 7)]
    pub days: Vec<Weekday>,
    /// Opening time, `HH:MM`.
    #[schema(value_type = String, example = "20:00", pattern = r"^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$")]
    pub start: ClockTime,
    /// Closing time, `HH:MM` (`24:00` for midnight).
    #[schema(value_type = String, example = "08:00", pattern = r"^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$")]
    pub end: ClockTime,
}

/// How the community may use a usage-right donation's machines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsagePolicy {
    /// What the machines may be used for.
    #[schema(min_items = 1, max_items = 3)]
    pub purposes: Vec<Purpose>,
    /// IANA time zone the windows are read in; defaults to the donor's time zone.
    #[serde(default)]
    #[schema(example = "Asia/Shanghai")]
    pub time_zone: Option<String>,
    /// When the machines may be used. Empty: at any time.
    #[serde(default)]
    #[schema(max_items = 28)]
    pub windows: Vec<TimeWindow>,
    /// How many leases may run on this donation's machines at once.
    #[schema(minimum = 1, maximum = 10000)]
    pub max_concurrent_leases: i64,
    /// The longest a single lease may last, in minutes.
    #[schema(minimum = 1, maximum = 43200)]
    pub max_lease_minutes: i64,
}

impl UsagePolicy {
    /// Reports every problem under `field` (e.g. `usage_policy.windows[1].days`; with `""`, when
    /// the policy is the whole body, `windows[1].days`).
    pub fn validate(&self, field: &str, errors: &mut FieldErrors) {
        let at = |name: &str| if field.is_empty() { name.to_owned() } else { format!("{field}.{name}") };
        if self.purposes.is_empty() {
            errors.add(at("purposes"), Problem::NoneGiven);
        } else if has_duplicates(&self.purposes) {
            errors.add(at("purposes"), Problem::Repeated);
        }
        if let Some(zone) = &self.time_zone
            && let Err(problem) = check_time_zone(zone)
        {
            errors.add(at("time_zone"), problem);
        }
        if self.windows.len() > 28 {
            errors.add(at("windows"), Problem::TooMany { max: 28 });
        }
        for (i, window) in self.windows.iter().enumerate() {
            let at = at(&format!("windows[{i}]"));
            if window.days.is_empty() {
                errors.add(format!("{at}.days"), Problem::NoneGiven);
            } else if has_duplicates(&window.days) {
                errors.add(format!("{at}.days"), Problem::Repeated);
            }
            if window.start == ClockTime::END_OF_DAY {
                errors.add(format!("{at}.start"), Problem::WindowOpensAtMidnight);
            }
            if window.start == window.end {
                errors.add(format!("{at}.end"), Problem::SameAsStart);
            }
        }
        if !(1..=10_000).contains(&self.max_concurrent_leases) {
            errors.add(at("max_concurrent_leases"), Problem::Between { min: 1, max: 10_000 });
        }
        if !(1..=43_200).contains(&self.max_lease_minutes) {
            errors.add(at("max_lease_minutes"), Problem::Between { min: 1, max: 43_200 });
        }
    }

    /// Whether the machines may be used at this instant. A policy whose time zone is missing
    /// or unknown is closed: the scheduler must never guess a donor's clock.
    pub fn is_open_at(&self, at: DateTime<Utc>) -> bool {
        if self.windows.is_empty() {
            return true;
        }
        let Some(zone) = self.time_zone.as_deref().and_then(|z| check_time_zone(z).ok()) else {
            return false;
        };
        let local = at.with_timezone(&zone);
        let day = Weekday::from_chrono(local.weekday());
        let minute = (local.hour() * 60 + local.minute()) as u16;
        self.windows.iter().any(|w| {
            let (start, end) = (w.start.minutes(), w.end.minutes());
            if start < end {
                w.days.contains(&day) && (start..end).contains(&minute)
            } else {
                (w.days.contains(&day) && minute >= start) || (w.days.contains(&day.previous()) && minute < end)
            }
        })
    }

    /// Whether a lease may start at `at` and run for `length` without leaving the windows.
    pub fn is_open_for(&self, at: DateTime<Utc>, length: chrono::Duration) -> bool {
        if self.windows.is_empty() {
            return true;
        }
        if !self.is_open_at(at) {
            return false;
        }
        self.closes_after(at).is_none_or(|closing| at + length <= closing)
    }

    /// When the stretch of open time around `at` ends, or `None` if it lasts beyond a week
    /// (the windows cover every hour). The policy closes only where some window ends, so
    /// those are the instants to look at.
    fn closes_after(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let zone = check_time_zone(self.time_zone.as_deref()?).ok()?;
        let today = at.with_timezone(&zone).date_naive();
        let mut ends: Vec<DateTime<Utc>> = (-1..=8)
            .map(|offset| today + chrono::Duration::days(offset))
            .flat_map(|date| {
                let day = Weekday::from_chrono(date.weekday());
                self.windows.iter().filter(move |w| w.days.contains(&day)).map(move |w| {
                    let end_date = if w.start < w.end { date } else { date + chrono::Duration::days(1) };
                    let minutes = i64::from(w.end.minutes());
                    end_date.and_hms_opt(0, 0, 0).expect("midnight exists") + chrono::Duration::minutes(minutes)
                })
            })
            .filter_map(|local| {
                // A closing time that falls in a DST gap happens when the clocks reach it.
                (zone.from_local_datetime(&local).earliest())
                    .or_else(|| zone.from_local_datetime(&(local + chrono::Duration::hours(1))).earliest())
                    .map(|t| t.with_timezone(&Utc))
            })
            .filter(|t| *t > at)
            .collect();
        ends.sort();
        ends.into_iter().find(|t| !self.is_open_at(*t))
    }

    /// Whether this policy allows the purpose.
    pub fn allows(&self, purpose: Purpose) -> bool {
        self.purposes.contains(&purpose)
    }
}

fn has_duplicates<T: Ord + Copy>(items: &[T]) -> bool {
    let mut sorted = items.to_vec();
    sorted.sort();
    sorted.windows(2).any(|pair| pair[0] == pair[1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn policy(zone: &str, windows: serde_json::Value) -> UsagePolicy {
        serde_json::from_value(serde_json::json!({
            "purposes": ["ci", "test"],
            "time_zone": zone,
            "windows": windows,
            "max_concurrent_leases": 2,
            "max_lease_minutes": 240,
        }))
        .unwrap()
    }

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    #[test]
    fn an_overnight_window_spans_into_the_next_day_in_the_donors_zone() {
        // Weeknights 20:00-08:00 in Shanghai (UTC+8).
        let p = policy(
            "Asia/Shanghai",
            serde_json::json!([
                {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "20:00", "end": "08:00"}
            ]),
        );
        // Friday 2026-11-20 12:00 UTC is Friday 20:00 in Shanghai: open.
        assert!(p.is_open_at(utc(2026, 11, 20, 12, 0)));
        // Saturday 07:59 Shanghai (Friday 23:59 UTC) is still Friday night's window.
        assert!(p.is_open_at(utc(2026, 11, 20, 23, 59)));
        // Saturday 08:00 Shanghai: closed.
        assert!(!p.is_open_at(utc(2026, 11, 21, 0, 0)));
        // Saturday 20:00 Shanghai: no window opens on Saturday.
        assert!(!p.is_open_at(utc(2026, 11, 21, 12, 0)));
        // Monday 07:00 Shanghai: Sunday opened no window, so closed.
        assert!(!p.is_open_at(utc(2026, 11, 22, 23, 0)));
    }

    #[test]
    fn windows_follow_daylight_saving_time() {
        // Weekdays 09:00-17:00 in Berlin: UTC+1 in winter, UTC+2 in summer.
        let p = policy(
            "Europe/Berlin",
            serde_json::json!([
                {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "17:00"}
            ]),
        );
        assert!(p.is_open_at(utc(2026, 1, 14, 8, 0))); // 09:00 CET
        assert!(!p.is_open_at(utc(2026, 7, 15, 15, 30))); // 17:30 CEST
        assert!(p.is_open_at(utc(2026, 7, 15, 14, 30))); // 16:30 CEST
    }

    #[test]
    fn no_windows_means_any_time() {
        let p = policy("Asia/Shanghai", serde_json::json!([]));
        assert!(p.is_open_at(utc(2026, 11, 22, 3, 0)));
    }

    #[test]
    fn a_policy_without_a_known_zone_is_closed() {
        let mut p = policy("Asia/Shanghai", serde_json::json!([{"days": ["mon"], "start": "00:00", "end": "24:00"}]));
        p.time_zone = None;
        assert!(!p.is_open_at(utc(2026, 11, 23, 3, 0)));
    }

    #[test]
    fn validation_names_each_bad_field() {
        let mut p = policy("Mars/Olympus", serde_json::json!([{"days": [], "start": "10:00", "end": "10:00"}]));
        p.purposes.clear();
        p.max_concurrent_leases = 0;
        let mut errors = FieldErrors::new();
        p.validate("usage_policy", &mut errors);
        let fields: Vec<_> = errors.as_slice().iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "usage_policy.purposes",
                "usage_policy.time_zone",
                "usage_policy.windows[0].days",
                "usage_policy.windows[0].end",
                "usage_policy.max_concurrent_leases",
            ]
        );
    }

    #[test]
    fn clock_times_are_strict() {
        assert_eq!(ClockTime::parse("24:00"), Ok(ClockTime::END_OF_DAY));
        for bad in ["24:01", "7:00", "07:60", "noon", "07-00", "+1:00", "07:+5"] {
            assert!(ClockTime::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_lease_must_end_before_the_window_closes_even_across_midnight() {
        // Friday 20:00 to Saturday 08:00, and Saturday all day, in Berlin (UTC+1 in November).
        let p = policy(
            "Europe/Berlin",
            serde_json::json!([
                {"days": ["fri"], "start": "20:00", "end": "08:00"},
                {"days": ["sat"], "start": "08:00", "end": "24:00"},
            ]),
        );
        let friday_22 = utc(2026, 11, 20, 21, 0);
        assert!(p.is_open_for(friday_22, chrono::Duration::hours(25)), "the windows join up until Sunday 00:00");
        assert!(!p.is_open_for(friday_22, chrono::Duration::hours(27)));
        assert!(!p.is_open_for(utc(2026, 11, 20, 12, 0), chrono::Duration::minutes(1)), "closed on Friday noon");
        let always = policy("Asia/Shanghai", serde_json::json!([]));
        assert!(always.is_open_for(friday_22, chrono::Duration::days(30)));
    }
}
