//! The export formats: JSON Lines (one [`StoredEvent`] per line, exactly as verified offline)
//! and CSV (RFC 4180, `detail` as JSON).

use super::StoredEvent;

/// The CSV header line.
pub const CSV_HEADER: &str = "id,org_id,seq,occurred_at,actor_type,actor_id,actor_name,auth_method,action,target_type,target_id,outcome,request_id,client_addr,user_agent,detail,prev_hash,hash\n";

fn csv_field(out: &mut String, value: Option<&str>) {
    let v = value.unwrap_or("");
    if v.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&v.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(v);
    }
}

/// One event as a CSV record (RFC 4180 quoting; `detail` as JSON).
#[must_use]
pub fn csv_record(e: &StoredEvent) -> String {
    let mut out = String::with_capacity(512);
    let id = e.id.to_string();
    let org = e.org_id.map(|o| o.to_string());
    let seq = e.seq.to_string();
    let detail = e.detail.to_string();
    let fields: [Option<&str>; 18] = [
        Some(&id),
        org.as_deref(),
        Some(&seq),
        Some(&e.occurred_at),
        Some(&e.actor_type),
        e.actor_id.as_deref(),
        e.actor_name.as_deref(),
        e.auth_method.as_deref(),
        Some(&e.action),
        e.target_type.as_deref(),
        e.target_id.as_deref(),
        Some(&e.outcome),
        e.request_id.as_deref(),
        e.client_addr.as_deref(),
        e.user_agent.as_deref(),
        Some(&detail),
        Some(&e.prev_hash),
        Some(&e.hash),
    ];
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        csv_field(&mut out, *f);
    }
    out.push('\n');
    out
}

/// Renders a page of events in the export format.
#[must_use]
pub fn render(events: &[StoredEvent], csv: bool) -> String {
    let mut chunk = String::with_capacity(events.len() * 640);
    for e in events {
        if csv {
            chunk.push_str(&csv_record(e));
        } else {
            chunk.push_str(&serde_json::to_string(e).unwrap_or_default());
            chunk.push('\n');
        }
    }
    chunk
}
