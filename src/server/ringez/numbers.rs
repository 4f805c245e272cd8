//! Ringez numbers: validation with the rate, and the rate table.

use super::*;

// ── numbers ─────────────────────────────────────────────────────────────────────────────

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidateRequest {
    pub phone_number: String,
    /// Default country for a national number (ISO 3166).
    pub country: Option<String>,
}

/// Emergency numbers: never callable through an agent.
const EMERGENCY: &[&str] = &["911", "112", "999", "000", "100", "101", "102", "108", "110", "119"];

pub async fn validate(State(state): State<AppState>, _caller: RingezCaller, ApiJson(request): ApiJson<ValidateRequest>) -> Result<Json<Value>, ApiError> {
    let country = crate::server::numbers::parse_country(request.country.as_deref())?;
    let digits: String = request.phone_number.chars().filter(|c| c.is_ascii_digit()).collect();
    let is_emergency = EMERGENCY.contains(&digits.as_str());
    let info = with_telephony(describe(&request.phone_number, country), state.can_dial_out());
    let rate = rate_for(&info);
    Ok(Json(json!({
        "valid": info.valid,
        "phone_number": info.e164.clone().unwrap_or(request.phone_number.clone()),
        "country": info.country,
        "country_code": info.country_code.map(|c| format!("+{c}")),
        "national_format": info.national_format,
        "type": info.kind,
        // No carrier database ships with Ringline.
        "carrier": Value::Null,
        "is_callable": info.callable && !is_emergency,
        "is_emergency": is_emergency,
        "is_premium": info.kind.as_deref() == Some("premium_rate"),
        "estimated_rate": { "per_minute": rate, "currency": "USD" },
        "timezone": info.timezone,
        "reason": info.reason,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RatesQuery {
    pub country_code: Option<String>,
    pub currency: Option<String>,
}

fn rate_view(code: &str, name: &str, prefix: Option<&str>, mobile: f64, landline: f64, currency: &str) -> Value {
    json!({
        "country": name,
        "country_code": code,
        "dial_prefix": prefix,
        "rates": {
            "mobile": { "per_minute": in_currency(mobile, currency), "currency": currency },
            "landline": { "per_minute": in_currency(landline, currency), "currency": currency },
        },
    })
}

/// The rate table: one country's rates, or every listed country's (and the rate for others).
pub async fn rates(_caller: RingezCaller, ApiQuery(query): ApiQuery<RatesQuery>) -> Result<Json<Value>, ApiError> {
    let currency = query.currency.unwrap_or_else(|| "USD".into()).to_ascii_uppercase();
    if !matches!(currency.as_str(), "USD" | "INR") {
        return Err(ApiError::bad_request("invalid_query", format!("currency `{}` is not USD or INR", crate::assistant::check::clip(&currency))).with_field("currency"));
    }
    match query.country_code {
        Some(code) => {
            let code = code.to_ascii_uppercase();
            let Some((code, name, prefix, mobile, landline)) = RATES.iter().find(|(c, ..)| *c == code) else {
                if code.len() == 2 && code.parse::<phonenumber::country::Id>().is_ok() {
                    return Ok(Json(rate_view(&code, &code, None, OTHER_RATE, OTHER_RATE, &currency)));
                }
                return Err(ApiError::bad_request("invalid_query", format!("country_code `{}` is not an ISO 3166 code such as US, IN or GB", crate::assistant::check::clip(&code))).with_field("country_code"));
            };
            Ok(Json(rate_view(code, name, Some(prefix), *mobile, *landline, &currency)))
        }
        None => Ok(Json(json!({
            "countries": RATES.iter().map(|(code, name, prefix, m, l)| rate_view(code, name, Some(prefix), *m, *l, &currency)).collect::<Vec<_>>(),
            "other_countries": { "per_minute": in_currency(OTHER_RATE, &currency), "currency": currency },
        }))),
    }
}
