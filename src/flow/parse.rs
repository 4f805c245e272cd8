//! Slot values from what callers say, as speech recognition writes it.
//!
//! Callers say "a party of four", "for 2", "half past seven", "seven thirty in the evening",
//! "next Friday", "five five five, one two three four", "S A R A H", "yeah that's right";
//! Whisper writes numbers as words or digits, digit runs with dashes or commas, and times as
//! "7 o'clock" or "7.30 p.m.". Each parser here takes the utterance as heard and returns the
//! value in a canonical form, or `None` when the words do not hold one (the flow then asks
//! again). Dates resolve against the call's own date in the assistant's timezone.

use chrono::{Datelike, Duration, NaiveDate, NaiveTime, Weekday};
use serde_json::{json, Value};

/// The words of an utterance: lowercase, punctuation dropped except inside numbers
/// (`7:30`, `7.30`, `555-1234` keep their digits together), `'s` kept.
pub(crate) fn words(text: &str) -> Vec<String> {
    let lowered = text.to_lowercase().replace(['’', '‘'], "'");
    let mut out = Vec::new();
    for raw in lowered.split(|c: char| c.is_whitespace() || c == ',' || c == ';' || c == '!' || c == '?') {
        let trimmed = raw.trim_matches(|c: char| !(c.is_alphanumeric() || c == '\'' || c == ':' || c == '+' || c == '@'));
        let trimmed = trimmed.trim_end_matches(['.', ':']).trim_start_matches(['.', ':', '\'']);
        // "p.m." and "a.m." as one word.
        let word = match trimmed {
            "p.m" | "p.m." | "pm." => "pm".to_string(),
            "a.m" | "a.m." | "am." => "am".to_string(),
            other => other.to_string(),
        };
        if word.is_empty() {
            continue;
        }
        // "9pm", "7:30am": the number and the half of the day as two words.
        if let Some(stem) = word.strip_suffix("pm").or_else(|| word.strip_suffix("am")) {
            if !stem.is_empty() && stem.chars().all(|c| c.is_ascii_digit() || c == ':' || c == '.') {
                out.push(stem.trim_end_matches('.').to_string());
                out.push(word[stem.len()..].to_string());
                continue;
            }
        }
        // Hyphenated words split ("twenty-two", "five-five-five"), except digit groups.
        if word.contains('-') && !word.chars().all(|c| c.is_ascii_digit() || c == '-') {
            out.extend(word.split('-').filter(|w| !w.is_empty()).map(str::to_string));
        } else {
            out.push(word);
        }
    }
    out
}

const UNITS: [&str; 20] = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen",
    "sixteen", "seventeen", "eighteen", "nineteen",
];
const TENS: [&str; 8] = ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"];

fn unit(word: &str) -> Option<i64> {
    match word {
        "oh" | "o" => None,
        "a" | "an" => None,
        _ => UNITS.iter().position(|u| *u == word).map(|n| n as i64),
    }
}

fn tens(word: &str) -> Option<i64> {
    TENS.iter().position(|t| *t == word).map(|n| (n as i64 + 2) * 10)
}

/// A number written as digits: `4`, `12`, `1,200` (the comma already split off), `2.5`.
fn digits_number(word: &str) -> Option<f64> {
    let cleaned = word.trim_end_matches(|c: char| c.is_alphabetic());
    if cleaned.is_empty() || !cleaned.chars().next().is_some_and(|c| c.is_ascii_digit()) {
        return None;
    }
    // Ordinals ("4th") and plain numbers.
    let suffix = &word[cleaned.len()..];
    if !suffix.is_empty() && !matches!(suffix, "st" | "nd" | "rd" | "th" | "s") {
        return None;
    }
    cleaned.parse::<f64>().ok()
}

/// Numbers in a list of words, with where each starts and how many words it spans.
fn numbers_in(words: &[String]) -> Vec<(usize, usize, f64)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let word = words[i].as_str();
        if let Some(n) = digits_number(word) {
            out.push((i, 1, n));
            i += 1;
            continue;
        }
        let single = match word {
            "a" | "an" if matches!(words.get(i + 1).map(String::as_str), Some("dozen")) => Some((12.0, 2)),
            "dozen" => Some((12.0, 1)),
            "couple" => Some((2.0, 1)),
            "half" if !matches!(words.get(i + 1).map(String::as_str), Some("past" | "an" | "after")) => Some((0.5, 1)),
            "first" => Some((1.0, 1)),
            "second" => Some((2.0, 1)),
            "third" => Some((3.0, 1)),
            "fifth" => Some((5.0, 1)),
            "eighth" => Some((8.0, 1)),
            "ninth" => Some((9.0, 1)),
            "twelfth" => Some((12.0, 1)),
            _ => None,
        };
        if let Some((n, span)) = single {
            out.push((i, span, n));
            i += span;
            continue;
        }
        let ordinal_unit = word.strip_suffix("th").and_then(unit).filter(|n| *n >= 4);
        if let Some(t) = tens(word).or_else(|| word.strip_suffix("ieth").and_then(|w| tens(&format!("{w}y")))) {
            let mut value = t;
            let mut span = 1;
            if let Some(u) = words.get(i + 1).and_then(|w| unit(w).or_else(|| ordinal(w))).filter(|u| (1..10).contains(u)) {
                value += u;
                span = 2;
            }
            out.push((i, span, value as f64));
            i += span;
            continue;
        }
        if let Some(u) = unit(word).or(ordinal_unit) {
            let mut value = u;
            let mut span = 1;
            if words.get(i + 1).map(String::as_str) == Some("hundred") {
                value *= 100;
                span = 2;
                if words.get(i + 2).map(String::as_str) == Some("and") {
                    if let Some(rest) = words.get(i + 3).and_then(|w| unit(w).or_else(|| tens(w))) {
                        value += rest;
                        span = 4;
                    }
                }
            }
            out.push((i, span, value as f64));
            i += span;
            continue;
        }
        i += 1;
    }
    out
}

fn ordinal(word: &str) -> Option<i64> {
    match word {
        "first" => Some(1),
        "second" => Some(2),
        "third" => Some(3),
        "fifth" => Some(5),
        "eighth" => Some(8),
        "ninth" => Some(9),
        "twelfth" => Some(12),
        w => w.strip_suffix("th").and_then(unit),
    }
}

/// Words that say a count of people, which a bare number next to them is about.
const PEOPLE: &[&str] = &["people", "persons", "person", "guests", "guest", "of", "adults", "diners", "us", "seats", "for"];

/// The words just before and just after the `span` words from `at`.
fn around(words: &[String], at: usize, span: usize) -> (Option<&str>, Option<&str>) {
    (at.checked_sub(1).and_then(|b| words.get(b)).map(String::as_str), words.get(at + span).map(String::as_str))
}

/// A whole number: the one next to a counting word if there are several, else the first.
/// "Just me" is one; "me and my wife" is two.
pub fn integer(text: &str) -> Option<i64> {
    said_integer(text).or_else(|| {
        // "Two" written as its homophones before a counting word: the eval's "for two people"
        // came back "Far to people." Only where a count was asked ("speak to people" is none).
        const COUNTED: &[&str] = &["people", "persons", "guests", "adults", "diners"];
        words(text).windows(2).any(|pair| matches!(pair[0].as_str(), "to" | "too") && COUNTED.contains(&pair[1].as_str())).then_some(2)
    })
}

/// [`integer`] from the words as written (no homophones).
fn said_integer(text: &str) -> Option<i64> {
    let words = words(text);
    let found = numbers_in(&words);
    let whole: Vec<(usize, usize, f64)> = found.into_iter().filter(|(_, _, n)| n.fract() == 0.0 && *n >= 0.0).collect();
    if let Some((_, _, n)) = whole.iter().find(|(at, span, _)| {
        let (before, after) = around(&words, *at, *span);
        before.is_some_and(|w| PEOPLE.contains(&w)) || after.is_some_and(|w| PEOPLE.contains(&w))
    }) {
        return Some(*n as i64);
    }
    // A number said as a time of day ("at 7", "7 o'clock", "7 pm") is not a count.
    let clock = |at: usize, span: usize| {
        let (before, after) = around(&words, at, span);
        before == Some("at") || matches!(after, Some("o'clock" | "oclock" | "pm" | "am"))
    };
    if let Some((_, _, n)) = whole.iter().find(|(at, span, _)| !clock(*at, *span)) {
        return Some(*n as i64);
    }
    let joined = format!(" {} ", words.join(" "));
    if [" just me ", " only me ", " myself ", " just myself ", " me alone ", " just one "].iter().any(|p| joined.contains(p)) {
        return Some(1);
    }
    if [" me and my ", " my wife and i ", " my husband and i ", " my partner and i ", " the two of us "].iter().any(|p| joined.contains(p)) {
        return Some(2);
    }
    None
}

/// A count of people only where the words clearly say one: a number next to a counting word
/// ("for two", "two people", "a party of four"), "just me", "me and my wife". For filling a
/// count the caller was not asked for.
pub fn count_of_people(text: &str) -> Option<i64> {
    let words = words(text);
    let found = numbers_in(&words);
    let near = found.iter().find(|(at, span, n)| {
        let (before, after) = around(&words, *at, *span);
        n.fract() == 0.0 && (before.is_some_and(|w| PEOPLE.contains(&w) && w != "us") || after.is_some_and(|w| PEOPLE.contains(&w) && w != "for"))
    });
    if let Some((_, _, n)) = near {
        return Some(*n as i64);
    }
    found.is_empty().then(|| said_integer(text)).flatten()
}

/// A number, possibly with a fraction ("two and a half", "3.5").
pub fn number(text: &str) -> Option<f64> {
    let words = words(text);
    let found = numbers_in(&words);
    let (at, span, n) = *found.first()?;
    let rest: Vec<&str> = words.iter().skip(at + span).take(3).map(String::as_str).collect();
    if rest.starts_with(&["and", "a", "half"]) {
        return Some(n + 0.5);
    }
    if rest.starts_with(&["point"]) {
        if let Some((_, _, fraction)) = numbers_in(&words[at + span + 1..]).first() {
            let digits = fraction.to_string();
            return format!("{n}.{digits}").parse().ok();
        }
    }
    Some(n)
}

/// How a time of day that could be morning or evening is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TimeWindow {
    /// Earliest and latest acceptable times; an ambiguous hour takes the reading inside.
    pub from: Option<NaiveTime>,
    pub to: Option<NaiveTime>,
}

impl TimeWindow {
    pub fn contains(&self, time: NaiveTime) -> bool {
        match (self.from, self.to) {
            (Some(from), Some(to)) if from <= to => (from..=to).contains(&time),
            // A window across midnight (18:00–01:00).
            (Some(from), Some(to)) => time >= from || time <= to,
            (Some(from), None) => time >= from,
            (None, Some(to)) => time <= to,
            (None, None) => true,
        }
    }
}

/// A time of day: "7", "seven o'clock", "7 pm", "7:30", "19:30", "half past seven", "quarter to
/// eight", "seven thirty in the evening", "noon". An hour without am/pm takes the reading that
/// falls in `window` (the afternoon when there is no window and the hour is 1–6 or "tonight").
pub fn time(text: &str, window: TimeWindow) -> Option<NaiveTime> {
    let words = words(text);
    let joined = words.join(" ");
    let pm_hint = ["pm", "evening", "tonight", "afternoon", "night", "dinner"].iter().any(|w| words.iter().any(|x| x == w))
        || joined.contains("this evening");
    let am_hint = ["am", "morning", "breakfast"].iter().any(|w| words.iter().any(|x| x == w));
    let said = |w: &str| words.iter().any(|x| x == w);
    if said("noon") || said("midday") || said("lunchtime") {
        let minute = if joined.contains("half past") { 30 } else { 0 };
        return NaiveTime::from_hms_opt(12, minute, 0);
    }
    if said("midnight") {
        return NaiveTime::from_hms_opt(0, 0, 0);
    }
    let (hour, minute) = clock(&words).or_else(|| clock(&heard_as_numbers(&words)))?;
    resolve_hour(hour, minute, pm_hint, am_hint, window)
}

/// Words that sound like numbers where a time is said, as the numbers: speech recognition
/// writes "two in the afternoon" as "to the afternoon", "at eight" as "at ate". Only at the
/// start or after "at"/"about"/"around"/"by", and only before a time word.
fn heard_as_numbers(words: &[String]) -> Vec<String> {
    let mut out = words.to_vec();
    for (i, word) in words.iter().enumerate() {
        let number = match word.as_str() {
            "to" | "too" => "two",
            "for" => "four",
            "ate" => "eight",
            "won" => "one",
            _ => continue,
        };
        let after_cue = i == 0 || matches!(words[i - 1].as_str(), "at" | "about" | "around" | "by");
        let before_time = matches!(words.get(i + 1).map(String::as_str), Some("in" | "the" | "pm" | "am" | "o'clock" | "oclock" | "thirty" | "fifteen" | "forty" | "forty-five"));
        if after_cue && before_time {
            out[i] = number.to_string();
        }
    }
    out
}

/// The hour and minute said, before am/pm is decided.
fn clock(words: &[String]) -> Option<(u32, u32)> {
    // "7:30", "19:30", "7.30", "730pm"
    for word in words {
        let digits = word.trim_end_matches("pm").trim_end_matches("am");
        if let Some((h, m)) = digits.split_once([':', '.']) {
            if let (Ok(h), Ok(m)) = (h.parse::<u32>(), m.parse::<u32>()) {
                if h < 24 && m < 60 {
                    return Some((h, m));
                }
            }
        }
    }
    let numbers = numbers_in(words);
    let word_at = |i: usize| words.get(i).map(String::as_str);
    // A number with a time word next to it wins over the others ("for four at 8 pm").
    let cued = |(at, span, _): &(usize, usize, f64)| {
        let after = word_at(at + span);
        let before = at.checked_sub(1).and_then(word_at);
        matches!(after, Some("pm" | "am" | "o'clock" | "oclock" | "o" | "thirty" | "fifteen" | "forty" | "past" | "to"))
            || matches!(before, Some("at" | "around" | "about" | "by" | "past" | "to" | "after"))
    };
    let mut order: Vec<usize> = (0..numbers.len()).filter(|i| cued(&numbers[*i])).collect();
    order.extend((0..numbers.len()).filter(|i| !cued(&numbers[*i])));
    for index in order {
        let (at, span, value) = &numbers[index];
        let value = *value;
        if value.fract() != 0.0 || value < 0.0 {
            continue;
        }
        let value = value as u32;
        let before = at.checked_sub(1).and_then(word_at);
        let before2 = at.checked_sub(2).and_then(word_at);
        match (before2, before) {
            (Some("half"), Some("past" | "after")) if (1..=12).contains(&value) => return Some((value, 30)),
            (Some("quarter"), Some("past" | "after")) if (1..=12).contains(&value) => return Some((value, 15)),
            (Some("quarter"), Some("to" | "till" | "before")) if (1..=12).contains(&value) => return Some((value - 1 + if value == 1 { 12 } else { 0 }, 45)),
            _ => {}
        }
        // "ten past seven", "twenty to eight"
        if matches!(word_at(at + span), Some("past" | "after" | "to" | "till")) {
            if let Some((_, _, hour)) = numbers.get(index + 1) {
                let hour = *hour as u32;
                if value < 60 && (1..=12).contains(&hour) {
                    return Some(if matches!(word_at(at + span), Some("to" | "till")) { (if hour == 1 { 12 } else { hour - 1 }, 60 - value) } else { (hour, value) });
                }
            }
        }
        // "seven thirty", "seven fifteen", "7 45", "nine oh five"
        if value <= 23 {
            let next = word_at(at + span);
            if matches!(next, Some("oh" | "o")) {
                if let Some((_, _, m)) = numbers.get(index + 1).filter(|(a, _, _)| *a == at + span + 1) {
                    if *m < 10.0 {
                        return Some((value, *m as u32));
                    }
                }
            }
            if let Some((next_at, _, m)) = numbers.get(index + 1) {
                if *next_at == at + span && (10.0..60.0).contains(m) && m.fract() == 0.0 {
                    return Some((value, *m as u32));
                }
            }
            // 730 / 1930 written as one number.
            if value >= 100 {
                continue;
            }
            return Some((value, 0));
        }
        if (100..=2359).contains(&value) && value % 100 < 60 {
            return Some((value / 100, value % 100));
        }
    }
    None
}

fn resolve_hour(hour: u32, minute: u32, pm_hint: bool, am_hint: bool, window: TimeWindow) -> Option<NaiveTime> {
    if hour > 23 || minute > 59 {
        return None;
    }
    if hour == 0 || hour > 12 {
        return NaiveTime::from_hms_opt(hour, minute, 0);
    }
    let morning = NaiveTime::from_hms_opt(hour % 12, minute, 0)?;
    let evening = NaiveTime::from_hms_opt(hour % 12 + 12, minute, 0)?;
    if pm_hint && !am_hint {
        return Some(evening);
    }
    if am_hint && !pm_hint {
        return Some(morning);
    }
    match (window.contains(morning), window.contains(evening)) {
        (true, false) => Some(morning),
        (false, true) => Some(evening),
        // Both or neither: noon is 12, and 1–6 read as afternoon; 7–11 as morning.
        _ if hour == 12 => Some(evening),
        _ if (1..=6).contains(&hour) => Some(evening),
        _ => Some(morning),
    }
}

const WEEKDAYS: [(&str, Weekday); 7] = [
    ("monday", Weekday::Mon),
    ("tuesday", Weekday::Tue),
    ("wednesday", Weekday::Wed),
    ("thursday", Weekday::Thu),
    ("friday", Weekday::Fri),
    ("saturday", Weekday::Sat),
    ("sunday", Weekday::Sun),
];

const MONTHS: [&str; 12] = ["january", "february", "march", "april", "may", "june", "july", "august", "september", "october", "november", "december"];

fn month(word: &str) -> Option<u32> {
    let word = word.trim_end_matches('.');
    if let Some(m) = MONTHS.iter().position(|m| *m == word) {
        return Some(m as u32 + 1);
    }
    const SHORT: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
    match word {
        "sept" => Some(9),
        w => SHORT.iter().position(|m| *m == w).map(|m| m as u32 + 1),
    }
}

/// A date: "today", "tonight", "tomorrow", "the day after tomorrow", "Friday", "next Friday",
/// "this Saturday", "in three days", "the 4th", "December 4th", "the 4th of December",
/// "4 December 2026", "2026-12-04". Relative words resolve against `today`.
pub fn date(text: &str, today: NaiveDate) -> Option<NaiveDate> {
    let words = words(text);
    let joined = format!(" {} ", words.join(" "));
    if let Some(iso) = words.iter().find_map(|w| NaiveDate::parse_from_str(w, "%Y-%m-%d").ok()) {
        return Some(iso);
    }
    if joined.contains(" day after tomorrow ") {
        return Some(today + Duration::days(2));
    }
    if joined.contains(" tomorrow ") {
        return Some(today + Duration::days(1));
    }
    if [" today ", " tonight ", " this evening ", " this afternoon ", " this morning "].iter().any(|p| joined.contains(p)) {
        return Some(today);
    }
    if let Some(at) = words.iter().position(|w| w == "in") {
        let rest = &words[at + 1..];
        if let Some((0, span, n)) = numbers_in(rest).first().copied() {
            let unit = rest.get(span).map(String::as_str);
            match unit {
                Some("day" | "days") => return Some(today + Duration::days(n as i64)),
                Some("week" | "weeks") => return Some(today + Duration::days(7 * n as i64)),
                _ => {}
            }
        }
        if rest.first().map(String::as_str) == Some("a") && rest.get(1).map(String::as_str) == Some("week") {
            return Some(today + Duration::days(7));
        }
    }
    if joined.contains(" next week ") && !WEEKDAYS.iter().any(|(n, _)| joined.contains(n)) {
        return Some(today + Duration::days(7));
    }
    for (i, word) in words.iter().enumerate() {
        let Some((_, weekday)) = WEEKDAYS.iter().find(|(name, _)| word.trim_end_matches("'s") == *name || word == &format!("{name}s")) else { continue };
        let ahead = (weekday.num_days_from_monday() as i64 - today.weekday().num_days_from_monday() as i64).rem_euclid(7);
        let before = i.checked_sub(1).and_then(|b| words.get(b)).map(String::as_str);
        let ahead = match before {
            // "next Friday": the one after this coming one when that one is this week.
            Some("next") if ahead == 0 => 7,
            Some("next") => ahead,
            _ => ahead,
        };
        let after = words.get(i + 1).map(String::as_str);
        let weeks = if after == Some("week") && words.get(i + 2).map(String::as_str) == Some("after") { 7 } else { 0 };
        return Some(today + Duration::days(ahead + weeks));
    }
    // Day and month: "December 4th", "4th of December", "the 4th", "4/12" is left alone.
    let month_at = words.iter().position(|w| month(w).is_some());
    let numbers = numbers_in(&words);
    let day = numbers.iter().find(|(_, _, n)| (1.0..=31.0).contains(n) && n.fract() == 0.0).map(|(_, _, n)| *n as u32);
    let year = numbers.iter().find(|(_, _, n)| (2000.0..=2100.0).contains(n)).map(|(_, _, n)| *n as i32);
    match (month_at.and_then(|at| month(&words[at])), day) {
        (Some(m), Some(d)) => {
            let year = year.unwrap_or(today.year());
            let date = NaiveDate::from_ymd_opt(year, m, d)?;
            if date < today && year_unsaid(&numbers) {
                return NaiveDate::from_ymd_opt(year + 1, m, d);
            }
            Some(date)
        }
        (None, Some(d)) if joined.contains(" the ") || words.iter().any(|w| w.ends_with("th") || w.ends_with("st") || w.ends_with("nd") || w.ends_with("rd")) => {
            let this_month = NaiveDate::from_ymd_opt(today.year(), today.month(), d);
            match this_month {
                Some(date) if date >= today => Some(date),
                _ => {
                    let next = if today.month() == 12 { NaiveDate::from_ymd_opt(today.year() + 1, 1, d) } else { NaiveDate::from_ymd_opt(today.year(), today.month() + 1, d) };
                    next
                }
            }
        }
        _ => None,
    }
}

fn year_unsaid(numbers: &[(usize, usize, f64)]) -> bool {
    !numbers.iter().any(|(_, _, n)| (2000.0..=2100.0).contains(n))
}

/// Digits read out one by one or in groups: "five five five, one two three four", "oh" for
/// zero, "double five", "triple seven", "fifty five", "555-1234", "+44 20 7946 0958". Keeps a
/// leading `+`.
pub fn digits(text: &str) -> String {
    let words = words(text);
    let mut out = String::new();
    if text.trim_start().starts_with('+') {
        out.push('+');
    }
    let digit = |word: &str| match word {
        "oh" | "o" | "zero" | "nought" | "nil" => Some(0),
        w => unit(w).filter(|n| *n < 10),
    };
    let mut repeat = 1;
    let mut i = 0;
    while i < words.len() {
        let word = words[i].as_str();
        let piece = if matches!(word, "double" | "triple") {
            repeat = if word == "double" { 2 } else { 3 };
            i += 1;
            continue;
        } else if word.chars().any(|c| c.is_ascii_digit()) && word.chars().all(|c| c.is_ascii_digit() || "-+.()".contains(c)) {
            word.chars().filter(char::is_ascii_digit).collect::<String>()
        } else if let Some(d) = digit(word) {
            d.to_string()
        } else if let Some(t) = tens(word) {
            // "fifty five" is 55; "fifty" alone is 50.
            match words.get(i + 1).and_then(|w| unit(w)).filter(|u| (1..10).contains(u)) {
                Some(u) => {
                    i += 1;
                    (t + u).to_string()
                }
                None => t.to_string(),
            }
        } else if matches!(word, "ten" | "eleven" | "twelve" | "thirteen" | "fourteen" | "fifteen" | "sixteen" | "seventeen" | "eighteen" | "nineteen") {
            unit(word).map(|n| n.to_string()).unwrap_or_default()
        } else {
            repeat = 1;
            i += 1;
            continue;
        };
        for _ in 0..repeat {
            out.push_str(&piece);
        }
        repeat = 1;
        i += 1;
    }
    out
}

/// A phone number: at least `min_digits` digits, read any way.
pub fn phone(text: &str, min_digits: usize) -> Option<String> {
    let found = digits(text);
    let count = found.chars().filter(char::is_ascii_digit).count();
    (count >= min_digits && count <= 15).then_some(found)
}

/// An email address: "john dot smith at example dot com", "j o h n at gmail dot com",
/// "john@example.com".
pub fn email(text: &str) -> Option<String> {
    let lowered = text.to_lowercase();
    if let Some(found) = lowered.split_whitespace().find(|w| w.contains('@') && w.contains('.')) {
        let trimmed = found.trim_matches(|c: char| !(c.is_alphanumeric() || c == '@' || c == '.' || c == '_' || c == '-')).trim_end_matches('.');
        return Some(trimmed.to_string()).filter(|e| valid_email(e));
    }
    let words = words(text);
    let at = words.iter().position(|w| w == "at")?;
    let assemble = |part: &[String]| -> String {
        let mut out = String::new();
        for word in part {
            match word.as_str() {
                "dot" | "period" | "point" => out.push('.'),
                "underscore" => out.push('_'),
                "dash" | "hyphen" => out.push('-'),
                w => out.push_str(w),
            }
        }
        out
    };
    // The local part: the words before "at" after a cue like "is".
    let start = words[..at].iter().rposition(|w| matches!(w.as_str(), "is" | "it's" | "email" | "address")).map(|p| p + 1).unwrap_or(0);
    let local = assemble(&words[start..at]);
    // The domain: a word, then ("dot" word)*; whatever follows ("thanks") is not part of it.
    let rest = &words[at + 1..];
    let mut end = rest.len().min(1);
    while rest.get(end).is_some_and(|w| matches!(w.as_str(), "dot" | "period" | "point" | "dash" | "hyphen")) {
        end = (end + 2).min(rest.len());
    }
    let domain = assemble(&rest[..end]);
    let address = format!("{local}@{domain}");
    valid_email(&address).then_some(address)
}

fn valid_email(address: &str) -> bool {
    let Some((local, domain)) = address.split_once('@') else { return false };
    !local.is_empty() && domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.') && address.chars().all(|c| c.is_ascii_alphanumeric() || "@._-+".contains(c))
}

/// Yes or no, in their many forms. `None` when the words say neither (or both).
pub fn yes_no(text: &str) -> Option<bool> {
    let words = words(text);
    let joined = format!(" {} ", words.join(" "));
    const NO_PHRASES: &[&str] = &[
        " no ", " nope ", " nah ", " not really ", " not quite ", " incorrect ", " wrong ", " that's not ", " that is not ", " isn't right ", " negative ",
        " don't ", " do not ", " not right ", " not correct ", " no thanks ", " not at all ", " never ", " cancel ",
    ];
    const YES_PHRASES: &[&str] = &[
        " yes ", " yeah ", " yep ", " yup ", " ya ", " yah ", " sure ", " correct ", " right ", " exactly ", " absolutely ", " definitely ", " of course ",
        " please do ", " sounds good ", " perfect ", " ok ", " okay ", " affirmative ", " indeed ", " that's it ", " i do ", " go ahead ", " great ",
        " certainly ", " fine ", " alright ", " all right ", " uh huh ", " mhm ", " it is ", " that works ", " confirm ",
    ];
    // Words that say yes only as a filler or beside other words ("Okay, no, I don't…").
    const WEAK: &[&str] = &[" ok ", " okay ", " alright ", " all right ", " right ", " fine ", " great ", " well "];
    // A caller reading out a number says no yes with a weak word: "My phone number is five
    // five five, one two three four" heard as "…is fine. Fine. One, two, three, four." confirmed
    // a read-back it did not answer.
    let reading_digits = words.iter().map(|w| digits_read(w)).sum::<usize>() >= DIGITS_READ;
    let no_at = NO_PHRASES.iter().filter_map(|p| joined.find(p)).min();
    let yes_at = YES_PHRASES.iter().filter(|p| !(reading_digits && WEAK.contains(p))).filter_map(|p| joined.find(p)).min();
    match (yes_at, no_at) {
        (Some(_), None) => Some(true),
        (None, Some(_)) => Some(false),
        // "No, that's right" is rare; "yes, no problem" is not: the first word decides, unless
        // the no-phrase negates the yes ("not right", "not correct").
        (Some(y), Some(n)) => {
            // "Okay, no, I don't…": a filler before a no is no yes.
            let strong_yes = YES_PHRASES.iter().filter(|p| !WEAK.contains(p)).any(|p| joined.contains(p));
            if !strong_yes {
                return Some(false);
            }
            if joined.contains(" not right ") || joined.contains(" not correct ") || joined.contains(" that's not ") || joined.contains(" isn't right ") {
                Some(false)
            } else if joined.contains(" no problem ") || joined.contains(" no worries ") {
                Some(true)
            } else {
                Some(y < n)
            }
        }
        (None, None) => None,
    }
}

/// Digits read out, from this many on, make a line a number being given.
const DIGITS_READ: usize = 4;

/// How many digits `word` reads out: one for a digit said ("five", "5"), each digit of a run
/// written together ("555", "555-1234"); none for a time ("7:30") or anything else.
fn digits_read(word: &str) -> usize {
    if crate::text::is_one_digit(word) && word != "oh" {
        1
    } else if word.len() >= 3 && word.chars().all(|c| c.is_ascii_digit() || c == '-') {
        word.chars().filter(char::is_ascii_digit).count()
    } else {
        0
    }
}

/// Words a name is introduced by.
const NAME_CUES: &[&[&str]] = &[
    &["name", "is"],
    &["name's"],
    &["names"],
    &["under", "the", "name", "of"],
    &["under", "the", "name"],
    &["under"],
    &["call", "me"],
    &["this", "is"],
    &["it's"],
    &["it", "is"],
    &["i'm"],
    &["i", "am"],
    &["for"],
];

/// Words that are never part of a name.
const NOT_NAMES: &[&str] = &[
    "the", "a", "an", "is", "it", "it's", "its", "please", "thanks", "thank", "you", "yes", "yeah", "no", "sure", "um", "uh", "er", "okay", "ok", "my",
    "name", "name's", "and", "so", "well", "hi", "hello", "that's", "that", "booking", "reservation", "table", "be", "will", "under", "of", "just", "oh",
    "spelled", "spelt", "as", "in", "i", "i'm", "am", "me", "call", "this", "for", "we", "are", "our", "surname", "last", "first", "would", "like", "to",
    "i'd", "i'll", "i've", "we'd", "we'll", "we've", "we're", "let's",
    // Words a caller breaks off with ("Wait. Sorry. Let me ask something else.").
    "wait", "sorry", "let", "hold", "hang", "actually", "hmm", "excuse", "ask", "something", "else", "question",
    "on", "more", "thing", "things", "second", "minute", "moment",
    // Numbers said as words ("Hold on. One more thing." was booked under "One").
    "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
];

/// Where `phrase` first stands in `said` as whole words (the index of its first word); an empty
/// phrase stands nowhere.
pub(crate) fn phrase_at<S: AsRef<str>>(said: &[String], phrase: &[S]) -> Option<usize> {
    if phrase.is_empty() {
        return None;
    }
    said.windows(phrase.len()).position(|w| w.iter().map(String::as_str).eq(phrase.iter().map(AsRef::as_ref)))
}

/// Whether the caller asked something: a question mark, or a first word that asks ("Is there
/// parking nearby." as a recognizer may write it).
pub fn is_question(text: &str) -> bool {
    const ASKING: &[&str] = &["can", "could", "do", "does", "did", "is", "are", "will", "would", "may", "should", "what", "where", "when", "why", "how", "which", "who"];
    text.trim_end().ends_with('?') || words(text).first().is_some_and(|w| ASKING.contains(&w.as_str()))
}

/// Whether the caller only asked the agent to wait or said more is coming ("Hold on, one more
/// thing.", "Wait, sorry, let me ask something else.", "I have a question."): no answer, and
/// no failed one either. Every word is one such lines are made of, and one of the cues is said;
/// "Sorry?" alone asks to hear it again and is not one.
pub fn holds_on(text: &str) -> bool {
    const WORDS: &[&str] = &[
        "wait", "sorry", "hold", "hang", "on", "one", "more", "thing", "let", "me", "ask", "something", "else", "a", "quick", "question", "just", "second",
        "sec", "moment", "minute", "actually", "hmm", "um", "uh", "oh", "i", "i've", "have", "got", "another", "also", "okay", "ok", "so", "and", "please",
    ];
    const CUES: &[&[&str]] = &[
        &["hold", "on"], &["hang", "on"], &["wait"], &["one", "more", "thing"], &["let", "me", "ask"], &["a", "question"], &["another", "question"], &["one", "sec"],
        &["one", "second"], &["a", "second"], &["a", "moment"], &["a", "minute"],
    ];
    only_words_of(text, WORDS, CUES)
}

/// Whether every word of `text` is one of `vocabulary` and one of the `cues` is said among them.
fn only_words_of(text: &str, vocabulary: &[&str], cues: &[&[&str]]) -> bool {
    let words = words(text);
    !words.is_empty() && words.iter().all(|w| vocabulary.contains(&w.as_str())) && cues.iter().any(|cue| phrase_at(&words, cue).is_some())
}

/// Whether the caller only said a courtesy ("Please.", "Thanks.", "Thank you very much."): the
/// tail of a line whose words ended a turn at its comma ("At seven o'clock, please."), no answer
/// of its own.
pub fn only_courtesy(text: &str) -> bool {
    const WORDS: &[&str] = &["please", "thanks", "thank", "you", "very", "much", "cheers", "kindly"];
    const CUES: &[&[&str]] = &[&["please"], &["thanks"], &["thank"], &["cheers"]];
    only_words_of(text, WORDS, CUES)
}

/// Whether the caller said no and nothing else ("No.", "No, that's not right."): at a
/// read-back, a no that a correction usually follows ("No, sorry, make it six people").
pub fn only_no(text: &str) -> bool {
    const WORDS: &[&str] = &[
        "no", "nope", "nah", "oh", "sorry", "um", "uh", "well", "actually", "wait", "that's", "that", "is", "not", "isn't", "wrong", "incorrect", "quite", "right",
        "correct",
    ];
    let words = words(text);
    !words.is_empty() && words.iter().all(|w| WORDS.contains(&w.as_str())) && yes_no(text) == Some(false)
}

/// The words a farewell is made of.
const FAREWELL_WORDS: &[&str] = &[
    "bye", "goodbye", "good", "bye-bye", "thanks", "thank", "you", "very", "much", "cheers", "ok", "okay", "alright", "all", "right", "great", "perfect",
    "lovely", "wonderful", "see", "then", "too", "same", "to", "have", "a", "nice", "day", "evening", "night", "tonight", "later", "take", "care", "and",
    "so", "oh", "yes", "yeah", "that's", "it", "that", "is", "for", "now", "again", "sir", "madam",
];

/// Whether the caller only took their leave ("Thanks, bye!", "Okay, see you then.", "You too,
/// goodbye."): said over the agent's goodbye, no new question and no reason to keep the call
/// open.
pub fn only_farewell(text: &str) -> bool {
    const CUES: &[&[&str]] = &[&["bye"], &["goodbye"], &["bye-bye"], &["thanks"], &["thank"], &["cheers"], &["see", "you"], &["take", "care"], &["you", "too"]];
    only_words_of(text, FAREWELL_WORDS, CUES)
}

/// Whether the caller is leaving the call ("Thanks, goodbye.", "Okay, that's all, bye.",
/// "Have a nice day."): a farewell with words of leave-taking, not only thanks ("Thanks." after
/// an answer keeps the call going).
pub fn takes_leave(text: &str) -> bool {
    const LEAVING: &[&[&str]] = &[&["bye"], &["goodbye"], &["bye-bye"], &["see", "you"], &["take", "care"], &["have", "a"], &["that's", "all"], &["that", "is", "all"]];
    only_words_of(text, FAREWELL_WORDS, LEAVING)
}

/// A person's name: spelled ("S A R A H", "S-A-R-A-H"), after a cue ("the name is Sarah",
/// "it's under Sarah Johnson", "call me Bob"), or the utterance itself when it is a name.
pub fn name(text: &str) -> Option<String> {
    let words = words(text);
    // Spelled out: a run of three or more single letters.
    let mut best: Vec<String> = Vec::new();
    let mut run: Vec<String> = Vec::new();
    for word in &words {
        if word.len() == 1 && word.chars().all(|c| c.is_ascii_alphabetic()) {
            run.push(word.clone());
        } else {
            if run.len() > best.len() {
                best = std::mem::take(&mut run);
            }
            run.clear();
        }
    }
    if run.len() > best.len() {
        best = run;
    }
    if best.len() >= 3 {
        return Some(title(&best.concat()));
    }
    // Spelled with dashes as one word: "s-a-r-a-h" was split on '-' above; a single word of
    // letters separated by dots ("s.a.r.a.h") too.
    for cue in NAME_CUES {
        if let Some(at) = phrase_at(&words, cue) {
            // In cased text only capitalized words: "It's under hotel." (espeak's "Patel"
            // misheard) was booked under "Hotel"; asking again is better.
            let after: Vec<&String> = words[at + cue.len()..]
                .iter()
                .take_while(|w| w.chars().all(|c| c.is_alphabetic() || c == '\'') && can_be_name(text, std::slice::from_ref(*w)))
                .take(3)
                .collect();
            if !after.is_empty() {
                return Some(after.iter().map(|w| title(w)).collect::<Vec<_>>().join(" "));
            }
        }
    }
    // A question is not a name ("Can I bring a dog?" is not booked under "Can"): without a
    // cue or spelled letters, words asked as a question give none.
    if is_question(text) {
        return None;
    }
    // Speech recognition capitalizes names: "I made it, Sarah." holds one.
    if let Some(found) = capitalized_name(text) {
        return Some(found);
    }
    // Cased text (a recognizer's) writes a name capitalized, so what is left is ordinary
    // words: "I made it." is no name, and booking it under "Made" would be worse than asking
    // again. Only uncased text ("sarah", "SARAH") is taken as it stands.
    if is_cased(text) {
        return None;
    }
    let content: Vec<&String> = words.iter().filter(|w| !NOT_NAMES.contains(&w.as_str()) && w.chars().all(|c| c.is_alphabetic() || c == '\'')).collect();
    if (1..=3).contains(&content.len()) && words.len() <= 6 {
        return Some(content.iter().map(|w| title(w)).collect::<Vec<_>>().join(" "));
    }
    None
}

/// Whether `words` (as [`words`] gives them), said in `text`, can be a name: none is a word
/// never part of one, and in cased text (a recognizer's) each was written capitalized.
pub fn can_be_name(text: &str, words: &[String]) -> bool {
    let cased = is_cased(text);
    let capitalized: Vec<String> = text
        .replace(['’', '‘'], "'")
        .split_whitespace()
        .map(|w| w.chars().filter(|c| c.is_alphabetic() || *c == '\'' || *c == '-').collect::<String>().trim_matches(['\'', '-']).to_string())
        .filter(|w| w.chars().next().is_some_and(char::is_uppercase))
        .map(|w| w.to_lowercase())
        .collect();
    words.iter().all(|w| !NOT_NAMES.contains(&w.as_str()) && (!cased || capitalized.contains(w)))
}

/// Whether `text` has both cases, as a recognizer writes: then a name in it is capitalized.
fn is_cased(text: &str) -> bool {
    text.chars().any(char::is_uppercase) && text.chars().any(char::is_lowercase)
}

/// The capitalized words of `text` that can be a name, preferring those that do not start a
/// sentence (where every word is capitalized): up to three in a row.
fn capitalized_name(text: &str) -> Option<String> {
    let mut candidates: Vec<(usize, bool, String)> = Vec::new();
    let mut sentence_start = true;
    for (i, raw) in text.split_whitespace().enumerate() {
        let word: String = raw.chars().filter(|c| c.is_alphabetic() || *c == '\'' || *c == '-').collect();
        let capitalized = word.chars().next().is_some_and(char::is_uppercase) && word.chars().skip(1).any(char::is_lowercase);
        if capitalized && !NOT_NAMES.contains(&word.to_lowercase().as_str()) && word.len() > 1 {
            candidates.push((i, sentence_start, word));
        }
        sentence_start = raw.ends_with(['.', '!', '?']);
    }
    let inner: Vec<&(usize, bool, String)> = candidates.iter().filter(|(_, start, _)| !start).collect();
    let chosen: Vec<&(usize, bool, String)> = if inner.is_empty() { candidates.iter().collect() } else { inner };
    let first = chosen.first()?;
    let run: Vec<String> = chosen.iter().enumerate().take_while(|(k, c)| c.0 == first.0 + k).map(|(_, c)| c.2.clone()).take(3).collect();
    Some(run.join(" "))
}

fn title(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars.flat_map(char::to_lowercase)).collect(),
        None => String::new(),
    }
}

/// One of `values`, each with the phrases that name it: the first whose phrase the words hold.
pub fn choice(text: &str, values: &[(String, Vec<String>)]) -> Option<String> {
    let said = words(text);
    let mut best: Option<(usize, &str)> = None;
    for (value, phrases) in values {
        for phrase in std::iter::once(value).chain(phrases) {
            if let Some(at) = phrase_at(&said, &words(phrase)) {
                if best.is_none_or(|(b, _)| at < b) {
                    best = Some((at, value));
                }
            }
        }
    }
    best.map(|(_, v)| v.to_string())
}

/// The utterance without filler at its ends, for free-string slots.
pub fn free_text(text: &str) -> Option<String> {
    let trimmed = text.trim().trim_matches(|c: char| c.is_ascii_punctuation() || c.is_whitespace());
    (!trimmed.is_empty()).then(|| trimmed.to_string())
}

/// A time as the agent says it: "7 pm", "7:30 pm", "noon".
pub fn spoken_time(time: NaiveTime) -> String {
    use chrono::Timelike;
    let (hour, minute) = (time.hour(), time.minute());
    if (hour, minute) == (12, 0) {
        return "noon".into();
    }
    if (hour, minute) == (0, 0) {
        return "midnight".into();
    }
    let suffix = if hour >= 12 { "pm" } else { "am" };
    let twelve = match hour % 12 {
        0 => 12,
        h => h,
    };
    if minute == 0 {
        format!("{twelve} {suffix}")
    } else {
        format!("{twelve}:{minute:02} {suffix}")
    }
}

/// A date as the agent says it: "Friday the 4th of December".
pub fn spoken_date(date: NaiveDate) -> String {
    let day = date.day();
    let suffix = match (day % 10, day % 100) {
        (1, n) if n != 11 => "st",
        (2, n) if n != 12 => "nd",
        (3, n) if n != 13 => "rd",
        _ => "th",
    };
    format!("{} the {day}{suffix} of {}", date.format("%A"), date.format("%B"))
}

/// Digits as the agent reads them back, one at a time in groups of three, the last group of
/// four: "5 5 5, 1 2 3 4".
pub fn spoken_digits(digits: &str) -> String {
    let only: Vec<String> = digits.chars().filter(char::is_ascii_digit).map(String::from).collect();
    let mut groups = Vec::new();
    let mut rest = only.as_slice();
    while rest.len() > 4 {
        let (group, tail) = rest.split_at(3);
        groups.push(group.join(" "));
        rest = tail;
    }
    if !rest.is_empty() {
        groups.push(rest.join(" "));
    }
    groups.join(", ")
}

/// The value of a parsed slot as JSON, in its canonical form.
pub fn to_json_time(time: NaiveTime) -> Value {
    json!(time.format("%H:%M").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    fn hm(h: u32, m: u32) -> Option<NaiveTime> {
        NaiveTime::from_hms_opt(h, m, 0)
    }

    const EVENING: TimeWindow = TimeWindow { from: NaiveTime::from_hms_opt(12, 0, 0), to: NaiveTime::from_hms_opt(23, 0, 0) };

    #[test]
    fn counts_of_people() {
        for (text, want) in [
            ("a party of four", 4),
            ("for 2", 2),
            ("Hi. I would like to book a table for two people this evening.", 2),
            ("Table for 6 at 8 pm", 6),
            ("twenty two guests", 22),
            ("just me", 1),
            ("me and my wife", 2),
            ("a dozen", 12),
            ("There will be three of us.", 3),
            ("Far to people. This evening.", 2),
            ("A table for too guests.", 2),
        ] {
            assert_eq!(integer(text), Some(want), "{text}");
        }
        assert_eq!(integer("I'm not sure yet"), None);
        assert_eq!(count_of_people("I'd like to speak to people in charge."), None, "the homophone only where a count is asked");
        // A time of day, said where a count was asked for, is not one.
        for text in ["At 7 o'clock.", "at seven", "8 pm", "At 9 a.m."] {
            assert_eq!(integer(text), None, "{text}");
        }
        assert_eq!(integer("Six, at 8 pm."), Some(6));
    }

    #[test]
    fn words_a_caller_breaks_off_with_are_no_name() {
        assert_eq!(name("Wait. Sorry. Let me ask something else."), None);
        assert_eq!(name("Sorry, it's Sarah."), Some("Sarah".into()));
    }

    #[test]
    fn times_of_day() {
        let cases = [
            ("At seven o'clock, please.", hm(19, 0)),
            ("At 7 o'clock, please.", hm(19, 0)),
            ("half past seven", hm(19, 30)),
            ("seven thirty in the evening", hm(19, 30)),
            ("19:30", hm(19, 30)),
            ("7.30 p.m.", hm(19, 30)),
            ("quarter to eight", hm(19, 45)),
            ("ten past eight", hm(20, 10)),
            ("noon", hm(12, 0)),
            ("8 in the morning", hm(8, 0)),
            ("around 9pm", hm(21, 0)),
            // Numbers as speech recognition mishears them.
            ("to the afternoon.", hm(14, 0)),
            ("at ate pm", hm(20, 0)),
            ("Okay. At 9 o'm.", hm(21, 0)),
        ];
        for (text, want) in cases {
            assert_eq!(time(text, EVENING), want, "{text}");
        }
        assert_eq!(time("9", TimeWindow::default()), hm(9, 0), "no window: 7–11 read as morning");
        assert_eq!(time("whenever suits", EVENING), None);
        assert_eq!(time("I'd like to come in the afternoon", EVENING), None, "a `to` inside a sentence is not a two");
    }

    #[test]
    fn dates_resolve_against_the_calls_day() {
        let today = day(2026, 11, 30); // a Monday
        for (text, want) in [
            ("tomorrow", day(2026, 12, 1)),
            ("this evening", today),
            ("on Friday", day(2026, 12, 4)),
            ("next Monday", day(2026, 12, 7)),
            ("the day after tomorrow", day(2026, 12, 2)),
            ("December 4th", day(2026, 12, 4)),
            ("the 4th of December", day(2026, 12, 4)),
            ("in three days", day(2026, 12, 3)),
            ("the 15th", day(2026, 12, 15)),
            ("January 2nd", day(2027, 1, 2)),
        ] {
            assert_eq!(date(text, today), Some(want), "{text}");
        }
    }

    #[test]
    fn digits_names_emails_and_answers() {
        assert_eq!(phone("five five five, one two three four", 7).as_deref(), Some("5551234"));
        assert_eq!(phone("My number is 555-1234", 7).as_deref(), Some("5551234"));
        assert_eq!(phone("oh seven seven double nine, one two three four five six", 10).as_deref(), Some("07799123456"));
        assert_eq!(phone("two three", 7), None);
        assert_eq!(name("The name is Sarah.").as_deref(), Some("Sarah"));
        assert_eq!(name("S A R A H").as_deref(), Some("Sarah"));
        assert_eq!(name("It's under Sarah Johnson, please").as_deref(), Some("Sarah Johnson"));
        assert_eq!(name("Johnson").as_deref(), Some("Johnson"));
        assert_eq!(name("I made it, Sarah.").as_deref(), Some("Sarah"), "whisper's mishearing of 'The name is Sarah'");
        assert_eq!(name("Book it for Mary Ellen, please").as_deref(), Some("Mary Ellen"));
        // Cased words a recognizer left lowercase are not a name; uncased text is taken whole.
        assert_eq!(name("I made it."), None, "whisper's mishearing of 'The name is Sarah', booked as 'Made' before");
        assert_eq!(name("It's under hotel."), None, "whisper's mishearing of 'It's under Patel', booked as 'Hotel' before");
        assert_eq!(name("it's under patel").as_deref(), Some("Patel"), "uncased text is taken as it stands");
        assert_eq!(name("Yes, that's right."), None);
        assert_eq!(name("I don't know."), None);
        assert_eq!(name("I'd like to book a table."), None);
        assert_eq!(name("sarah johnson").as_deref(), Some("Sarah Johnson"));
        assert_eq!(name("SARAH").as_deref(), Some("Sarah"));
        assert_eq!(email("it's john dot smith at example dot com").as_deref(), Some("john.smith@example.com"));
        assert_eq!(email("jane@example.org please").as_deref(), Some("jane@example.org"));
        assert_eq!(email("It is jane@example.org.").as_deref(), Some("jane@example.org"));
        assert_eq!(email("bob at example dot co dot uk, cheers").as_deref(), Some("bob@example.co.uk"));
        assert_eq!(time("Two o'clock in the afternoon", TimeWindow::default()), hm(14, 0), "afternoon is not noon");
        for (text, want) in [("Yes, that's right.", Some(true)), ("yeah", Some(true)), ("No, that's wrong", Some(false)), ("That's not right", Some(false)), ("nope", Some(false)), ("Sure, no problem", Some(true)), ("hmm", None), ("Okay, no, I don't want it", Some(false)), ("Right, no thanks", Some(false)),
            ("My phone number is fine. Fine. One, two, three, four.", None), ("Yes, 555-1234.", Some(true)), ("Fine, at 7:30 for two.", Some(true))] {
            assert_eq!(yes_no(text), want, "{text}");
        }
        assert_eq!(spoken_time(NaiveTime::from_hms_opt(19, 30, 0).unwrap()), "7:30 pm");
        assert_eq!(spoken_date(day(2026, 12, 4)), "Friday the 4th of December");
        assert_eq!(spoken_digits("5551234"), "5 5 5, 1 2 3 4");
        assert_eq!(spoken_digits("4155550123"), "4 1 5, 5 5 5, 0 1 2 3");
        assert_eq!(phone("fifty five, twelve, thirty four", 6).as_deref(), Some("551234"));
    }
}
