//! Reads the recorded Frappe v15 transcripts: the `# request:` curl command becomes method,
//! path, query, headers and body; the capture becomes status, headers and body. Used to
//! replay them against the fake (and, if a test wants, through the gateway).

use std::path::{Path, PathBuf};

use serde_json::Value;

/// Where transcripts are read from: `$FRAPPE_TRANSCRIPTS` if set, else the copy committed
/// in `tests/transcripts/` (CI's fresh clone has no `../shared`).
pub fn transcripts_dir() -> PathBuf {
    match std::env::var_os("FRAPPE_TRANSCRIPTS") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/transcripts"),
    }
}

/// The shared originals next to the repository, present on developer machines only.
pub fn shared_transcripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/frappe-v15-transcripts")
}

#[derive(Clone, Debug)]
pub struct Transcript {
    /// File stem, e.g. `04a-token-no-colon`.
    pub name: String,
    pub request: CurlRequest,
    pub notes: Vec<String>,
    pub response: RecordedResponse,
}

/// What curl sent.
#[derive(Clone, Debug, Default)]
pub struct CurlRequest {
    pub method: String,
    /// Path as written in the URL (percent-encoding kept).
    pub path: String,
    /// Encoded query string, without `?` (from the URL and `-G --data-urlencode`).
    pub query: String,
    /// Header name and value as given to `-H` (`Name;` gives an empty value).
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
}

impl CurlRequest {
    /// Path plus `?query` when there is one.
    pub fn path_and_query(&self) -> String {
        match self.query.is_empty() {
            true => self.path.clone(),
            false => format!("{}?{}", self.path, self.query),
        }
    }
}

/// What Frappe answered.
#[derive(Clone, Debug)]
pub struct RecordedResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RecordedResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }

    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.body).ok()
    }
}

/// Every `*.txt` transcript in `dir` except README, sorted by name.
pub fn load_all(dir: &Path) -> Vec<Transcript> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read transcripts dir {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path).expect("read transcript");
            let name = path.file_stem().expect("stem").to_string_lossy().into_owned();
            parse(&name, &text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .collect()
}

pub fn parse(name: &str, text: &str) -> Result<Transcript, String> {
    let mut lines = text.lines();
    let first = lines.next().ok_or("empty transcript")?;
    let command = first.strip_prefix("# request: ").ok_or("first line is not `# request:`")?;
    let request = parse_curl(&shell_words(command)?)?;
    let mut notes = Vec::new();
    let mut rest: Vec<&str> = lines.collect();
    while let Some(note) = rest.first().and_then(|l| l.strip_prefix("# note: ")) {
        notes.push(note.to_string());
        rest.remove(0);
    }
    let start = rest.iter().position(|l| l.starts_with("HTTP/")).ok_or("no status line")?;
    let response = parse_response(&rest[start..])?;
    Ok(Transcript { name: name.to_string(), request, notes, response })
}

fn parse_response(lines: &[&str]) -> Result<RecordedResponse, String> {
    let status = lines[0].split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or("bad status line")?;
    let blank = lines.iter().position(|l| l.is_empty()).unwrap_or(lines.len());
    let headers = lines[1..blank]
        .iter()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect();
    let body = lines.get(blank + 1..).unwrap_or(&[]).join("\n");
    Ok(RecordedResponse { status, headers, body: body.trim_end().to_string() })
}

/// POSIX-shell word splitting for the quoting the captures use (single, double, backslash).
fn shell_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => words.extend(word.take()),
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next().ok_or("unterminated single quote")? {
                        '\'' => break,
                        c => w.push(c),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next().ok_or("unterminated double quote")? {
                        '"' => break,
                        '\\' => w.push(chars.next().ok_or("dangling backslash")?),
                        c => w.push(c),
                    }
                }
            }
            '\\' => word.get_or_insert_with(String::new).push(chars.next().ok_or("dangling backslash")?),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

/// The curl options the captures use: -H, -X, -G, --data, --data-urlencode, and the URL.
fn parse_curl(words: &[String]) -> Result<CurlRequest, String> {
    let mut request = CurlRequest::default();
    let (mut method, mut get, mut data): (Option<String>, bool, Vec<String>) = (None, false, vec![]);
    let mut url = None;
    let mut iter = words.iter().skip(1); // "curl"
    while let Some(word) = iter.next() {
        let mut value = || iter.next().cloned().ok_or(format!("{word} needs a value"));
        match word.as_str() {
            "-H" | "--header" => request.headers.push(parse_header(&value()?)),
            "-X" | "--request" => method = Some(value()?),
            "-G" | "--get" => get = true,
            "-d" | "--data" | "--data-raw" => data.push(value()?),
            "--data-urlencode" => data.push(urlencode_data(&value()?)),
            w if w.starts_with("http://") || w.starts_with("https://") => url = Some(w.to_string()),
            w if w.starts_with('-') => {} // -sS, -i: output options
            w => return Err(format!("unexpected curl argument {w:?}")),
        }
    }
    let url = url.ok_or("no URL")?;
    let after_host = url.splitn(4, '/').nth(3).unwrap_or("");
    let (path, query) = after_host.split_once('?').unwrap_or((after_host, ""));
    request.path = format!("/{path}");
    let mut query: Vec<String> = [query.to_string()].into_iter().filter(|q| !q.is_empty()).collect();
    if get {
        query.append(&mut data);
    } else if !data.is_empty() {
        request.body = Some(data.join("&"));
        if !request.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
            let form = "application/x-www-form-urlencoded".to_string();
            request.headers.push(("Content-Type".into(), form));
        }
    }
    request.query = query.join("&");
    let default_method = if request.body.is_some() { "POST" } else { "GET" };
    request.method = method.unwrap_or_else(|| default_method.into());
    Ok(request)
}

/// `-H 'Name: value'` keeps the value as written after the colon (the server trims the
/// leading whitespace); `-H 'Name;'` sends an empty value.
fn parse_header(raw: &str) -> (String, String) {
    if let Some(name) = raw.strip_suffix(';').filter(|n| !n.contains(':')) {
        return (name.to_string(), String::new());
    }
    let (name, value) = raw.split_once(':').unwrap_or((raw, ""));
    (name.to_string(), value.strip_prefix(' ').unwrap_or(value).to_string())
}

/// `--data-urlencode name=content` sends `name=` + content percent-encoded as curl does
/// (everything but ALPHA / DIGIT / `-._~`).
fn urlencode_data(arg: &str) -> String {
    const CURL_ESCAPE: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
    let encode = |s: &str| percent_encoding::utf8_percent_encode(s, CURL_ESCAPE).to_string();
    match arg.split_once('=') {
        Some((name, content)) => format!("{name}={}", encode(content)),
        None => encode(arg),
    }
}
