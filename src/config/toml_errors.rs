//! Turns the TOML deserializer's errors into the validator's terms: the dotted key with array
//! indices (`route[0].pth`, `network.allow[1]`) found from the error's byte span, and type
//! errors worded for operators (`expected an integer, found the string "4096"`).

use std::ops::Range;

use toml_edit::{Array, ImDocument, InlineTable, Item, Table, Value};

/// The dotted key whose key or value covers byte `offset` of `src`, the innermost one when
/// tables nest. `None` when the text does not parse as TOML or nothing covers it.
pub(super) fn key_at(src: &str, offset: usize) -> Option<String> {
    let doc = ImDocument::parse(src).ok()?;
    let mut found = None;
    walk_table(doc.as_table(), "", offset, &mut found);
    found
}

fn covers(span: Option<Range<usize>>, offset: usize) -> bool {
    span.is_some_and(|s| s.start <= offset && offset < s.end.max(s.start + 1))
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn walk_table(table: &Table, prefix: &str, offset: usize, found: &mut Option<String>) {
    for (name, item) in table.iter() {
        let path = join(prefix, name);
        if covers(table.key(name).and_then(|k| k.span()), offset) {
            *found = Some(path.clone());
        }
        walk_item(item, &path, offset, found);
    }
}

fn walk_item(item: &Item, path: &str, offset: usize, found: &mut Option<String>) {
    match item {
        Item::Value(value) => walk_value(value, path, offset, found),
        Item::Table(table) => walk_table(table, path, offset, found),
        Item::ArrayOfTables(tables) => {
            for (i, table) in tables.iter().enumerate() {
                walk_table(table, &format!("{path}[{i}]"), offset, found);
            }
        }
        Item::None => {}
    }
}

fn walk_value(value: &Value, path: &str, offset: usize, found: &mut Option<String>) {
    if covers(value.span(), offset) {
        *found = Some(path.to_string());
    }
    match value {
        Value::Array(array) => walk_array(array, path, offset, found),
        Value::InlineTable(table) => walk_inline(table, path, offset, found),
        _ => {}
    }
}

fn walk_array(array: &Array, path: &str, offset: usize, found: &mut Option<String>) {
    for (i, value) in array.iter().enumerate() {
        walk_value(value, &format!("{path}[{i}]"), offset, found);
    }
}

fn walk_inline(table: &InlineTable, path: &str, offset: usize, found: &mut Option<String>) {
    for (name, value) in table.iter() {
        let path = join(path, name);
        if covers(table.key(name).and_then(|k| k.span()), offset) {
            *found = Some(path.clone());
        }
        walk_value(value, &path, offset, found);
    }
}

/// serde's `invalid type: string "4096", expected u64` as `expected an integer, found the
/// string "4096"`; other messages unchanged.
pub(super) fn humanize(message: &str) -> String {
    let parsed = message
        .strip_prefix("invalid type: ")
        .map(|rest| (rest, false))
        .or_else(|| message.strip_prefix("invalid value: ").map(|rest| (rest, true)));
    let Some((rest, is_value)) = parsed else { return message.to_string() };
    let Some((found, expected)) = rest.rsplit_once(", expected ") else { return message.to_string() };
    let found = describe_found(found);
    // A wrong type says what kind of value belongs there; a right type with a wrong value
    // (-1 for a count) says what range it must be in.
    let unsigned = matches!(expected.trim(), "u8" | "u16" | "u32" | "u64" | "u128" | "usize");
    let expected = match (is_value, unsigned) {
        (true, true) => "a non-negative integer".to_string(),
        _ => describe_expected(expected),
    };
    format!("expected {expected}, found {found}")
}

/// serde's `Unexpected` wording (`string "x"`, `integer \`5\``, `boolean \`true\``,
/// `sequence`, `map`) in plain words.
fn describe_found(found: &str) -> String {
    let unquote = |s: &str| s.trim().trim_matches('`').to_string();
    if let Some(s) = found.strip_prefix("string ") {
        return format!("the string {}", s.trim());
    }
    if let Some(n) = found.strip_prefix("integer ") {
        return format!("the integer {}", unquote(n));
    }
    if let Some(n) = found.strip_prefix("floating point ") {
        return format!("the number {}", unquote(n));
    }
    if let Some(b) = found.strip_prefix("boolean ") {
        return format!("the boolean {}", unquote(b));
    }
    match found.trim() {
        "sequence" => "an array".to_string(),
        "map" => "a table".to_string(),
        other => other.to_string(),
    }
}

/// What serde expected (`u64`, `a boolean`, `a sequence`, `struct RawServer`) in TOML terms.
fn describe_expected(expected: &str) -> String {
    let e = expected.trim();
    match e {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" | "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => {
            "an integer".to_string()
        }
        "f32" | "f64" => "a number".to_string(),
        "a boolean" | "a string" => e.to_string(),
        "a sequence" => "an array".to_string(),
        _ if e.starts_with("struct ") || e == "a map" => "a table".to_string(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(src: &str, needle: &str) -> Option<String> {
        key_at(src, src.find(needle).expect("needle in src"))
    }

    #[test]
    fn key_paths_carry_table_and_array_indices() {
        let src = "[server]\nmax_connections = \"4096\"\n\n[[route]]\npath = \"/a/\"\n[[route]]\npth = \"/b/\"\nallow = [\"10.0.0.0/8\", 7]\n[upstream]\nurl = { x = 1 }\n";
        assert_eq!(key_of(src, "\"4096\"").as_deref(), Some("server.max_connections"));
        assert_eq!(key_of(src, "max_connections").as_deref(), Some("server.max_connections"));
        assert_eq!(key_of(src, "pth").as_deref(), Some("route[1].pth"));
        assert_eq!(key_of(src, "7]").as_deref(), Some("route[1].allow[1]"));
        assert_eq!(key_of(src, "x = 1").as_deref(), Some("upstream.url.x"));
        assert_eq!(key_at("not toml = = =", 3), None);
    }

    #[test]
    fn type_errors_in_plain_words() {
        assert_eq!(
            humanize("invalid type: string \"4096\", expected u64"),
            "expected an integer, found the string \"4096\""
        );
        assert_eq!(
            humanize("invalid type: integer `1`, expected a boolean"),
            "expected a boolean, found the integer 1"
        );
        assert_eq!(
            humanize("invalid type: string \"10.0.0.0/8\", expected a sequence"),
            "expected an array, found the string \"10.0.0.0/8\""
        );
        assert_eq!(
            humanize("invalid value: integer `-1`, expected u64"),
            "expected a non-negative integer, found the integer -1"
        );
        assert_eq!(humanize("unknown field `x`"), "unknown field `x`");
    }
}
