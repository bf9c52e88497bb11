//! Dates and date-times as exports write them → the UTC form a referral
//! holds (`2024-05-30T00:00:00Z`).
//!
//! Accepted: ISO dates (`2024-05-30`, how the Web API writes DateOnly
//! columns), US dates (`5/30/2024`, how Dynamics CSV exports write them:
//! month first, four-digit year), RFC 3339 date-times with `Z` or an offset
//! (`2024-05-30T21:59:01Z`, `2024-05-30T23:59:01+02:00`), and date-times
//! without an offset (`5/30/2024 9:59 PM`, `2024-05-30T21:59:01`).
//!
//! A `date` field keeps the calendar date as written, whatever time and
//! offset follow it. A `datetime` field turns a date into midnight UTC and
//! an offset date-time into UTC; a date-time without an offset is refused,
//! because the moment it names depends on a time zone the export does not
//! state.

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, SecondsFormat, Utc};

/// Why a text is not a date.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum DateError {
    #[error(
        "not a date: expected YYYY-MM-DD, M/D/YYYY or a date-time with a UTC offset such as 2024-05-30T21:59:01Z"
    )]
    NotADate,
    #[error("no such date")]
    NoSuchDate,
    #[error("not a time of day")]
    NoSuchTime,
    #[error("not a UTC offset: expected Z or ±HH:MM after the time")]
    BadOffset,
    #[error(
        "the date-time has no UTC offset, so the moment it names is unknown; map it as a `date` or export it with an offset"
    )]
    NoOffset,
}

/// What a text says, before it is put in the form a field wants.
#[derive(Debug, Clone, PartialEq)]
enum Written {
    Date(NaiveDate),
    /// A date and time of day in an unstated time zone.
    Local(NaiveDateTime),
    Instant(DateTime<chrono::FixedOffset>),
}

/// The calendar date `text` names, as `YYYY-MM-DDT00:00:00Z`.
pub(super) fn to_utc_date(text: &str) -> Result<String, DateError> {
    let date = match parse(text.trim())? {
        Written::Date(date) => date,
        Written::Local(local) => local.date(),
        Written::Instant(instant) => instant.date_naive(),
    };
    Ok(format!("{}T00:00:00Z", date.format("%Y-%m-%d")))
}

/// The moment `text` names, in UTC, as `YYYY-MM-DDTHH:MM:SSZ` (with the
/// fraction of a second when there is one).
pub(super) fn to_utc_datetime(text: &str) -> Result<String, DateError> {
    let instant = match parse(text.trim())? {
        Written::Date(date) => date.and_time(NaiveTime::MIN).and_utc(),
        Written::Local(_) => return Err(DateError::NoOffset),
        Written::Instant(instant) => instant.with_timezone(&Utc),
    };
    Ok(instant.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

fn parse(text: &str) -> Result<Written, DateError> {
    if let Some(date) = text.get(..10).filter(|head| is_iso_date_shape(head)) {
        let date = iso_date(date)?;
        let rest = &text[10..];
        if rest.is_empty() {
            return Ok(Written::Date(date));
        }
        if !rest.starts_with(['T', 't', ' ']) {
            return Err(DateError::NotADate);
        }
        if let Ok(instant) = DateTime::parse_from_rfc3339(text) {
            return Ok(Written::Instant(instant));
        }
        // Not RFC 3339: either no offset, or something wrong to name.
        let clock_and_offset = &rest[1..];
        let offset_start = clock_and_offset.find(['Z', 'z', '+', '-']);
        let clock = &clock_and_offset[..offset_start.unwrap_or(clock_and_offset.len())];
        let time = time_of_day(clock)?;
        if offset_start.is_some() {
            return Err(DateError::BadOffset);
        }
        return Ok(Written::Local(date.and_time(time)));
    }
    if let Some((date, time)) = us_date_time(text)? {
        return Ok(match time {
            Some(time) => Written::Local(date.and_time(time)),
            None => Written::Date(date),
        });
    }
    Err(DateError::NotADate)
}

fn is_iso_date_shape(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 10
        && bytes.iter().enumerate().all(|(index, byte)| match index {
            4 | 7 => *byte == b'-',
            _ => byte.is_ascii_digit(),
        })
}

/// `YYYY-MM-DD`, already known to have that shape.
fn iso_date(text: &str) -> Result<NaiveDate, DateError> {
    let number = |range: std::ops::Range<usize>| text[range].parse::<u32>().ok();
    match (number(0..4), number(5..7), number(8..10)) {
        (Some(year), Some(month), Some(day)) => ymd(year, month, day),
        _ => Err(DateError::NotADate),
    }
}

fn ymd(year: u32, month: u32, day: u32) -> Result<NaiveDate, DateError> {
    let year = i32::try_from(year).map_err(|_| DateError::NotADate)?;
    NaiveDate::from_ymd_opt(year, month, day).ok_or(DateError::NoSuchDate)
}

/// `M/D/YYYY`, optionally followed by a time of day (`9:59 PM`, `21:59:01`).
/// `None` when `text` does not start like a US date.
fn us_date_time(text: &str) -> Result<Option<(NaiveDate, Option<NaiveTime>)>, DateError> {
    let (date, time) = match text.split_once(char::is_whitespace) {
        Some((date, time)) => (date, Some(time.trim())),
        None => (text, None),
    };
    let parts: Vec<&str> = date.split('/').collect();
    let [month, day, year] = parts.as_slice() else {
        return Ok(None);
    };
    let is_digits = |part: &str, lengths: std::ops::RangeInclusive<usize>| {
        lengths.contains(&part.len()) && part.chars().all(|c| c.is_ascii_digit())
    };
    if !(is_digits(month, 1..=2) && is_digits(day, 1..=2) && is_digits(year, 4..=4)) {
        return Err(DateError::NotADate);
    }
    let number = |part: &str| part.parse::<u32>().map_err(|_| DateError::NotADate);
    let date = ymd(number(year)?, number(month)?, number(day)?)?;
    let time = time.map(time_of_day).transpose()?;
    Ok(Some((date, time)))
}

/// `HH:MM`, `HH:MM:SS`, `HH:MM:SS.fff`, each optionally with `AM`/`PM`.
fn time_of_day(text: &str) -> Result<NaiveTime, DateError> {
    let text = text.trim();
    let upper = text.to_ascii_uppercase();
    let (clock, meridiem) = if let Some(clock) = upper.strip_suffix("AM") {
        (clock.trim_end(), Some(false))
    } else if let Some(clock) = upper.strip_suffix("PM") {
        (clock.trim_end(), Some(true))
    } else {
        (upper.as_str(), None)
    };
    let formats = ["%H:%M:%S%.f", "%H:%M"];
    let time = formats
        .iter()
        .find_map(|format| NaiveTime::parse_from_str(clock, format).ok())
        .ok_or(if clock.contains(':') {
            DateError::NoSuchTime
        } else {
            DateError::NotADate
        })?;
    let Some(afternoon) = meridiem else {
        return Ok(time);
    };
    // A 12-hour clock runs 12, 1, …, 11.
    let hour = chrono::Timelike::hour(&time);
    if !(1..=12).contains(&hour) {
        return Err(DateError::NoSuchTime);
    }
    let hour24 = match (hour, afternoon) {
        (12, false) => 0,
        (12, true) => 12,
        (hour, false) => hour,
        (hour, true) => hour + 12,
    };
    chrono::Timelike::with_hour(&time, hour24).ok_or(DateError::NoSuchTime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_keep_the_calendar_date_as_written() {
        let cases = [
            ("2024-05-30", "2024-05-30T00:00:00Z"),
            ("5/30/2024", "2024-05-30T00:00:00Z"),
            ("05/03/2024", "2024-05-03T00:00:00Z"),
            ("12/31/2024", "2024-12-31T00:00:00Z"),
            ("2/29/2024", "2024-02-29T00:00:00Z"),
            (" 2024-11-14 ", "2024-11-14T00:00:00Z"),
            ("2024-05-30T21:59:01Z", "2024-05-30T00:00:00Z"),
            ("2024-05-30T00:30:00+02:00", "2024-05-30T00:00:00Z"),
            ("5/30/2024 9:59 PM", "2024-05-30T00:00:00Z"),
        ];
        for (text, expected) in cases {
            assert_eq!(to_utc_date(text).as_deref(), Ok(expected), "text {text:?}");
        }
    }

    #[test]
    fn datetimes_are_put_in_utc() {
        let cases = [
            ("2024-05-30T21:59:01Z", "2024-05-30T21:59:01Z"),
            ("2024-05-30T23:59:01+02:00", "2024-05-30T21:59:01Z"),
            ("2024-05-30T20:00:00-05:00", "2024-05-31T01:00:00Z"),
            ("2024-05-30 21:59:01z", "2024-05-30T21:59:01Z"),
            ("2024-05-30T21:59:01.250Z", "2024-05-30T21:59:01.250Z"),
            ("2024-05-30", "2024-05-30T00:00:00Z"),
            ("5/30/2024", "2024-05-30T00:00:00Z"),
        ];
        for (text, expected) in cases {
            assert_eq!(
                to_utc_datetime(text).as_deref(),
                Ok(expected),
                "text {text:?}"
            );
        }
    }

    #[test]
    fn invalid_dates_are_errors() {
        let cases = [
            ("2/30/2024", DateError::NoSuchDate),
            ("2/29/2023", DateError::NoSuchDate),
            ("13/1/2024", DateError::NoSuchDate),
            ("2024-02-30", DateError::NoSuchDate),
            ("2024-13-01T00:00:00Z", DateError::NoSuchDate),
            ("30/5/2024", DateError::NoSuchDate),
            ("5/30/24", DateError::NotADate),
            ("2024/05/30", DateError::NotADate),
            ("yesterday", DateError::NotADate),
            ("2024-05-30X", DateError::NotADate),
            ("20240530", DateError::NotADate),
            ("2024-05-30T25:00:00Z", DateError::NoSuchTime),
            ("2024-05-30T21:59:01+2", DateError::BadOffset),
            ("2024-05-30T21:59:01+25:00", DateError::BadOffset),
            ("5/30/2024 13:00 PM", DateError::NoSuchTime),
            ("5/30/2024 soon", DateError::NotADate),
        ];
        for (text, expected) in cases {
            assert_eq!(to_utc_date(text), Err(expected), "text {text:?}");
        }
    }

    #[test]
    fn datetimes_without_offset_are_refused() {
        for text in [
            "2024-05-30T21:59:01",
            "5/30/2024 9:59 PM",
            "5/30/2024 21:59",
        ] {
            assert_eq!(
                to_utc_datetime(text),
                Err(DateError::NoOffset),
                "text {text:?}"
            );
        }
    }

    #[test]
    fn twelve_hour_clock() {
        let cases = [
            ("12:00 AM", "00:00:00"),
            ("12:30 PM", "12:30:00"),
            ("1:05:09 pm", "13:05:09"),
            ("11:59 AM", "11:59:00"),
            ("23:15", "23:15:00"),
        ];
        for (text, expected) in cases {
            let time = time_of_day(text).map(|t| t.format("%H:%M:%S").to_string());
            assert_eq!(time.as_deref(), Ok(expected), "text {text:?}");
        }
        assert_eq!(time_of_day("0:30 AM"), Err(DateError::NoSuchTime));
    }
}
