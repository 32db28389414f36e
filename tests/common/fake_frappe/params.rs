//! Frappe's `form_dict`: a JSON request body replaces everything else; otherwise query
//! arguments plus url-encoded form fields.

use serde_json::Value;

pub(super) struct Params(Vec<(String, Value)>);

impl Params {
    /// Build `form_dict` as `frappe.app.make_form_dict` does.
    pub fn from_request(query: Option<&str>, content_type: Option<&str>, body: &[u8]) -> Params {
        let content_type = content_type.unwrap_or("").to_ascii_lowercase();
        if !body.is_empty() && content_type.starts_with("application/json") {
            if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) {
                return Params(map.into_iter().collect());
            }
        }
        let mut pairs: Vec<(String, Value)> =
            parse_urlencoded(query.unwrap_or("")).into_iter().map(|(k, v)| (k, Value::String(v))).collect();
        if content_type.starts_with("application/x-www-form-urlencoded") {
            let form = String::from_utf8_lossy(body);
            pairs.extend(parse_urlencoded(&form).into_iter().map(|(k, v)| (k, Value::String(v))));
        }
        Params(pairs)
    }

    /// The last value given for `name` (later sources override earlier ones).
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// The value as text: strings as they are, other JSON values encoded.
    pub fn get_str(&self, name: &str) -> Option<String> {
        self.get(name).map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }

    /// A JSON-valued parameter (`fields`, `filters`): strings are parsed, other values taken
    /// as they are. `Some(Err(()))` when the string is not JSON.
    pub fn get_json(&self, name: &str) -> Option<Result<Value, ()>> {
        self.get(name).map(|v| match v {
            Value::String(s) => serde_json::from_str(s).map_err(|_| ()),
            other => Ok(other.clone()),
        })
    }
}

/// `a=1&b=x+y%21` → [("a","1"), ("b","x y!")].
pub(super) fn parse_urlencoded(input: &str) -> Vec<(String, String)> {
    input
        .split('&')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            (decode_component(k), decode_component(v))
        })
        .collect()
}

fn decode_component(s: &str) -> String {
    let spaced = s.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced).decode_utf8_lossy().into_owned()
}

/// Percent-decode a path segment (no `+` → space there).
pub(super) fn decode_path_segment(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}
