//! Entities in one utterance: dates and times resolved against the call's day, amounts of
//! money, emails, phone numbers, order-like ids and plain numbers.
//!
//! The readers are the flows' slot parsers (`flow::parse`), so an entity found here is exactly
//! what a slot would have taken from the same words ("seven o'clock" is 19:00 in both places).
//! A reader that would guess from a bare number (a time from "seven") only runs when the words
//! carry its cue.

use regex::Regex;
use serde::Serialize;
use serde_json::{json, Value};
use std::sync::LazyLock;

use super::Day;
use crate::flow::parse;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entity {
    /// `date`, `time`, `amount`, `email`, `phone`, `id` or `number`.
    pub kind: &'static str,
    /// The value, normalized: ISO date, `HH:MM`, `{"value", "currency"}`, digits.
    pub value: Value,
}

static TIME_CUE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(a\.?m\.?|p\.?m\.?|o'?clock|noon|midnight|half past|quarter (past|to)|\d{1,2}:\d{2}|in the (morning|afternoon|evening)|tonight|at (\d{1,2}|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve)\b)")
        .expect("valid pattern")
});
static DATE_CUE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(today|tonight|tomorrow|yesterday|monday|tuesday|wednesday|thursday|friday|saturday|sunday|january|february|march|april|may|june|july|august|september|october|november|december|jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec|\d{1,2}(st|nd|rd|th)|first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|in (a|one|two|three|four|five|six|seven|\d+) (days?|weeks?)|\d{4}-\d{2}-\d{2})\b")
        .expect("valid pattern")
});
static AMOUNT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)(?P<sym>[$£€₹])\s?(?P<a>\d[\d,]*(?:\.\d{1,2})?)|\b(?P<b>\d[\d,]*(?:\.\d{1,2})?)\s?(?P<word>dollars?|bucks|pounds?|euros?|rupees?|usd|gbp|eur|inr)\b")
        .expect("valid pattern")
});
/// An order-like id: letters and digits together, or `#` and digits ("AB12345", "#88231").
static ID: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(?i)#\d{3,}|\b[a-z]{1,4}-?\d{4,}[a-z0-9]*\b").expect("valid pattern"));

/// Every entity found in `text`, in a fixed kind order; `day` resolves "tomorrow" and "Friday",
/// and an hour without am or pm by its hours.
pub fn find(text: &str, day: Day) -> Vec<Entity> {
    let mut found = Vec::new();
    if DATE_CUE.is_match(text) {
        if let Some(date) = parse::date(text, day.date) {
            found.push(Entity { kind: "date", value: json!(date.format("%Y-%m-%d").to_string()) });
        }
    }
    if TIME_CUE.is_match(text) {
        if let Some(time) = parse::time(text, day.hours) {
            found.push(Entity { kind: "time", value: json!(time.format("%H:%M").to_string()) });
        }
    }
    for caps in AMOUNT.captures_iter(text) {
        let digits = caps.name("a").or(caps.name("b")).map_or("", |m| m.as_str()).replace(',', "");
        let Ok(value) = digits.parse::<f64>() else { continue };
        let currency = match caps.name("sym").map(|m| m.as_str()).or(caps.name("word").map(|m| m.as_str())).unwrap_or("").to_lowercase().as_str() {
            "$" | "dollar" | "dollars" | "bucks" | "usd" => "USD",
            "£" | "pound" | "pounds" | "gbp" => "GBP",
            "€" | "euro" | "euros" | "eur" => "EUR",
            _ => "INR",
        };
        found.push(Entity { kind: "amount", value: json!({ "value": value, "currency": currency }) });
    }
    if let Some(email) = parse::email(text) {
        found.push(Entity { kind: "email", value: json!(email) });
    }
    let ids: Vec<String> = ID.find_iter(text).map(|m| m.as_str().trim_start_matches('#').to_uppercase()).collect();
    for id in &ids {
        found.push(Entity { kind: "id", value: json!(id) });
    }
    let has = |found: &[Entity], kind: &str| found.iter().any(|e| e.kind == kind);
    // Digits read out one by one are a phone number when there are enough of them and nothing
    // else (an id, an amount, a time) already explains them.
    if ids.is_empty() && !has(&found, "amount") && !has(&found, "time") {
        if let Some(phone) = parse::phone(text, 7) {
            found.push(Entity { kind: "phone", value: json!(phone) });
        }
    }
    if ids.is_empty() && !["phone", "amount", "time", "date"].iter().any(|k| has(&found, k)) {
        if let Some(n) = parse::number(text) {
            found.push(Entity { kind: "number", value: json!(n) });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    use chrono::{NaiveDate, NaiveTime};

    fn monday() -> Day {
        Day::of(NaiveDate::from_ymd_opt(2026, 11, 30).unwrap())
    }

    fn kinds(text: &str) -> Vec<(&'static str, Value)> {
        find(text, monday()).into_iter().map(|e| (e.kind, e.value)).collect()
    }

    #[test]
    fn a_callers_words_yield_resolved_values() {
        assert_eq!(kinds("Can I come tomorrow at seven o'clock in the evening?"), [("date", json!("2026-12-01")), ("time", json!("19:00"))]);
        assert_eq!(kinds("On Friday please"), [("date", json!("2026-12-04"))]);
        assert_eq!(kinds("I was charged $49.99 twice"), [("amount", json!({ "value": 49.99, "currency": "USD" }))]);
        assert_eq!(kinds("It was 20 pounds"), [("amount", json!({ "value": 20.0, "currency": "GBP" }))]);
        assert_eq!(kinds("my email is john dot smith at example dot com"), [("email", json!("john.smith@example.com"))]);
        assert_eq!(kinds("call me on five five five, zero one two three four"), [("phone", json!("55501234"))]);
        assert_eq!(kinds("My order is AB12345"), [("id", json!("AB12345"))]);
        assert_eq!(kinds("order #88231 never came"), [("id", json!("88231"))]);
        assert_eq!(kinds("we are four"), [("number", json!(4.0))]);
        assert!(kinds("Hello, I'd like to book a table").is_empty());
    }

    #[test]
    fn an_hour_without_am_or_pm_falls_in_the_calls_hours() {
        let from_noon = Day { hours: parse::TimeWindow { from: NaiveTime::from_hms_opt(12, 0, 0), to: NaiveTime::from_hms_opt(22, 30, 0) }, ..monday() };
        let time = |text: &str, day: Day| find(text, day).into_iter().find(|e| e.kind == "time").map(|e| e.value);
        // What a restaurant's flow took for its time slot from the same words.
        assert_eq!(time("At 7 o'clock, please", from_noon), Some(json!("19:00")));
        assert_eq!(time("At 7 o'clock, please", monday()), Some(json!("07:00")), "no hours: the hour as said");
        assert_eq!(time("at 11 am", from_noon), Some(json!("11:00")), "an am/pm said outranks the hours");
    }

    #[test]
    fn a_bare_number_is_not_a_time() {
        assert_eq!(kinds("I have seven questions"), [("number", json!(7.0))]);
    }
}
