//! `frappe.client.get_list` over in-memory documents: `fields`, `filters` (list or dict
//! form), `order_by`, `limit_start`, `limit_page_length` (0 = all, default 20).
//! Comparisons follow MariaDB's case-insensitive collation.

use std::cmp::Ordering;

use serde_json::Value;

use super::params::Params;
use super::reply::{obj, ApiVersion, FrappeError};
use super::state::{doc_get, Doc};

pub(super) struct ListQuery {
    pub fields: Vec<String>,
    filters: Vec<Filter>,
    order_by: (String, bool),
    start: usize,
    page_length: usize,
}

struct Filter {
    field: String,
    op: String,
    value: Value,
}

impl ListQuery {
    /// Read the query from `form_dict`. v1 takes `limit_page_length` (else `limit`, else 20)
    /// and `limit_start`; v2 takes `limit` and `start`.
    pub fn parse(params: &Params, version: ApiVersion) -> Result<ListQuery, FrappeError> {
        let fields = match params.get_json("fields") {
            None => vec!["name".to_string()],
            Some(Ok(Value::Array(items))) => items.iter().map(value_text).collect(),
            Some(_) => return Err(FrappeError::validation("Invalid fields".into())),
        };
        let filters = match params.get_json("filters") {
            None => Vec::new(),
            Some(Ok(value)) => parse_filters(&value)?,
            Some(Err(())) => return Err(FrappeError::validation("Invalid filters".into())),
        };
        let (start_key, length) = match version {
            ApiVersion::V1 => {
                ("limit_start", params.get_str("limit_page_length").or_else(|| params.get_str("limit")))
            }
            ApiVersion::V2 => ("start", params.get_str("limit")),
        };
        Ok(ListQuery {
            fields,
            filters,
            order_by: parse_order_by(params.get_str("order_by").as_deref()),
            start: cint(params.get_str(start_key).as_deref()),
            page_length: length.map_or(20, |l| cint(Some(&l))),
        })
    }

    /// Filter, sort and page the documents.
    pub fn select<'a>(&self, docs: impl IntoIterator<Item = &'a Doc>) -> Vec<&'a Doc> {
        let mut rows: Vec<&Doc> =
            docs.into_iter().filter(|doc| self.filters.iter().all(|f| f.matches(doc))).collect();
        let (field, descending) = &self.order_by;
        rows.sort_by(|a, b| {
            let ord = compare(&doc_get(a, field), &doc_get(b, field));
            if *descending {
                ord.reverse()
            } else {
                ord
            }
        });
        let take = if self.page_length == 0 { usize::MAX } else { self.page_length };
        rows.into_iter().skip(self.start).take(take).collect()
    }

    /// One row as JSON with the requested fields in order; `visible` hides fields the caller
    /// may not read (they are left out, not nulled, as Frappe does).
    pub fn project(&self, doc: &Doc, visible: impl Fn(&str) -> bool) -> String {
        let names: Vec<String> = if self.fields.iter().any(|f| f == "*") {
            doc.iter().map(|(k, _)| k.clone()).collect()
        } else {
            self.fields.iter().map(|f| bare_field(f)).collect()
        };
        let encoded: Vec<(String, String)> = names
            .into_iter()
            .filter(|name| visible(name))
            .map(|name| {
                let value = doc_get(doc, &name).to_string();
                (name, value)
            })
            .collect();
        obj(encoded.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }
}

fn parse_filters(value: &Value) -> Result<Vec<Filter>, FrappeError> {
    let invalid = || FrappeError::validation("Invalid filters".into());
    match value {
        // {"enabled": 1, "api_key": ["is", "set"]}
        Value::Object(map) => Ok(map
            .iter()
            .map(|(field, v)| match v {
                Value::Array(pair) if pair.len() == 2 => Filter {
                    field: field.clone(),
                    op: value_text(&pair[0]).to_lowercase(),
                    value: pair[1].clone(),
                },
                other => Filter { field: field.clone(), op: "=".into(), value: other.clone() },
            })
            .collect()),
        // [["api_key", "=", "K"]] or [["User", "api_key", "=", "K"]]
        Value::Array(items) => items
            .iter()
            .map(|item| match item.as_array().map(Vec::as_slice) {
                Some([field, op, v]) | Some([_, field, op, v]) => Ok(Filter {
                    field: value_text(field),
                    op: value_text(op).to_lowercase(),
                    value: v.clone(),
                }),
                _ => Err(invalid()),
            })
            .collect(),
        _ => Err(invalid()),
    }
}

impl Filter {
    fn matches(&self, doc: &Doc) -> bool {
        let actual = doc_get(doc, bare_field(&self.field).as_str());
        let (a, b) = (value_text(&actual), value_text(&self.value));
        match self.op.as_str() {
            "=" => text_eq(&a, &b),
            "!=" => !text_eq(&a, &b),
            ">" => compare(&actual, &self.value) == Ordering::Greater,
            "<" => compare(&actual, &self.value) == Ordering::Less,
            ">=" => compare(&actual, &self.value) != Ordering::Less,
            "<=" => compare(&actual, &self.value) != Ordering::Greater,
            "like" => like(&a, &b),
            "not like" => !like(&a, &b),
            "in" => list_values(&self.value).iter().any(|v| text_eq(&a, v)),
            "not in" => !list_values(&self.value).iter().any(|v| text_eq(&a, v)),
            "is" if b == "set" => !a.is_empty(),
            "is" if b == "not set" => a.is_empty(),
            _ => false,
        }
    }
}

/// SQL text of a value: NULL as empty, numbers and booleans as integers where whole.
fn value_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => u8::from(*b).to_string(),
        other => other.to_string(),
    }
}

/// utf8mb4_unicode_ci, roughly: case-insensitive, trailing spaces ignored.
fn text_eq(a: &str, b: &str) -> bool {
    a.trim_end_matches(' ').eq_ignore_ascii_case(b.trim_end_matches(' '))
}

fn compare(a: &Value, b: &Value) -> Ordering {
    let (ta, tb) = (value_text(a), value_text(b));
    match (ta.parse::<f64>(), tb.parse::<f64>()) {
        (Ok(x), Ok(y)) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
        _ => ta.to_lowercase().cmp(&tb.to_lowercase()),
    }
}

fn list_values(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) => items.iter().map(value_text).collect(),
        other => value_text(other).split(',').map(|s| s.trim().to_string()).collect(),
    }
}

/// SQL LIKE with `%` and `_`, case-insensitive.
fn like(text: &str, pattern: &str) -> bool {
    fn go(t: &[char], p: &[char]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some(('%', rest)) => (0..=t.len()).any(|i| go(&t[i..], rest)),
            Some((c, rest)) => t.split_first().is_some_and(|(tc, trest)| {
                (*c == '_' || tc.to_lowercase().eq(c.to_lowercase())) && go(trest, rest)
            }),
        }
    }
    let t: Vec<char> = text.chars().collect();
    let p: Vec<char> = pattern.chars().collect();
    go(&t, &p)
}

/// "`tabUser`.`name`" or "name as n" → "name".
fn bare_field(field: &str) -> String {
    let field = field.split(" as ").next().unwrap_or(field).trim();
    let field = field.rsplit('.').next().unwrap_or(field);
    field.trim_matches('`').to_string()
}

/// `order_by="modified desc"`; default `name asc`, which is the order every transcript shows.
fn parse_order_by(order_by: Option<&str>) -> (String, bool) {
    let first = order_by.and_then(|o| o.split(',').next()).map(str::trim).filter(|o| !o.is_empty());
    let Some(clause) = first else {
        return ("name".into(), false);
    };
    let mut words = clause.split_whitespace();
    let field = bare_field(words.next().unwrap_or("name"));
    let descending = words.next().is_some_and(|d| d.eq_ignore_ascii_case("desc"));
    (field, descending)
}

/// Python `cint`: leading integer or 0.
fn cint(s: Option<&str>) -> usize {
    s.and_then(|s| s.trim().parse::<f64>().ok()).map_or(0, |n| n.max(0.0) as usize)
}
