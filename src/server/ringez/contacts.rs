//! Ringez contacts: a workspace's address book, labels in their own table, literal search.

use super::*;

// ── contacts ────────────────────────────────────────────────────────────────────────────

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContactRequest {
    pub session_id: Option<String>,
    pub name: Option<String>,
    pub phone_number: Option<String>,
    pub labels: Option<Vec<String>>,
    pub notes: Option<String>,
    pub metadata: Option<Value>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct ContactRecord {
    id: String,
    name: String,
    phone_number: String,
    notes: Option<String>,
    metadata: String,
    created_at: i64,
    updated_at: i64,
}

/// A contact's fields, checked: (name, E.164 number, labels, notes, metadata).
fn check_contact(request: &ContactRequest, existing: Option<&ContactRecord>) -> Result<(String, String, Option<Vec<String>>, Option<String>, String), ApiError> {
    let name = match (&request.name, existing) {
        (Some(name), _) => name.trim().to_string(),
        (None, Some(c)) => c.name.clone(),
        (None, None) => return Err(ApiError::invalid("name", "a contact needs a name")),
    };
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(ApiError::invalid("name", "give 1 to 200 printable characters"));
    }
    let phone = match (&request.phone_number, existing) {
        (Some(raw), _) => crate::server::numbers::valid_number("phone_number", raw, None)?.0,
        (None, Some(c)) => c.phone_number.clone(),
        (None, None) => return Err(ApiError::invalid("phone_number", "a contact needs a phone number in E.164 form, e.g. +14155551234")),
    };
    if let Some(labels) = &request.labels {
        if labels.len() > MAX_LABELS {
            return Err(ApiError::invalid("labels", format!("has {} labels; the most is {MAX_LABELS}", labels.len())));
        }
        for (i, label) in labels.iter().enumerate() {
            if label.trim().is_empty() || label.chars().count() > 50 || label.chars().any(char::is_control) {
                return Err(ApiError::invalid(format!("labels.{i}"), "a label is 1 to 50 printable characters"));
            }
        }
    }
    let notes = match (&request.notes, existing) {
        (Some(notes), _) if notes.chars().count() > 2000 => return Err(ApiError::invalid("notes", "is longer than 2,000 characters")),
        (Some(notes), _) => Some(notes.clone()),
        (None, Some(c)) => c.notes.clone(),
        (None, None) => None,
    };
    let metadata = match (&request.metadata, existing) {
        (Some(value @ Value::Object(_)), _) if value.to_string().len() <= 8192 => value.to_string(),
        (Some(Value::Null), _) | (None, None) => "{}".into(),
        (Some(_), _) => return Err(ApiError::invalid("metadata", "must be a JSON object of at most 8 KB")),
        (None, Some(c)) => c.metadata.clone(),
    };
    let labels = request.labels.as_ref().map(|l| {
        let mut unique: Vec<String> = Vec::new();
        for label in l {
            let label = label.trim().to_string();
            if !unique.contains(&label) {
                unique.push(label);
            }
        }
        unique
    });
    Ok((name, phone, labels, notes, metadata))
}

async fn contact(state: &AppState, workspace_id: &str, id: &str) -> Result<ContactRecord, ApiError> {
    sqlx::query_as::<_, ContactRecord>("SELECT id, name, phone_number, notes, metadata, created_at, updated_at FROM contacts WHERE workspace_id = $1 AND id = $2")
        .bind(workspace_id)
        .bind(id)
        .fetch_optional(&state.store.pool)
        .await
        .map_err(store::StoreError::from)?
        .ok_or_else(|| ApiError::not_found("contact", id))
}

async fn set_labels(state: &AppState, id: &str, labels: &[String]) -> Result<(), ApiError> {
    let mut tx = state.store.pool.begin().await.map_err(store::StoreError::from)?;
    sqlx::query("DELETE FROM contact_labels WHERE contact_id = $1").bind(id).execute(&mut *tx).await.map_err(store::StoreError::from)?;
    for label in labels {
        sqlx::query("INSERT INTO contact_labels (contact_id, label) VALUES ($1, $2)").bind(id).bind(label).execute(&mut *tx).await.map_err(store::StoreError::from)?;
    }
    tx.commit().await.map_err(store::StoreError::from)?;
    Ok(())
}

async fn contact_view(state: &AppState, workspace_id: &str, c: &ContactRecord) -> Result<Value, ApiError> {
    let labels: Vec<String> = sqlx::query_scalar("SELECT label FROM contact_labels WHERE contact_id = $1 ORDER BY label")
        .bind(&c.id)
        .fetch_all(&state.store.pool)
        .await
        .map_err(store::StoreError::from)?;
    let (count, last): (i64, Option<i64>) = sqlx::query_as("SELECT COUNT(*), MAX(created_at) FROM calls WHERE workspace_id = $1 AND to_number = $2")
        .bind(workspace_id)
        .bind(&c.phone_number)
        .fetch_one(&state.store.pool)
        .await
        .map_err(store::StoreError::from)?;
    Ok(json!({
        "contact_id": c.id,
        "name": c.name,
        "phone_number": c.phone_number,
        "labels": labels,
        "notes": c.notes,
        "metadata": serde_json::from_str::<Value>(&c.metadata).unwrap_or(Value::Null),
        "last_called": last.map(rfc3339),
        "call_count": count,
        "created_at": rfc3339(c.created_at),
        "updated_at": rfc3339(c.updated_at),
    }))
}

pub async fn add_contact(State(state): State<AppState>, caller: RingezCaller, ApiJson(request): ApiJson<ContactRequest>) -> Result<impl IntoResponse, ApiError> {
    caller.session_named(&state, request.session_id.as_deref()).await?;
    let (name, phone, labels, notes, metadata) = check_contact(&request, None)?;
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM contacts WHERE workspace_id = $1").bind(&caller.auth.workspace_id).fetch_one(&state.store.pool).await.map_err(store::StoreError::from)?;
    if count >= MAX_CONTACTS {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "contact_limit", format!("this workspace has {MAX_CONTACTS} contacts, its limit; delete some first")));
    }
    let now = store::now_ms();
    let id = store::new_id("cnt");
    sqlx::query("INSERT INTO contacts (id, workspace_id, name, phone_number, notes, metadata, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7)")
        .bind(&id)
        .bind(&caller.auth.workspace_id)
        .bind(&name)
        .bind(&phone)
        .bind(&notes)
        .bind(&metadata)
        .bind(now)
        .execute(&state.store.pool)
        .await
        .map_err(store::StoreError::from)?;
    set_labels(&state, &id, &labels.unwrap_or_default()).await?;
    Ok((StatusCode::CREATED, Json(json!({ "contact_id": id, "name": name, "phone_number": phone, "created_at": rfc3339(now) }))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContactQuery {
    pub session_id: Option<String>,
    /// Part of a name or a number.
    pub search: Option<String>,
    pub label: Option<String>,
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

/// `%` and `_` taken literally in a LIKE pattern.
fn like_escaped(text: &str) -> String {
    text.chars().fold(String::new(), |mut out, c| {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
        out
    })
}

pub async fn list_contacts(State(state): State<AppState>, caller: RingezCaller, ApiQuery(query): ApiQuery<ContactQuery>) -> Result<Json<Value>, ApiError> {
    caller.session_named(&state, query.session_id.as_deref()).await?;
    let (limit, offset) = crate::server::assistants::Page { limit: query.limit, offset: query.offset }.resolve()?;
    let search = query.search.as_deref().map(str::trim).filter(|s| !s.is_empty());
    if search.is_some_and(|s| s.chars().count() > 100) {
        return Err(ApiError::bad_request("invalid_query", "search is longer than 100 characters").with_field("search"));
    }
    let pattern = format!("%{}%", like_escaped(&search.unwrap_or("").to_lowercase()));
    let digits: String = search.unwrap_or("").chars().filter(|c| c.is_ascii_digit()).collect();
    let number_pattern = if digits.is_empty() { String::new() } else { format!("%{digits}%") };
    let where_clause = "workspace_id = $1 AND (LOWER(name) LIKE $2 ESCAPE '\\' OR ($3 <> '' AND phone_number LIKE $3)) \
                        AND ($4 = '' OR EXISTS (SELECT 1 FROM contact_labels l WHERE l.contact_id = contacts.id AND l.label = $4))";
    let label = query.label.unwrap_or_default();
    let rows = sqlx::query_as::<_, ContactRecord>(&format!("SELECT id, name, phone_number, notes, metadata, created_at, updated_at FROM contacts WHERE {where_clause} ORDER BY name, id LIMIT $5 OFFSET $6"))
        .bind(&caller.auth.workspace_id)
        .bind(&pattern)
        .bind(&number_pattern)
        .bind(&label)
        .bind(limit)
        .bind(offset)
        .fetch_all(&state.store.pool)
        .await
        .map_err(store::StoreError::from)?;
    let total: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM contacts WHERE {where_clause}"))
        .bind(&caller.auth.workspace_id)
        .bind(&pattern)
        .bind(&number_pattern)
        .bind(&label)
        .fetch_one(&state.store.pool)
        .await
        .map_err(store::StoreError::from)?;
    let mut contacts = Vec::with_capacity(rows.len());
    for row in &rows {
        contacts.push(contact_view(&state, &caller.auth.workspace_id, row).await?);
    }
    Ok(Json(json!({ "contacts": contacts, "total": total })))
}

pub async fn read_contact(State(state): State<AppState>, caller: RingezCaller, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let c = contact(&state, &caller.auth.workspace_id, &id).await?;
    Ok(Json(contact_view(&state, &caller.auth.workspace_id, &c).await?))
}

/// Changes the fields given (the others stay); `labels` replaces the list.
pub async fn update_contact(State(state): State<AppState>, caller: RingezCaller, Path(id): Path<String>, ApiJson(request): ApiJson<ContactRequest>) -> Result<Json<Value>, ApiError> {
    let existing = contact(&state, &caller.auth.workspace_id, &id).await?;
    let (name, phone, labels, notes, metadata) = check_contact(&request, Some(&existing))?;
    sqlx::query("UPDATE contacts SET name = $1, phone_number = $2, notes = $3, metadata = $4, updated_at = $5 WHERE workspace_id = $6 AND id = $7")
        .bind(&name)
        .bind(&phone)
        .bind(&notes)
        .bind(&metadata)
        .bind(store::now_ms())
        .bind(&caller.auth.workspace_id)
        .bind(&id)
        .execute(&state.store.pool)
        .await
        .map_err(store::StoreError::from)?;
    if let Some(labels) = labels {
        set_labels(&state, &id, &labels).await?;
    }
    let c = contact(&state, &caller.auth.workspace_id, &id).await?;
    Ok(Json(contact_view(&state, &caller.auth.workspace_id, &c).await?))
}

pub async fn remove_contact(State(state): State<AppState>, caller: RingezCaller, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    contact(&state, &caller.auth.workspace_id, &id).await?;
    set_labels(&state, &id, &[]).await?;
    sqlx::query("DELETE FROM contacts WHERE workspace_id = $1 AND id = $2").bind(&caller.auth.workspace_id).bind(&id).execute(&state.store.pool).await.map_err(store::StoreError::from)?;
    Ok(Json(json!({ "success": true, "contact_id": id })))
}
