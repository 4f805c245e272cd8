//! Phone numbers: validation (E.164 through the `phonenumber` crate) and the workspace's
//! numbers. Sandbox numbers (`crate::simulation::sandbox`) are valid and always callable.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use phonenumber::{Mode, PhoneNumber, Type};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::assistants::{rfc3339, Page};
use super::auth::Auth;
use super::error::{ApiError, ApiJson, ApiQuery, ErrorBody};
use super::AppState;
use crate::simulation::{sandbox, SANDBOX_PREFIX};
use crate::store::{self, NumberRecord};

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct NumberInfo {
    pub input: String,
    pub valid: bool,
    pub e164: Option<String>,
    /// ISO 3166 country, e.g. `US`.
    pub country: Option<String>,
    pub country_code: Option<u16>,
    /// fixed_line, mobile, fixed_line_or_mobile, toll_free, premium_rate, voip, …
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub national_format: Option<String>,
    pub international_format: Option<String>,
    /// The number's timezone when its country (or NANP area code) has one.
    pub timezone: Option<String>,
    /// Every timezone the number's country spans.
    pub timezones: Vec<String>,
    /// Whether Ringline can place a call to it now.
    pub callable: bool,
    /// True for sandbox numbers (+1 500 555 XXXX), answered by the simulated line.
    pub sandbox: bool,
    /// Why it is not valid or not callable.
    pub reason: Option<String>,
}

/// Parses and describes a number. `country` is the default region for national formats.
pub fn describe(input: &str, country: Option<phonenumber::country::Id>) -> NumberInfo {
    let mut info = NumberInfo {
        input: input.to_string(),
        valid: false,
        e164: None,
        country: None,
        country_code: None,
        kind: None,
        national_format: None,
        international_format: None,
        timezone: None,
        timezones: Vec::new(),
        callable: false,
        sandbox: false,
        reason: None,
    };
    if let Some(problem) = not_dialable(input) {
        info.reason = Some(problem);
        return info;
    }
    let number: PhoneNumber = match phonenumber::parse(country, input) {
        Ok(number) => number,
        Err(e) => {
            info.reason = Some(format!("not a phone number ({e}); give it in E.164 form, e.g. +14155550123, or pass `country`"));
            return info;
        }
    };
    let e164 = number.format().mode(Mode::E164).to_string();
    let region = number.country().id().map(|id| id.as_ref().to_string());
    info.country_code = Some(number.country().code());
    info.national_format = Some(number.format().mode(Mode::National).to_string());
    info.international_format = Some(number.format().mode(Mode::International).to_string());
    info.kind = Some(type_name(number.number_type(&phonenumber::metadata::DATABASE)).to_string());
    info.timezones = region.as_deref().map(country_timezones).unwrap_or_default().iter().map(|s| s.to_string()).collect();
    info.timezone = match info.timezones.len() {
        1 => info.timezones.first().cloned(),
        _ => nanp_timezone(&e164).map(str::to_string),
    };
    info.country = region;
    info.sandbox = sandbox(&e164).is_some();
    info.valid = number.is_valid() || info.sandbox;
    info.e164 = Some(e164);
    if !info.valid {
        info.reason = Some("the number is not in use in its country's numbering plan".into());
    } else if info.sandbox {
        info.callable = true;
    } else {
        info.reason = Some(format!("no telephony provider is configured: only sandbox numbers ({SANDBOX_PREFIX}XXXX) can be called"));
    }
    info
}

/// `info` once a telephony provider is configured: every valid number is callable.
pub fn with_telephony(mut info: NumberInfo, telephony: bool) -> NumberInfo {
    if telephony && info.valid && !info.callable {
        info.callable = true;
        info.reason = None;
    }
    info
}

/// The longest text a phone number may be given as.
const MAX_NUMBER_CHARS: usize = 32;

/// Why `input` cannot be a plain phone number, if it cannot: only digits, a leading `+`, and
/// spaces, dashes, dots, slashes and parentheses between them. Extensions (`x12`, `ext. 12`,
/// `;ext=12`), `tel:` prefixes and anything after the number are refused, never cut off and
/// dialled without them.
fn not_dialable(input: &str) -> Option<String> {
    if input.chars().count() > MAX_NUMBER_CHARS {
        return Some(format!("a phone number is at most {MAX_NUMBER_CHARS} characters; give it in E.164 form, e.g. +14155550123"));
    }
    let stray = input.char_indices().find(|(i, c)| !(c.is_ascii_digit() || matches!(c, ' ' | '-' | '.' | '(' | ')' | '/') || (*c == '+' && input[..*i].trim().is_empty())));
    stray.map(|(_, c)| {
        format!("not a phone number: it holds `{}`; give digits only, in E.164 form such as +14155550123 (no extension, no tel: prefix)", c.escape_default())
    })
}

/// A valid number's E.164 form and description, or a 422 naming `field`.
pub fn valid_number(field: &str, raw: &str, country: Option<phonenumber::country::Id>) -> Result<(String, NumberInfo), ApiError> {
    let info = describe(raw, country);
    match (&info.e164, info.valid) {
        (Some(e164), true) => Ok((e164.clone(), info)),
        _ => Err(ApiError::invalid(field, format!("`{raw}`: {}", info.reason.clone().unwrap_or_default()))),
    }
}

fn type_name(kind: Type) -> &'static str {
    match kind {
        Type::FixedLine => "fixed_line",
        Type::Mobile => "mobile",
        Type::FixedLineOrMobile => "fixed_line_or_mobile",
        Type::TollFree => "toll_free",
        Type::PremiumRate => "premium_rate",
        Type::SharedCost => "shared_cost",
        Type::PersonalNumber => "personal_number",
        Type::Voip => "voip",
        Type::Pager => "pager",
        Type::Uan => "uan",
        Type::Voicemail => "voicemail",
        _ => "unknown",
    }
}

/// Timezones by country: the zones a number of that country may be in.
fn country_timezones(region: &str) -> &'static [&'static str] {
    match region {
        "US" => &["America/New_York", "America/Chicago", "America/Denver", "America/Phoenix", "America/Los_Angeles", "America/Anchorage", "Pacific/Honolulu"],
        "CA" => &["America/St_Johns", "America/Halifax", "America/Toronto", "America/Winnipeg", "America/Edmonton", "America/Vancouver"],
        "GB" => &["Europe/London"],
        "IE" => &["Europe/Dublin"],
        "FR" => &["Europe/Paris"],
        "DE" => &["Europe/Berlin"],
        "ES" => &["Europe/Madrid", "Atlantic/Canary"],
        "PT" => &["Europe/Lisbon", "Atlantic/Azores"],
        "IT" => &["Europe/Rome"],
        "NL" => &["Europe/Amsterdam"],
        "BE" => &["Europe/Brussels"],
        "CH" => &["Europe/Zurich"],
        "AT" => &["Europe/Vienna"],
        "SE" => &["Europe/Stockholm"],
        "NO" => &["Europe/Oslo"],
        "DK" => &["Europe/Copenhagen"],
        "FI" => &["Europe/Helsinki"],
        "PL" => &["Europe/Warsaw"],
        "CZ" => &["Europe/Prague"],
        "GR" => &["Europe/Athens"],
        "TR" => &["Europe/Istanbul"],
        "UA" => &["Europe/Kyiv"],
        "IL" => &["Asia/Jerusalem"],
        "AE" => &["Asia/Dubai"],
        "SA" => &["Asia/Riyadh"],
        "IN" => &["Asia/Kolkata"],
        "PK" => &["Asia/Karachi"],
        "BD" => &["Asia/Dhaka"],
        "SG" => &["Asia/Singapore"],
        "MY" => &["Asia/Kuala_Lumpur"],
        "TH" => &["Asia/Bangkok"],
        "VN" => &["Asia/Ho_Chi_Minh"],
        "PH" => &["Asia/Manila"],
        "ID" => &["Asia/Jakarta", "Asia/Makassar", "Asia/Jayapura"],
        "CN" => &["Asia/Shanghai"],
        "HK" => &["Asia/Hong_Kong"],
        "TW" => &["Asia/Taipei"],
        "JP" => &["Asia/Tokyo"],
        "KR" => &["Asia/Seoul"],
        "AU" => &["Australia/Sydney", "Australia/Brisbane", "Australia/Adelaide", "Australia/Darwin", "Australia/Perth"],
        "NZ" => &["Pacific/Auckland"],
        "ZA" => &["Africa/Johannesburg"],
        "NG" => &["Africa/Lagos"],
        "KE" => &["Africa/Nairobi"],
        "EG" => &["Africa/Cairo"],
        "MA" => &["Africa/Casablanca"],
        "MX" => &["America/Mexico_City", "America/Cancun", "America/Chihuahua", "America/Tijuana"],
        "BR" => &["America/Sao_Paulo", "America/Manaus", "America/Fortaleza", "America/Noronha"],
        "AR" => &["America/Argentina/Buenos_Aires"],
        "CL" => &["America/Santiago"],
        "CO" => &["America/Bogota"],
        "PE" => &["America/Lima"],
        _ => &[],
    }
}

/// A NANP number's zone from its area code, for the area codes of the largest US and
/// Canadian cities (the rest of a multi-zone country stays a list).
fn nanp_timezone(e164: &str) -> Option<&'static str> {
    let area = e164.strip_prefix("+1")?.get(..3)?;
    Some(match area {
        "201" | "202" | "203" | "212" | "215" | "267" | "301" | "305" | "332" | "347" | "404" | "410" | "412" | "416" | "437" | "470" | "508" | "516" | "585" | "607"
        | "610" | "617" | "631" | "646" | "647" | "678" | "703" | "704" | "716" | "718" | "754" | "757" | "770" | "786" | "813" | "857" | "904" | "905" | "914" | "917"
        | "919" | "929" | "954" | "973" | "980" | "514" | "613" => "America/New_York",
        "210" | "214" | "224" | "262" | "281" | "312" | "314" | "316" | "346" | "414" | "469" | "504" | "512" | "612" | "615" | "630" | "651" | "708" | "713" | "737"
        | "773" | "816" | "817" | "832" | "847" | "872" | "901" | "972" | "204" => "America/Chicago",
        "303" | "385" | "406" | "505" | "719" | "720" | "801" | "403" | "587" | "780" => "America/Denver",
        "480" | "520" | "602" | "623" | "928" => "America/Phoenix",
        "206" | "213" | "253" | "310" | "323" | "408" | "415" | "424" | "425" | "503" | "510" | "530" | "559" | "562" | "619" | "626" | "628" | "650" | "661" | "702"
        | "714" | "725" | "747" | "760" | "818" | "831" | "858" | "909" | "916" | "925" | "949" | "971" | "604" | "778" | "236" => "America/Los_Angeles",
        "907" => "America/Anchorage",
        "808" => "Pacific/Honolulu",
        _ => return None,
    })
}

pub fn parse_country(country: Option<&str>) -> Result<Option<phonenumber::country::Id>, ApiError> {
    match country {
        None => Ok(None),
        Some(code) => code
            .to_ascii_uppercase()
            .parse()
            .map(Some)
            .map_err(|_| ApiError::invalid("country", format!("`{code}` is not an ISO 3166 country code such as US or GB"))),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateRequest {
    /// The number, E.164 (`+14155550123`) or national with `country` (`phone_number` is taken
    /// too, as Ringez names it).
    #[serde(alias = "phone_number")]
    pub number: String,
    /// Default country for a national number (ISO 3166, e.g. US).
    pub country: Option<String>,
}

/// Validate a phone number: E.164 form, country, type, formats, timezone, callable.
#[utoipa::path(post, path = "/v1/numbers/validate", tag = "numbers", request_body = ValidateRequest,
    responses((status = 200, body = NumberInfo), (status = 422, body = ErrorBody)))]
pub async fn validate(State(state): State<AppState>, _auth: Auth, ApiJson(request): ApiJson<ValidateRequest>) -> Result<Json<NumberInfo>, ApiError> {
    let country = parse_country(request.country.as_deref())?;
    Ok(Json(with_telephony(describe(&request.number, country), state.can_dial_out())))
}

#[derive(Serialize, ToSchema)]
pub struct NumberView {
    pub id: String,
    pub number: String,
    pub label: Option<String>,
    pub assistant_id: Option<String>,
    pub sandbox: bool,
    pub created_at: String,
}

impl From<NumberRecord> for NumberView {
    fn from(record: NumberRecord) -> Self {
        NumberView { sandbox: sandbox(&record.e164).is_some(), id: record.id, number: record.e164, label: record.label, assistant_id: record.assistant_id, created_at: rfc3339(record.created_at) }
    }
}

#[derive(Serialize, ToSchema)]
pub struct NumberList {
    pub numbers: Vec<NumberView>,
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
    pub has_more: bool,
}

/// The workspace's phone numbers.
#[utoipa::path(get, path = "/v1/numbers", tag = "numbers", params(Page), responses((status = 200, body = NumberList)))]
pub async fn list(State(state): State<AppState>, auth: Auth, ApiQuery(page): ApiQuery<Page>) -> Result<Json<NumberList>, ApiError> {
    let (limit, offset) = page.resolve()?;
    let (rows, total) = state.store.numbers(&auth.workspace_id, limit, offset).await?;
    Ok(Json(NumberList { has_more: offset + (rows.len() as i64) < total, numbers: rows.into_iter().map(NumberView::from).collect(), total, limit, offset }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddNumberRequest {
    pub number: String,
    pub country: Option<String>,
    pub label: Option<String>,
    pub assistant_id: Option<String>,
}

/// Add a number to the workspace (a sandbox number, or one from your telephony provider).
#[utoipa::path(post, path = "/v1/numbers", tag = "numbers", request_body = AddNumberRequest,
    responses((status = 201, body = NumberView), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn add(State(state): State<AppState>, auth: Auth, ApiJson(request): ApiJson<AddNumberRequest>) -> Result<impl IntoResponse, ApiError> {
    let country = parse_country(request.country.as_deref())?;
    let (e164, _) = valid_number("number", &request.number, country)?;
    if request.label.as_deref().is_some_and(|l| l.chars().count() > 100) {
        return Err(ApiError::invalid("label", "is longer than 100 characters"));
    }
    state.limits.check_numbers(&state.store, &auth.workspace_id).await?;
    if sandbox(&e164).is_none() {
        // A real number rings one workspace's assistant: the first to add it holds it.
        if let Some(holder) = state.store.number_holder(&e164).await? {
            if holder.workspace_id != auth.workspace_id {
                return Err(ApiError::conflict("number_taken", format!("{e164} belongs to another workspace on this server")).with_field("number"));
            }
        }
    }
    if let Some(assistant) = &request.assistant_id {
        state.store.assistant(&auth.workspace_id, assistant).await?.ok_or_else(|| ApiError::not_found("assistant", assistant).with_field("assistant_id"))?;
    }
    let record = NumberRecord {
        id: store::new_id("num"),
        workspace_id: auth.workspace_id.clone(),
        e164: e164.clone(),
        label: request.label,
        assistant_id: request.assistant_id,
        created_at: store::now_ms(),
    };
    if !state.store.insert_number(&record).await? {
        return Err(ApiError::conflict("number_exists", format!("{e164} is already in this workspace")).with_field("number"));
    }
    Ok((StatusCode::CREATED, Json(NumberView::from(record))))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AssignRequest {
    /// The assistant that answers this number; null to unassign.
    pub assistant_id: Option<String>,
}

/// Assign a number to an assistant (or unassign it with null).
#[utoipa::path(post, path = "/v1/numbers/{id}/assign", tag = "numbers", request_body = AssignRequest,
    responses((status = 200, body = NumberView), (status = 404, body = ErrorBody)))]
pub async fn assign(State(state): State<AppState>, auth: Auth, Path(id): Path<String>, ApiJson(request): ApiJson<AssignRequest>) -> Result<Json<NumberView>, ApiError> {
    state.store.number(&auth.workspace_id, &id).await?.ok_or_else(|| ApiError::not_found("number", &id))?;
    if let Some(assistant) = &request.assistant_id {
        state.store.assistant(&auth.workspace_id, assistant).await?.ok_or_else(|| ApiError::not_found("assistant", assistant).with_field("assistant_id"))?;
    }
    state.store.assign_number(&auth.workspace_id, &id, request.assistant_id.as_deref()).await?;
    let record = state.store.number(&auth.workspace_id, &id).await?.ok_or_else(|| ApiError::not_found("number", &id))?;
    Ok(Json(record.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_a_us_number() {
        let info = describe("+1 415 555 2671", None);
        assert_eq!(info.e164.as_deref(), Some("+14155552671"));
        assert_eq!(info.country.as_deref(), Some("US"));
        assert_eq!(info.timezone.as_deref(), Some("America/Los_Angeles"));
        assert!(!info.callable, "no telephony provider: only the sandbox is callable");
    }

    #[test]
    fn national_numbers_need_a_country() {
        let info = describe("020 7946 0958", Some(phonenumber::country::Id::GB));
        assert_eq!(info.e164.as_deref(), Some("+442079460958"));
        assert_eq!(info.timezone.as_deref(), Some("Europe/London"));
        assert!(!describe("not a number", None).valid);
    }

    #[test]
    fn sandbox_numbers_are_callable() {
        let info = describe("+15005550006", None);
        assert!(info.valid && info.callable && info.sandbox, "{info:?}");
        assert_eq!(sandbox("+15005550001"), Some(crate::simulation::Sandbox::NoAnswer));
        assert_eq!(sandbox("+15005550002"), Some(crate::simulation::Sandbox::Busy));
        assert_eq!(sandbox("+14155552671"), None);
    }

    #[test]
    fn extensions_prefixes_and_trailing_text_are_refused_not_cut() {
        for input in ["+1 415 555 2671 ext. 12", "+14155552671x12", "+14155552671;ext=12", "tel:+14155552671", "+14155552671\0", "+1415555267#", "+1 (415) 555-2671 call me"] {
            let info = describe(input, None);
            assert!(!info.valid && info.e164.is_none(), "{input:?} must be refused: {info:?}");
        }
        assert!(describe("+1 (415) 555-2671", None).valid);
        assert!(!describe(&"1".repeat(40), None).valid);
    }
}
