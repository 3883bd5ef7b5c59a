//! Recovery-target times for `pitr restore --to TIME [--tz ZONE]`.
//!
//! [`parse_time`] turns the user's text into one exact instant
//! ([`jiff::Timestamp`]), or refuses it with a one-line, actionable
//! [`TimeTargetError`]. It never guesses and never panics.
//!
//! # Accepted forms
//!
//! Surrounding whitespace is ignored. A date, optionally followed by a time,
//! optionally followed by a UTC offset:
//!
//! | Form                                      | Meaning                                 |
//! |-------------------------------------------|-----------------------------------------|
//! | `2025-11-22`                              | midnight at the start of that day       |
//! | `2025-11-22 14:30`                        | seconds are zero                        |
//! | `2025-11-22 14:30:05`                     |                                         |
//! | `2025-11-22 14:30:05.123456`              | 1 to 6 fractional digits (microseconds) |
//! | `2025-11-22T14:30:05`                     | `T` (or `t`) instead of the space       |
//! | `2025-11-22 14:30:05Z`                    | `Z` (or `z`): UTC                       |
//! | `2025-11-22 14:30:05.123456+02`           | PostgreSQL style offset, hours only     |
//! | `2025-11-22T14:30:05+02:00`               | RFC 3339                                |
//! | `2025-11-22 14:30:05+0200`                | offset without colon                    |
//! | `2025-11-22 14:30-05:30`                  | any of the forms above with any offset  |
//! | `2025-11-22T14:30:00+01:00[Europe/Paris]` | RFC 9557: the offset wins               |
//!
//! Details:
//!
//! - Years have 4 digits; month, day, hour, minute, second and offset fields
//!   have 2. Hours are `00`-`23`, minutes and seconds `00`-`59` (no leap
//!   seconds), and the date must exist (`2025-02-30` is refused).
//! - More than 6 fractional digits is an error: PostgreSQL timestamps have
//!   microsecond precision, so a 7th digit cannot name a distinct instant.
//! - An offset is `Z`, `z`, or a sign followed by `HH`, `HH:MM` or `HHMM`
//!   (hours `00`-`23`); `HH:MM:SS` and `HHMMSS` are accepted too, as
//!   PostgreSQL prints historical local-mean-time offsets like `+00:09:21`.
//!   Spaces between the time and the offset are allowed.
//! - A trailing bracketed time zone (`[Europe/Paris]`, RFC 9557) is accepted
//!   only after an explicit offset. The zone must exist, but the offset alone
//!   decides the instant. Without an offset, use `--tz` instead.
//!
//! # Which zone an offset-less time is in
//!
//! 1. A time with an explicit offset (or `Z`) is that exact instant; `--tz`
//!    and `TZ` are ignored ([`ZoneSource::Explicit`]).
//! 2. Otherwise, the `--tz` zone if given ([`ZoneSource::TzFlag`]): an IANA
//!    name (`Europe/Paris`, `UTC`, `America/New_York`) or a fixed offset in
//!    the forms above (`+02:00`, `-0530`, `Z`). An unknown zone is an error.
//! 3. Otherwise, the `TZ` environment variable if it is set and not blank
//!    ([`ZoneSource::TzEnv`]): an IANA name, the same with a leading `:`
//!    (`:Europe/Paris`), a POSIX TZ string (`CET-1CEST,M3.5.0,M10.5.0/3`,
//!    `UTC0`), or the path of a TZif file (`:/etc/localtime`). Any other value
//!    is an error asking for `--tz`.
//! 4. Otherwise UTC ([`ZoneSource::DefaultUtc`]).
//!
//! # Daylight saving time
//!
//! - A local time that does not exist in the zone (the clocks jump over it,
//!   e.g. `2025-03-30 02:30` in `Europe/Paris`) is an error.
//! - A local time that occurs twice (the clocks fall back over it, e.g.
//!   `2025-10-26 02:30` in `Europe/Paris`) is an error showing both candidate
//!   instants; add the offset of the one you mean
//!   (`2025-10-26 02:30+02:00` or `2025-10-26 02:30+01:00`).
//!
//! # Output
//!
//! [`format_utc`] prints an instant as `2025-11-22 14:30:05+00:00`, with
//! `.ffffff` microseconds only when they are not zero; its output is always
//! accepted back by [`parse_time`]. [`format_in`] prints the same instant in a
//! given zone, e.g. `2025-11-22 15:30:05+01:00 (Europe/Paris)`.

use std::fmt::Write as _;
use std::io::Read as _;

use jiff::Timestamp;
use jiff::civil::{Date, DateTime, Time};
use jiff::fmt::temporal::DateTimePrinter;
use jiff::tz::{AmbiguousOffset, Offset, TimeZone};

/// PostgreSQL timestamps have microsecond precision.
const MAX_FRACTION_DIGITS: usize = 6;

/// Upper bound when reading a TZif file named by `TZ` (real ones are a few KiB).
const MAX_TZIF_BYTES: u64 = 1 << 20;

/// Appended to zone errors when the system has no time zone database.
const NO_TZDB: &str = "; no time zone database was found on this system (install tzdata), \
                       so only UTC, fixed offsets and POSIX TZ strings work";

/// The expected syntax, appended to parse errors.
const EXPECTED: &str = "use YYYY-MM-DD[ HH:MM[:SS[.ffffff]]][offset], \
                        e.g. \"2025-11-22 14:30:05\" or \"2025-11-22T14:30:05+02:00\"";

/// Why a target time was refused. Display is ONE line, actionable, quoting the input.
#[derive(Debug, thiserror::Error)]
pub enum TimeTargetError {
    /// The text is not one of the accepted forms.
    #[error("cannot parse target time {input:?}: {reason}; {EXPECTED}")]
    Unparseable {
        /// The (trimmed) text given.
        input: String,
        /// What was wrong with it.
        reason: String,
    },

    /// More than 6 fractional-second digits.
    #[error(
        "target time {input:?} has {digits} fractional-second digits; PostgreSQL timestamps \
         have microsecond precision, so give at most {MAX_FRACTION_DIGITS}"
    )]
    TooPrecise {
        /// The (trimmed) text given.
        input: String,
        /// How many fractional digits it had.
        digits: usize,
    },

    /// `--tz` (or a bracketed annotation) names a zone that does not exist.
    #[error(
        "cannot interpret target time {input:?}: unknown time zone {zone:?} ({origin}){}; use an \
         IANA name such as \"Europe/Paris\" or \"UTC\", or a fixed offset such as \"+02:00\"",
        if *.no_tzdb { NO_TZDB } else { "" }
    )]
    UnknownZone {
        /// The (trimmed) time text given.
        input: String,
        /// The zone name as given.
        zone: String,
        /// Where the zone name came from, e.g. `"from --tz"`.
        origin: &'static str,
        /// Whether the system has no time zone database at all.
        no_tzdb: bool,
    },

    /// The `TZ` environment variable is set to something unusable.
    #[error(
        "cannot interpret target time {input:?}: the TZ environment variable {value:?} is not \
         understood ({detail}); pass --tz ZONE (e.g. --tz Europe/Paris) or add an explicit \
         offset to the time"
    )]
    TzNotUnderstood {
        /// The (trimmed) time text given.
        input: String,
        /// The value of `TZ`.
        value: String,
        /// Why it was not understood.
        detail: String,
    },

    /// The local time does not exist in the zone (DST spring-forward gap).
    #[error(
        "target time {input:?} does not exist in {zone}: the clocks jump forward from {} to {} \
         over it; pick a local time outside the gap, or add an explicit offset to name an exact \
         instant",
        fmt_offset(*.before),
        fmt_offset(*.after)
    )]
    Gap {
        /// The (trimmed) text given.
        input: String,
        /// The zone and where it came from, e.g. `Europe/Paris (from --tz)`.
        zone: String,
        /// The offset in force before the gap.
        before: Offset,
        /// The offset in force after the gap.
        after: Offset,
    },

    /// The local time occurs twice in the zone (DST fall-back fold).
    #[error(
        "target time {input:?} is ambiguous in {zone}: the clocks fall back over it, so it \
         occurs twice, first as {} (= {}) and again as {} (= {}); add the offset you mean, \
         e.g. \"{}\"",
        fmt_at(*.earlier, *.earlier_offset),
        format_utc(*.earlier),
        fmt_at(*.later, *.later_offset),
        format_utc(*.later),
        fmt_at(*.earlier, *.earlier_offset)
    )]
    Ambiguous {
        /// The (trimmed) text given.
        input: String,
        /// The zone and where it came from, e.g. `Europe/Paris (from TZ)`.
        zone: String,
        /// The first occurrence.
        earlier: Timestamp,
        /// The offset in force at the first occurrence.
        earlier_offset: Offset,
        /// The second occurrence.
        later: Timestamp,
        /// The offset in force at the second occurrence.
        later_offset: Offset,
    },

    /// The time is valid but outside the range of representable instants.
    #[error(
        "target time {input:?} is outside the range of representable instants (the latest is \
         {}); give an earlier time",
        format_utc(Timestamp::MAX)
    )]
    OutOfRange {
        /// The (trimmed) text given.
        input: String,
    },
}

/// Where the zone for an offset-less time came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZoneSource {
    /// The text had an offset or `Z`.
    Explicit,
    /// The `--tz` value (trimmed).
    TzFlag(String),
    /// The `TZ` environment variable's value (trimmed).
    TzEnv(String),
    /// Nothing said otherwise: UTC.
    DefaultUtc,
}

/// A parsed target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeTarget {
    /// The exact instant.
    pub instant: Timestamp,
    /// Where the zone used to interpret the text came from.
    pub zone: ZoneSource,
    /// The text given, with surrounding whitespace removed.
    pub input: String,
}

/// Parses TEXT. `tz_flag` is the --tz value; `tz_env` is the TZ environment variable's value (pass `std::env::var("TZ").ok()` from the caller; tests pass explicit values).
///
/// See the module documentation for the accepted forms and the rules.
///
/// # Errors
///
/// A [`TimeTargetError`] when the text is not an accepted form, has more than
/// 6 fractional digits, names an unknown zone, falls in a DST gap or fold of
/// the zone used, or is outside the range of instants.
pub fn parse_time(
    text: &str,
    tz_flag: Option<&str>,
    tz_env: Option<&str>,
) -> Result<TimeTarget, TimeTargetError> {
    let input = text.trim();
    let parsed = Parsed::parse(input).map_err(|fail| fail.into_error(input))?;
    let dt = parsed.date.to_datetime(parsed.time);

    let Some(offset) = parsed.offset else {
        if parsed.annotation.is_some() {
            return Err(unparseable(
                input,
                "a bracketed time zone is only accepted after an explicit offset; drop it \
                 and pass --tz instead",
            ));
        }
        let zone = resolve_zone(input, tz_flag, tz_env)?;
        let instant = resolve_local(input, dt, &zone)?;
        return Ok(TimeTarget {
            instant,
            zone: zone.source,
            input: input.to_owned(),
        });
    };

    if let Some(annotation) = parsed.annotation {
        check_annotation(input, annotation)?;
    }
    let instant = offset.to_timestamp(dt).map_err(|_| out_of_range(input))?;
    Ok(TimeTarget {
        instant,
        zone: ZoneSource::Explicit,
        input: input.to_owned(),
    })
}

/// Formats an instant as UTC with explicit offset and microseconds only when non-zero:
/// "2025-11-22 14:30:05+00:00" or "2025-11-22 14:30:05.123456+00:00".
///
/// Sub-microsecond nanoseconds (which [`parse_time`] never produces) are truncated.
#[must_use]
pub(crate) fn format_utc(ts: Timestamp) -> String {
    fmt_at(ts, Offset::UTC)
}

/// [`format_utc`] of Unix microseconds (PostgreSQL's precision); out-of-range values show
/// as `@<n>us`.
#[must_use]
pub(crate) fn format_micros(us: i64) -> String {
    Timestamp::from_microsecond(us).map_or_else(|_| format!("@{us}us"), format_utc)
}

#[cfg(test)]
/// Same instant shown in a zone (for messages): "2025-11-22 15:30:05+01:00 (Europe/Paris)".
///
/// Zones without an IANA name show their fixed offset or POSIX TZ string in
/// the parentheses, or `local` if they have no printable name at all.
#[must_use]
pub(crate) fn format_in(ts: Timestamp, tz: &TimeZone) -> String {
    let offset = tz.to_offset(ts);
    format!(
        "{} ({})",
        fmt_at(ts, offset),
        zone_name(tz).unwrap_or("local".into())
    )
}

/// `ts` as a local time at `offset`, followed by the offset.
fn fmt_at(ts: Timestamp, offset: Offset) -> String {
    fmt_civil(offset.to_datetime(ts), offset)
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff]+HH:MM[:SS]`.
fn fmt_civil(dt: DateTime, offset: Offset) -> String {
    let year = dt.year();
    let sign = if year < 0 { "-" } else { "" };
    let mut out = format!(
        "{sign}{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        year.unsigned_abs(),
        dt.month(),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
    );
    let micros = dt.subsec_nanosecond() / 1_000;
    if micros != 0 {
        // Writing to a String cannot fail.
        let _ = write!(out, ".{micros:06}");
    }
    out.push_str(&fmt_offset(offset));
    out
}

/// `+HH:MM`, or `+HH:MM:SS` when the offset has seconds.
fn fmt_offset(offset: Offset) -> String {
    let total = offset.seconds();
    let sign = if total < 0 { '-' } else { '+' };
    let abs = total.unsigned_abs();
    let (hours, minutes, seconds) = (abs / 3600, abs / 60 % 60, abs % 60);
    if seconds == 0 {
        format!("{sign}{hours:02}:{minutes:02}")
    } else {
        format!("{sign}{hours:02}:{minutes:02}:{seconds:02}")
    }
}

/// The printable name of a zone: IANA name, fixed offset or POSIX TZ string.
fn zone_name(tz: &TimeZone) -> Option<String> {
    DateTimePrinter::new().time_zone_to_string(tz).ok()
}

fn unparseable(input: &str, reason: impl Into<String>) -> TimeTargetError {
    TimeTargetError::Unparseable {
        input: input.to_owned(),
        reason: reason.into(),
    }
}

fn out_of_range(input: &str) -> TimeTargetError {
    TimeTargetError::OutOfRange {
        input: input.to_owned(),
    }
}

/// A zone to interpret an offset-less time in.
struct Zone {
    tz: TimeZone,
    source: ZoneSource,
    /// For messages: `Europe/Paris (from --tz)`.
    label: String,
}

/// Applies the precedence --tz, then TZ, then UTC.
fn resolve_zone(
    input: &str,
    tz_flag: Option<&str>,
    tz_env: Option<&str>,
) -> Result<Zone, TimeTargetError> {
    if let Some(flag) = tz_flag {
        let name = flag.trim();
        let tz = zone_from_name(name).ok_or_else(|| TimeTargetError::UnknownZone {
            input: input.to_owned(),
            zone: name.to_owned(),
            origin: "from --tz",
            no_tzdb: no_tzdb(),
        })?;
        return Ok(Zone {
            label: format!("{} (from --tz)", zone_name(&tz).unwrap_or(name.to_owned())),
            tz,
            source: ZoneSource::TzFlag(name.to_owned()),
        });
    }
    if let Some(value) = tz_env.map(str::trim).filter(|value| !value.is_empty()) {
        let tz = zone_from_env(value).map_err(|detail| TimeTargetError::TzNotUnderstood {
            input: input.to_owned(),
            value: value.to_owned(),
            detail,
        })?;
        return Ok(Zone {
            label: format!("{} (from TZ)", zone_name(&tz).unwrap_or(value.to_owned())),
            tz,
            source: ZoneSource::TzEnv(value.to_owned()),
        });
    }
    Ok(Zone {
        tz: TimeZone::UTC,
        source: ZoneSource::DefaultUtc,
        label: "UTC (the default)".to_owned(),
    })
}

/// A `--tz` value or bracketed annotation: a fixed offset or an IANA name.
fn zone_from_name(name: &str) -> Option<TimeZone> {
    if let Some(offset) = parse_fixed_offset(name) {
        return Some(TimeZone::fixed(offset));
    }
    if name.is_empty() {
        return None;
    }
    // `Etc/Unknown` is jiff's placeholder, not a real zone.
    TimeZone::get(name).ok().filter(|tz| !tz.is_unknown())
}

/// A whole string that is exactly one offset (`Z`, `+02`, `+02:00`, `+0200`).
fn parse_fixed_offset(text: &str) -> Option<Offset> {
    let mut cursor = Cursor::new(text);
    let offset = cursor.offset().ok()??;
    cursor.at_end().then_some(offset)
}

/// A `TZ` value: IANA name (optionally `:`-prefixed), TZif file path, or POSIX TZ string.
fn zone_from_env(value: &str) -> Result<TimeZone, String> {
    let colon = value.starts_with(':');
    let name = value.strip_prefix(':').unwrap_or(value);
    if name.starts_with('/') {
        return zone_from_file(name);
    }
    if !name.is_empty()
        && let Some(tz) = TimeZone::get(name).ok().filter(|tz| !tz.is_unknown())
    {
        return Ok(tz);
    }
    if !colon && let Ok(tz) = TimeZone::posix(value) {
        return Ok(tz);
    }
    let mut detail = "neither a known IANA time zone name nor a POSIX TZ string".to_owned();
    if no_tzdb() {
        detail.push_str(NO_TZDB);
    }
    Err(detail)
}

/// True when jiff found no time zone database at all (no tzdata installed).
fn no_tzdb() -> bool {
    jiff::tz::db().is_definitively_empty()
}

/// `TZ=/path` or `TZ=:/path`: a TZif file, named after its zoneinfo entry if it has one.
fn zone_from_file(path: &str) -> Result<TimeZone, String> {
    let real = std::fs::canonicalize(path)
        .ok()
        .and_then(|real| real.to_str().map(str::to_owned))
        .unwrap_or(path.to_owned());
    if let Some((_, entry)) = real.rsplit_once("/zoneinfo/")
        && let Some(tz) = TimeZone::get(entry).ok().filter(|tz| !tz.is_unknown())
    {
        return Ok(tz);
    }
    let unreadable = |err: std::io::Error| format!("cannot read time zone file {path:?}: {err}");
    let file = std::fs::File::open(path).map_err(unreadable)?;
    if !file.metadata().map_err(unreadable)?.is_file() {
        return Err(format!("{path:?} is not a regular file"));
    }
    let mut data = Vec::new();
    file.take(MAX_TZIF_BYTES)
        .read_to_end(&mut data)
        .map_err(unreadable)?;
    // The name ends up in messages, which must stay on one line.
    let name = path.escape_debug().to_string();
    TimeZone::tzif(&name, &data).map_err(|_| format!("{path:?} is not a TZif time zone file"))
}

/// An offset-less civil time in `zone`, refusing DST gaps and folds.
fn resolve_local(input: &str, dt: DateTime, zone: &Zone) -> Result<Timestamp, TimeTargetError> {
    match zone.tz.to_ambiguous_timestamp(dt).offset() {
        AmbiguousOffset::Unambiguous { offset } => {
            offset.to_timestamp(dt).map_err(|_| out_of_range(input))
        }
        AmbiguousOffset::Gap { before, after } => Err(TimeTargetError::Gap {
            input: input.to_owned(),
            zone: zone.label.clone(),
            before,
            after,
        }),
        AmbiguousOffset::Fold { before, after } => {
            let earlier = before.to_timestamp(dt).map_err(|_| out_of_range(input))?;
            let later = after.to_timestamp(dt).map_err(|_| out_of_range(input))?;
            Err(TimeTargetError::Ambiguous {
                input: input.to_owned(),
                zone: zone.label.clone(),
                earlier,
                earlier_offset: before,
                later,
                later_offset: after,
            })
        }
    }
}

/// A bracketed annotation after an explicit offset: must name a real zone.
fn check_annotation(input: &str, annotation: &str) -> Result<(), TimeTargetError> {
    let name = annotation.strip_prefix('!').unwrap_or(annotation);
    if name.contains('=') {
        return Err(unparseable(
            input,
            format!(
                "unsupported annotation [{annotation}]; only a time zone such as \
                 [Europe/Paris] is accepted"
            ),
        ));
    }
    match zone_from_name(name) {
        Some(_) => Ok(()),
        None => Err(TimeTargetError::UnknownZone {
            input: input.to_owned(),
            zone: name.to_owned(),
            origin: "in the bracketed annotation",
            no_tzdb: no_tzdb(),
        }),
    }
}

/// Why the syntax parser stopped.
enum Fail {
    Reason(String),
    TooPrecise(usize),
}

impl Fail {
    fn into_error(self, input: &str) -> TimeTargetError {
        match self {
            Fail::Reason(reason) => unparseable(input, reason),
            Fail::TooPrecise(digits) => TimeTargetError::TooPrecise {
                input: input.to_owned(),
                digits,
            },
        }
    }
}

fn fail<T>(reason: impl Into<String>) -> Result<T, Fail> {
    Err(Fail::Reason(reason.into()))
}

/// The pieces of the text.
struct Parsed<'a> {
    date: Date,
    time: Time,
    offset: Option<Offset>,
    /// The contents of a trailing `[...]`, without the brackets.
    annotation: Option<&'a str>,
}

impl<'a> Parsed<'a> {
    fn parse(text: &'a str) -> Result<Self, Fail> {
        if text.is_empty() {
            return fail("it is empty");
        }
        let mut cursor = Cursor::new(text);
        let date = cursor.date()?;

        let mut time = Time::midnight();
        match cursor.peek() {
            Some(b'T' | b't') => {
                cursor.pos += 1;
                time = cursor.time("a time (HH:MM) after 'T'")?;
            }
            Some(b' ') => {
                cursor.skip_spaces();
                if cursor.peek().is_some_and(|b| b.is_ascii_digit()) {
                    time = cursor.time("a time (HH:MM)")?;
                }
            }
            _ => {}
        }

        cursor.skip_spaces();
        let offset = cursor.offset()?;

        let annotation = match cursor.rest() {
            "" => None,
            rest if offset.is_some() && rest.starts_with('[') => {
                let inner = rest
                    .strip_prefix('[')
                    .and_then(|rest| rest.strip_suffix(']'))
                    .filter(|inner| !inner.contains(['[', ']']) && !inner.is_empty());
                match inner {
                    Some(inner) => Some(inner),
                    None => {
                        return fail(format!(
                            "{rest:?} is not a single bracketed time zone like [Europe/Paris]"
                        ));
                    }
                }
            }
            rest if rest.starts_with('[') => {
                return fail(
                    "a bracketed time zone is only accepted after an explicit offset; drop it \
                     and pass --tz instead",
                );
            }
            rest => {
                return fail(format!(
                    "unexpected {rest:?} at the end; to give a zone, append an offset such as \
                     \"+02:00\" or \"Z\", or pass --tz"
                ));
            }
        };

        Ok(Parsed {
            date,
            time,
            offset,
            annotation,
        })
    }
}

/// A position in ASCII-structured text. `pos` only ever advances over ASCII
/// bytes, so it is always a char boundary.
struct Cursor<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(text: &'a str) -> Self {
        Cursor { text, pos: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn rest(&self) -> &'a str {
        self.text.get(self.pos..).unwrap_or("")
    }

    fn at_end(&self) -> bool {
        self.pos >= self.text.len()
    }

    fn eat(&mut self, byte: u8) -> bool {
        let found = self.peek() == Some(byte);
        if found {
            self.pos += 1;
        }
        found
    }

    fn skip_spaces(&mut self) {
        while self.peek() == Some(b' ') {
            self.pos += 1;
        }
    }

    /// Exactly `N` ASCII digits, if they are next.
    fn digits<const N: usize>(&mut self) -> Option<[i8; N]> {
        let bytes = self.text.as_bytes().get(self.pos..self.pos + N)?;
        let mut out = [0i8; N];
        for (slot, byte) in out.iter_mut().zip(bytes) {
            if !byte.is_ascii_digit() {
                return None;
            }
            *slot = i8::try_from(byte - b'0').ok()?;
        }
        self.pos += N;
        Some(out)
    }

    /// Two digits as a number (0-99), if they are next.
    fn two_digits(&mut self) -> Option<i8> {
        self.digits::<2>().map(|[tens, ones]| tens * 10 + ones)
    }

    /// Two digits as a number (0-99), or an error naming `what`.
    fn two(&mut self, what: &str) -> Result<i8, Fail> {
        match self.two_digits() {
            Some(value) => Ok(value),
            None => fail(format!("expected {what}")),
        }
    }

    fn expect(&mut self, byte: u8, what: &str) -> Result<(), Fail> {
        if self.eat(byte) {
            Ok(())
        } else {
            fail(format!("expected {what}"))
        }
    }

    /// `YYYY-MM-DD`, validated.
    fn date(&mut self) -> Result<Date, Fail> {
        let Some(year) = self.digits::<4>() else {
            return fail("expected a 4-digit year (YYYY) at the start");
        };
        let year = year
            .iter()
            .fold(0i16, |acc, &digit| acc * 10 + i16::from(digit));
        self.expect(b'-', "'-' after the year")?;
        let month = self.two("a 2-digit month (MM) after the year")?;
        self.expect(b'-', "'-' after the month")?;
        let day = self.two("a 2-digit day (DD) after the month")?;
        if !(1..=12).contains(&month) {
            return fail(format!("month {month:02} is out of range (01-12)"));
        }
        if let Ok(date) = Date::new(year, month, day) {
            return Ok(date);
        }
        match Date::new(year, month, 1).map(Date::days_in_month) {
            Ok(days) => fail(format!(
                "day {day:02} is out of range for {year:04}-{month:02} (01-{days})"
            )),
            Err(_) => fail(format!("{year:04}-{month:02}-{day:02} is not a valid date")),
        }
    }

    /// `HH:MM[:SS[.f{1,6}]]`, validated.
    fn time(&mut self, what: &str) -> Result<Time, Fail> {
        let hour = self.two(what)?;
        self.expect(b':', "':' after the hour")?;
        let minute = self.two("a 2-digit minute (MM) after the hour")?;
        let mut second = 0;
        let mut nanos = 0i32;
        if self.eat(b':') {
            second = self.two("a 2-digit second (SS) after the minute")?;
            if self.eat(b'.') {
                nanos = self.fraction()?;
            }
        }
        if hour > 23 {
            return fail(format!("hour {hour:02} is out of range (00-23)"));
        }
        if minute > 59 {
            return fail(format!("minute {minute:02} is out of range (00-59)"));
        }
        if second > 59 {
            return fail(format!(
                "second {second:02} is out of range (00-59; leap seconds are not supported)"
            ));
        }
        Time::new(hour, minute, second, nanos).or_else(|_| {
            fail(format!(
                "{hour:02}:{minute:02}:{second:02} is not a valid time"
            ))
        })
    }

    /// The digits after `.`: 1 to 6 of them, as nanoseconds.
    fn fraction(&mut self) -> Result<i32, Fail> {
        let digits = self.rest().bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return fail("expected fractional-second digits after '.'");
        }
        if digits > MAX_FRACTION_DIGITS {
            return Err(Fail::TooPrecise(digits));
        }
        let mut nanos = 0i32;
        for index in 0..9 {
            let digit = if index < digits {
                self.text
                    .as_bytes()
                    .get(self.pos + index)
                    .map_or(0, |byte| byte - b'0')
            } else {
                0
            };
            nanos = nanos * 10 + i32::from(digit);
        }
        self.pos += digits;
        Ok(nanos)
    }

    /// `Z`, `z`, `±HH`, `±HH:MM[:SS]` or `±HHMM[SS]`, if one is next.
    fn offset(&mut self) -> Result<Option<Offset>, Fail> {
        let negative = match self.peek() {
            Some(b'Z' | b'z') => {
                self.pos += 1;
                return Ok(Some(Offset::UTC));
            }
            Some(b'+') => false,
            Some(b'-') => true,
            _ => return Ok(None),
        };
        self.pos += 1;
        let hours = self.two("a 2-digit offset hour after the sign (e.g. +02 or +02:00)")?;
        let (mut minutes, mut seconds) = (0, 0);
        if self.eat(b':') {
            minutes = self.two("2-digit offset minutes after ':' (e.g. +05:30)")?;
            if self.eat(b':') {
                seconds = self.two("2-digit offset seconds after ':' (e.g. +00:09:21)")?;
            }
        } else if let Some(value) = self.two_digits() {
            minutes = value;
            seconds = self.two_digits().unwrap_or(0);
        }
        if hours > 23 {
            return fail(format!("offset hour {hours:02} is out of range (00-23)"));
        }
        if minutes > 59 {
            return fail(format!(
                "offset minutes {minutes:02} are out of range (00-59)"
            ));
        }
        if seconds > 59 {
            return fail(format!(
                "offset seconds {seconds:02} are out of range (00-59)"
            ));
        }
        let seconds = i32::from(hours) * 3600 + i32::from(minutes) * 60 + i32::from(seconds);
        let seconds = if negative { -seconds } else { seconds };
        Offset::from_seconds(seconds)
            .map(Some)
            .or_else(|_| fail(format!("offset of {seconds} seconds is out of range")))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// An instant from RFC 3339 text (jiff's own parser, as an independent oracle).
    fn ts(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn utc(text: &str) -> Timestamp {
        parse_time(text, None, None).unwrap().instant
    }

    fn err(text: &str, tz_flag: Option<&str>, tz_env: Option<&str>) -> TimeTargetError {
        match parse_time(text, tz_flag, tz_env) {
            Ok(target) => panic!("{text:?} should be refused, got {target:?}"),
            Err(error) => error,
        }
    }

    fn assert_one_line(error: &TimeTargetError) {
        let message = error.to_string();
        assert!(!message.contains('\n'), "multi-line message: {message}");
        assert!(!message.is_empty());
    }

    #[test]
    fn accepts_every_offsetless_form_as_utc_by_default() {
        let cases = [
            ("2025-11-22", "2025-11-22T00:00:00Z"),
            ("2025-11-22 14:30", "2025-11-22T14:30:00Z"),
            ("2025-11-22 14:30:05", "2025-11-22T14:30:05Z"),
            ("2025-11-22 14:30:05.1", "2025-11-22T14:30:05.1Z"),
            ("2025-11-22 14:30:05.12", "2025-11-22T14:30:05.12Z"),
            ("2025-11-22 14:30:05.123456", "2025-11-22T14:30:05.123456Z"),
            ("2025-11-22 14:30:05.000001", "2025-11-22T14:30:05.000001Z"),
            ("2025-11-22T14:30", "2025-11-22T14:30:00Z"),
            ("2025-11-22t14:30:05", "2025-11-22T14:30:05Z"),
            ("2025-11-22T14:30:05.123456", "2025-11-22T14:30:05.123456Z"),
            ("  2025-11-22 14:30:05 \n", "2025-11-22T14:30:05Z"),
            ("2025-11-22   14:30", "2025-11-22T14:30:00Z"),
            ("2024-02-29 23:59:59.999999", "2024-02-29T23:59:59.999999Z"),
            ("2025-12-31 00:00", "2025-12-31T00:00:00Z"),
        ];
        for (text, expected) in cases {
            let target = parse_time(text, None, None).unwrap();
            assert_eq!(target.instant, ts(expected), "{text:?}");
            assert_eq!(target.zone, ZoneSource::DefaultUtc, "{text:?}");
            assert_eq!(target.input, text.trim());
        }
    }

    #[test]
    fn accepts_every_offset_form() {
        let cases = [
            ("2025-11-22 14:30:05Z", "2025-11-22T14:30:05Z"),
            ("2025-11-22 14:30:05z", "2025-11-22T14:30:05Z"),
            ("2025-11-22t14:30:05z", "2025-11-22T14:30:05Z"),
            ("2025-11-22 14:30:05+02", "2025-11-22T12:30:05Z"),
            ("2025-11-22 14:30:05+02:00", "2025-11-22T12:30:05Z"),
            ("2025-11-22 14:30:05+0200", "2025-11-22T12:30:05Z"),
            ("2025-11-22 14:30:05-05:30", "2025-11-22T20:00:05Z"),
            ("2025-11-22 14:30:05-0530", "2025-11-22T20:00:05Z"),
            ("2025-11-22 14:30-05:30", "2025-11-22T20:00:00Z"),
            (
                "2025-11-22 14:30:05.123456+02",
                "2025-11-22T12:30:05.123456Z",
            ),
            (
                "2025-11-22T14:30:05.123456+02:00",
                "2025-11-22T12:30:05.123456Z",
            ),
            ("2025-11-22T14:30:05+00:00", "2025-11-22T14:30:05Z"),
            ("2025-11-22T14:30:05-00:00", "2025-11-22T14:30:05Z"),
            ("2025-11-22 14:30:05 +02:00", "2025-11-22T12:30:05Z"),
            ("2025-11-22 14:30:05 Z", "2025-11-22T14:30:05Z"),
            ("2025-11-22Z", "2025-11-22T00:00:00Z"),
            ("2025-11-22+02:00", "2025-11-21T22:00:00Z"),
            ("2025-11-22-05", "2025-11-22T05:00:00Z"),
            ("2025-11-22 00:30+14:00", "2025-11-21T10:30:00Z"),
            ("1900-01-01 00:00:00+00:09:21", "1899-12-31T23:50:39Z"),
            ("1900-01-01 00:00:00+000921", "1899-12-31T23:50:39Z"),
            (
                "2025-11-22T14:30:00+01:00[Europe/Paris]",
                "2025-11-22T13:30:00Z",
            ),
            (
                "2025-11-22T14:30:00+01:00[!Europe/Paris]",
                "2025-11-22T13:30:00Z",
            ),
            // The offset wins over the bracketed zone.
            (
                "2025-11-22T14:30:00+05:00[Europe/Paris]",
                "2025-11-22T09:30:00Z",
            ),
            ("2025-11-22T14:30:00Z[UTC]", "2025-11-22T14:30:00Z"),
        ];
        for (text, expected) in cases {
            let target = parse_time(text, None, None).unwrap();
            assert_eq!(target.instant, ts(expected), "{text:?}");
            assert_eq!(target.zone, ZoneSource::Explicit, "{text:?}");
        }
    }

    #[test]
    fn explicit_offset_ignores_tz_flag_and_env() {
        for (flag, env) in [
            (Some("Asia/Tokyo"), Some("America/New_York")),
            (None, Some("Asia/Tokyo")),
            (Some("Mars/Olympus_Mons"), Some("not a zone")),
        ] {
            let target = parse_time("2025-11-22 14:30:05+02", flag, env).unwrap();
            assert_eq!(target.instant, ts("2025-11-22T12:30:05Z"));
            assert_eq!(target.zone, ZoneSource::Explicit);
        }
    }

    #[test]
    fn tz_flag_takes_iana_names_and_fixed_offsets() {
        let cases = [
            ("Europe/Paris", "2025-11-22T13:30:00Z"),
            ("UTC", "2025-11-22T14:30:00Z"),
            ("America/New_York", "2025-11-22T19:30:00Z"),
            ("+02:00", "2025-11-22T12:30:00Z"),
            ("+0200", "2025-11-22T12:30:00Z"),
            ("-05:30", "2025-11-22T20:00:00Z"),
            ("Z", "2025-11-22T14:30:00Z"),
            (" Europe/Paris ", "2025-11-22T13:30:00Z"),
        ];
        for (flag, expected) in cases {
            let target = parse_time("2025-11-22 14:30", Some(flag), None).unwrap();
            assert_eq!(target.instant, ts(expected), "--tz {flag:?}");
            assert_eq!(target.zone, ZoneSource::TzFlag(flag.trim().to_owned()));
        }
        // Summer time applies in summer.
        let summer = parse_time("2025-07-01 12:00", Some("Europe/Paris"), None).unwrap();
        assert_eq!(summer.instant, ts("2025-07-01T10:00:00Z"));
    }

    #[test]
    fn tz_env_forms() {
        let cases = [
            ("Europe/Paris", "2025-11-22T13:30:00Z"),
            (":Europe/Paris", "2025-11-22T13:30:00Z"),
            ("CET-1CEST,M3.5.0,M10.5.0/3", "2025-11-22T13:30:00Z"),
            ("UTC0", "2025-11-22T14:30:00Z"),
            ("UTC", "2025-11-22T14:30:00Z"),
            ("EST5EDT,M3.2.0,M11.1.0", "2025-11-22T19:30:00Z"),
            ("<+0530>-5:30", "2025-11-22T09:00:00Z"),
        ];
        for (env, expected) in cases {
            let target = parse_time("2025-11-22 14:30", None, Some(env)).unwrap();
            assert_eq!(target.instant, ts(expected), "TZ={env:?}");
            assert_eq!(target.zone, ZoneSource::TzEnv(env.to_owned()));
        }
        // POSIX summer time.
        let summer =
            parse_time("2025-07-01 12:00", None, Some("CET-1CEST,M3.5.0,M10.5.0/3")).unwrap();
        assert_eq!(summer.instant, ts("2025-07-01T10:00:00Z"));
    }

    #[test]
    fn tz_env_tzif_path() {
        let path = "/usr/share/zoneinfo/Europe/Paris";
        if !std::path::Path::new(path).is_file() {
            return; // No system tzdata here.
        }
        for env in [path.to_owned(), format!(":{path}")] {
            let target = parse_time("2025-11-22 14:30", None, Some(&env)).unwrap();
            assert_eq!(target.instant, ts("2025-11-22T13:30:00Z"), "TZ={env:?}");
        }
        let missing = err(
            "2025-11-22 14:30",
            None,
            Some(":/nonexistent/zoneinfo-file"),
        );
        assert!(matches!(missing, TimeTargetError::TzNotUnderstood { .. }));
        assert!(missing.to_string().contains("cannot read"), "{missing}");
        let directory = err("2025-11-22 14:30", None, Some("/tmp"));
        assert!(matches!(directory, TimeTargetError::TzNotUnderstood { .. }));
        assert_one_line(&directory);
    }

    #[test]
    fn zone_precedence_flag_then_env_then_utc() {
        let text = "2025-11-22 14:30";
        let flag = parse_time(text, Some("Asia/Tokyo"), Some("America/New_York")).unwrap();
        assert_eq!(flag.instant, ts("2025-11-22T05:30:00Z"));
        assert_eq!(flag.zone, ZoneSource::TzFlag("Asia/Tokyo".to_owned()));

        let env = parse_time(text, None, Some("America/New_York")).unwrap();
        assert_eq!(env.instant, ts("2025-11-22T19:30:00Z"));
        assert_eq!(env.zone, ZoneSource::TzEnv("America/New_York".to_owned()));

        for blank in [None, Some(""), Some("   ")] {
            let default = parse_time(text, None, blank).unwrap();
            assert_eq!(default.instant, ts("2025-11-22T14:30:00Z"));
            assert_eq!(default.zone, ZoneSource::DefaultUtc);
        }

        // A bad TZ does not matter when --tz is given.
        let flag = parse_time(text, Some("UTC"), Some("garbage zone")).unwrap();
        assert_eq!(flag.zone, ZoneSource::TzFlag("UTC".to_owned()));
    }

    #[test]
    fn unknown_tz_flag_is_named() {
        for zone in [
            "Mars/Olympus_Mons",
            "Europe/Pariss",
            "",
            "Etc/Unknown",
            "+25:00",
        ] {
            let error = err("2025-11-22 14:30", Some(zone), Some("UTC"));
            assert!(
                matches!(&error, TimeTargetError::UnknownZone { zone: named, .. } if named == zone),
                "{error:?}"
            );
            let message = error.to_string();
            assert!(message.contains(&format!("{zone:?}")), "{message}");
            assert!(message.contains("--tz"), "{message}");
            assert_one_line(&error);
        }
    }

    #[test]
    fn missing_tzdb_is_mentioned() {
        let error = TimeTargetError::UnknownZone {
            input: "2025-11-22 14:30".to_owned(),
            zone: "Europe/Paris".to_owned(),
            origin: "from --tz",
            no_tzdb: true,
        };
        assert!(error.to_string().contains("tzdata"), "{error}");
        assert_one_line(&error);
    }

    #[test]
    fn unusable_tz_env_says_to_use_tz_flag() {
        for env in [
            "Mars/Olympus_Mons",
            "garbage zone",
            ":CET-1CEST",
            ":",
            "12345",
        ] {
            let error = err("2025-11-22 14:30", None, Some(env));
            assert!(
                matches!(&error, TimeTargetError::TzNotUnderstood { value, .. } if value == env),
                "TZ={env:?}: {error:?}"
            );
            let message = error.to_string();
            assert!(message.contains("TZ"), "{message}");
            assert!(message.contains("--tz"), "{message}");
            assert!(message.contains(&format!("{env:?}")), "{message}");
            assert_one_line(&error);
        }
    }

    #[test]
    fn dst_gap_is_refused() {
        for (flag, env) in [
            (Some("Europe/Paris"), None),
            (None, Some("Europe/Paris")),
            (None, Some("CET-1CEST,M3.5.0,M10.5.0/3")),
        ] {
            let error = err("2025-03-30 02:30", flag, env);
            let TimeTargetError::Gap { before, after, .. } = &error else {
                panic!("expected a gap, got {error:?}");
            };
            assert_eq!(before.seconds(), 3600);
            assert_eq!(after.seconds(), 7200);
            let message = error.to_string();
            assert!(message.contains("\"2025-03-30 02:30\""), "{message}");
            assert!(message.contains("does not exist"), "{message}");
            assert!(
                message.contains("+01:00") && message.contains("+02:00"),
                "{message}"
            );
            assert_one_line(&error);
        }
        // Just outside the gap is fine.
        let before = parse_time("2025-03-30 01:59:59.999999", Some("Europe/Paris"), None);
        assert_eq!(before.unwrap().instant, ts("2025-03-30T00:59:59.999999Z"));
        let after = parse_time("2025-03-30 03:00", Some("Europe/Paris"), None);
        assert_eq!(after.unwrap().instant, ts("2025-03-30T01:00:00Z"));
        // The same wall time with an explicit offset is an exact instant.
        let explicit = parse_time("2025-03-30 02:30+01:00", Some("Europe/Paris"), None);
        assert_eq!(explicit.unwrap().instant, ts("2025-03-30T01:30:00Z"));
    }

    #[test]
    fn dst_fold_is_refused_with_both_candidates() {
        for (flag, env) in [
            (Some("Europe/Paris"), None),
            (None, Some(":Europe/Paris")),
            (None, Some("CET-1CEST,M3.5.0,M10.5.0/3")),
        ] {
            let error = err("2025-10-26 02:30", flag, env);
            let TimeTargetError::Ambiguous {
                earlier,
                earlier_offset,
                later,
                later_offset,
                ..
            } = &error
            else {
                panic!("expected a fold, got {error:?}");
            };
            assert_eq!(*earlier, ts("2025-10-26T00:30:00Z"));
            assert_eq!(*later, ts("2025-10-26T01:30:00Z"));
            assert_eq!(earlier_offset.seconds(), 7200);
            assert_eq!(later_offset.seconds(), 3600);
            let message = error.to_string();
            assert!(message.contains("\"2025-10-26 02:30\""), "{message}");
            assert!(message.contains("2025-10-26 02:30:00+02:00"), "{message}");
            assert!(message.contains("2025-10-26 02:30:00+01:00"), "{message}");
            assert!(message.contains("2025-10-26 00:30:00+00:00"), "{message}");
            assert!(message.contains("2025-10-26 01:30:00+00:00"), "{message}");
            assert!(message.contains("offset"), "{message}");
            assert_one_line(&error);
        }
        // Either candidate works once the offset is given.
        let first = parse_time("2025-10-26 02:30+02:00", Some("Europe/Paris"), None).unwrap();
        assert_eq!(first.instant, ts("2025-10-26T00:30:00Z"));
        let second = parse_time("2025-10-26 02:30+01:00", Some("Europe/Paris"), None).unwrap();
        assert_eq!(second.instant, ts("2025-10-26T01:30:00Z"));
        // The suggestion in the message is itself accepted.
        let message = err("2025-10-26 02:30", Some("Europe/Paris"), None).to_string();
        let suggestion = message
            .rsplit("e.g. \"")
            .next()
            .unwrap()
            .trim_end_matches('"');
        let suggested = parse_time(suggestion, Some("Europe/Paris"), None).unwrap();
        assert_eq!(suggested.instant, ts("2025-10-26T00:30:00Z"));
    }

    #[test]
    fn more_than_six_fractional_digits_is_too_precise() {
        for (text, digits) in [
            ("2025-11-22 14:30:05.1234567", 7),
            ("2025-11-22 14:30:05.123456789", 9),
            ("2025-11-22T14:30:05.0000000Z", 7),
            ("2025-11-22 14:30:05.123456789012+02", 12),
        ] {
            let error = err(text, None, None);
            assert!(
                matches!(error, TimeTargetError::TooPrecise { digits: d, .. } if d == digits),
                "{text:?}: {error:?}"
            );
            let message = error.to_string();
            assert!(message.contains(&format!("{text:?}")), "{message}");
            assert!(message.contains("microsecond"), "{message}");
            assert_one_line(&error);
        }
    }

    #[test]
    fn garbage_is_unparseable() {
        let cases = [
            "",
            "   ",
            "now",
            "yesterday 14:00",
            "2025",
            "2025-11",
            "2025-11-22T",
            "2025-11-22 14",
            "2025-11-22 14:",
            "2025-11-22 14:3",
            "2025-11-22 14:30:",
            "2025-11-22 14:30:5",
            "2025-11-22 14:30:05.",
            "2025-11-22 14:30:05.12a",
            "2025-11-22 14:30:05+",
            "2025-11-22 14:30:05+2",
            "2025-11-22 14:30:05+02:",
            "2025-11-22 14:30:05+02:0",
            "2025-11-22 14:30:05+02:00:",
            "2025-11-22 14:30:05+02:00:6",
            "2025-11-22 14:30:05+02:00:60",
            "2025-11-22 14:30:05+02000",
            "2025-11-22 14:30:05+24:00",
            "2025-11-22 14:30:05+02:60",
            "2025-11-22 14:30:05 UTC",
            "2025-11-22 14:30:05 Europe/Paris",
            "2025-11-22 14:30:05+02:00 extra",
            "2025-11-22 14:30:05[Europe/Paris]",
            "2025-11-22 14:30:05+01:00[Europe/Paris",
            "2025-11-22 14:30:05+01:00[]",
            "2025-11-22 14:30:05+01:00[Europe/Paris][u-ca=iso8601]",
            "2025-11-22 14:30:05+01:00[u-ca=iso8601]",
            "2025-13-01",
            "2025-00-10",
            "2025-02-29",
            "2025-04-31",
            "2025-11-00",
            "2025-11-22 24:00",
            "2025-11-22 23:60",
            "2025-11-22 23:59:60",
            "2025/11/22",
            "22-11-2025",
            "2025-1-22",
            "20251122",
            "20251122T143005Z",
            "+2025-11-22",
            "12025-11-22",
            "２０２５-11-22",
            "2025-11-22\u{a0}14:30",
            "2025-11-22 14:30:05,123",
            "2025-11-22\n14:30",
        ];
        for text in cases {
            let error = err(text, None, None);
            assert!(
                matches!(error, TimeTargetError::Unparseable { .. }),
                "{text:?}: {error:?}"
            );
            let message = error.to_string();
            assert!(message.contains(&format!("{:?}", text.trim())), "{message}");
            assert!(message.contains("YYYY-MM-DD"), "{message}");
            assert_one_line(&error);
        }
        // Unknown bracketed zones are named.
        let error = err("2025-11-22T14:30:00+01:00[Mars/Base]", None, None);
        assert!(
            matches!(error, TimeTargetError::UnknownZone { .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("\"Mars/Base\""), "{error}");
    }

    #[test]
    fn helpful_reasons() {
        let reason = |text: &str| match err(text, None, None) {
            TimeTargetError::Unparseable { reason, .. } => reason,
            other => panic!("{other:?}"),
        };
        assert!(reason("2025-02-29").contains("01-28"));
        assert!(reason("2025-13-01").contains("month 13"));
        assert!(reason("2025-11-22 24:00").contains("hour 24"));
        assert!(reason("2025-11-22 14:30 UTC").contains("--tz"));
    }

    #[test]
    fn out_of_range_instants_are_refused() {
        let error = err("9999-12-31 23:59", None, None);
        assert!(
            matches!(error, TimeTargetError::OutOfRange { .. }),
            "{error:?}"
        );
        assert_one_line(&error);
        let error = err("9999-12-31 23:59-05:00", None, None);
        assert!(
            matches!(error, TimeTargetError::OutOfRange { .. }),
            "{error:?}"
        );
        assert_eq!(utc("0001-01-01"), ts("0001-01-01T00:00:00Z"));
    }

    #[test]
    fn format_utc_with_and_without_micros() {
        assert_eq!(
            format_utc(ts("2025-11-22T14:30:05Z")),
            "2025-11-22 14:30:05+00:00"
        );
        assert_eq!(
            format_utc(ts("2025-11-22T14:30:05.123456Z")),
            "2025-11-22 14:30:05.123456+00:00"
        );
        assert_eq!(
            format_utc(ts("2025-11-22T14:30:05.1Z")),
            "2025-11-22 14:30:05.100000+00:00"
        );
        assert_eq!(
            format_utc(ts("2025-11-22T14:30:05.000001Z")),
            "2025-11-22 14:30:05.000001+00:00"
        );
        assert_eq!(
            format_utc(ts("2025-11-22T16:30:05+02:00")),
            "2025-11-22 14:30:05+00:00"
        );
        // Sub-microsecond digits are truncated.
        assert_eq!(
            format_utc(ts("2025-11-22T14:30:05.123456789Z")),
            "2025-11-22 14:30:05.123456+00:00"
        );
        assert_eq!(
            format_utc(ts("2025-11-22T14:30:05.000000999Z")),
            "2025-11-22 14:30:05+00:00"
        );
        assert_eq!(
            format_utc(Timestamp::UNIX_EPOCH),
            "1970-01-01 00:00:00+00:00"
        );
        assert_eq!(
            format_utc(ts("1969-12-31T23:59:59.5Z")),
            "1969-12-31 23:59:59.500000+00:00"
        );
    }

    #[test]
    fn format_in_zones() {
        let instant = ts("2025-11-22T14:30:05Z");
        let paris = TimeZone::get("Europe/Paris").unwrap();
        assert_eq!(
            format_in(instant, &paris),
            "2025-11-22 15:30:05+01:00 (Europe/Paris)"
        );
        assert_eq!(
            format_in(ts("2025-07-01T10:00:00.25Z"), &paris),
            "2025-07-01 12:00:00.250000+02:00 (Europe/Paris)"
        );
        assert_eq!(
            format_in(instant, &TimeZone::UTC),
            "2025-11-22 14:30:05+00:00 (UTC)"
        );
        let kolkata = TimeZone::fixed(Offset::from_seconds(19_800).unwrap());
        assert_eq!(
            format_in(instant, &kolkata),
            "2025-11-22 20:00:05+05:30 (+05:30)"
        );
        let posix = TimeZone::posix("EST5EDT,M3.2.0,M11.1.0").unwrap();
        assert_eq!(
            format_in(instant, &posix),
            "2025-11-22 09:30:05-05:00 (EST5EDT,M3.2.0,M11.1.0)"
        );
        // Offsets with seconds (historical local mean time) keep them.
        let lmt = TimeZone::fixed(Offset::from_seconds(561).unwrap());
        assert!(format_in(instant, &lmt).starts_with("2025-11-22 14:39:26+00:09:21"));
    }

    #[test]
    fn format_utc_round_trips_through_parse_time() {
        let mut instants = vec![
            Timestamp::UNIX_EPOCH,
            ts("2025-11-22T14:30:05Z"),
            ts("2025-11-22T14:30:05.123456Z"),
            ts("2025-10-26T00:30:00Z"),
            ts("2025-10-26T01:30:00.000001Z"),
            ts("2000-02-29T23:59:59.999999Z"),
            ts("1969-07-20T20:17:40Z"),
            ts("0001-01-01T00:00:00Z"),
            ts("9999-12-30T00:00:00Z"),
        ];
        // Deterministic pseudo-random microsecond instants between 1900 and 2100.
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..500 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let span = 6_311_433_600_000_000u64; // 200 years of microseconds
            let micros = (state % span) as i64 - 2_208_988_800_000_000;
            instants.push(Timestamp::from_microsecond(micros).unwrap());
        }
        for instant in instants {
            let text = format_utc(instant);
            // --tz and TZ must not matter: the text carries its offset.
            let target = parse_time(&text, Some("Asia/Tokyo"), Some("America/New_York")).unwrap();
            assert_eq!(target.instant, instant, "{text}");
            assert_eq!(target.zone, ZoneSource::Explicit);
            let shown = format_in(instant, &TimeZone::get("Europe/Paris").unwrap());
            let local = shown.split(" (").next().unwrap();
            assert_eq!(utc(local), instant, "{shown}");
        }
    }

    #[test]
    fn never_panics_on_mangled_input() {
        let seeds = [
            "2025-11-22 14:30:05.123456+02:00",
            "2025-11-22T14:30:00+01:00[Europe/Paris]",
            "2025-10-26 02:30",
            "9999-12-31T23:59:59.999999-23:59",
        ];
        let alphabet: Vec<char> = "0123456789-+:.TtZz []!/=, \u{e9}\u{a0}\u{1F600}"
            .chars()
            .collect();
        let mut state: u64 = 42;
        let mut next = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as usize
        };
        for seed in seeds {
            let chars: Vec<char> = seed.chars().collect();
            for cut in 0..=chars.len() {
                let prefix: String = chars[..cut].iter().collect();
                let _ = parse_time(&prefix, Some("Europe/Paris"), None);
                let _ = parse_time(&prefix, None, Some(&prefix));
            }
            for _ in 0..2_000 {
                let mut mangled = chars.clone();
                for _ in 0..=next() % 3 {
                    let at = next() % (mangled.len() + 1);
                    let with = alphabet[next() % alphabet.len()];
                    match next() % 3 {
                        0 if at < mangled.len() => mangled[at] = with,
                        1 if at < mangled.len() => {
                            mangled.remove(at);
                        }
                        _ => mangled.insert(at, with),
                    }
                }
                let text: String = mangled.iter().collect();
                for result in [
                    parse_time(&text, Some("Europe/Paris"), None),
                    parse_time(&text, None, Some("CET-1CEST,M3.5.0,M10.5.0/3")),
                    parse_time("2025-11-22", Some(&text), None),
                    parse_time("2025-11-22", None, Some(&text)),
                ] {
                    if let Err(error) = result {
                        assert_one_line(&error);
                    }
                }
            }
        }
    }
}
