//! The gateway's reading of a form body (`frappe_request::form::{body_kind, fields}`: its ports
//! of werkzeug's multipart decoder, `parse_options_header` and `parse_qsl`) against werkzeug
//! 3.0.6's own (`MultiPartParser`, `parse_qsl`), on a few thousand bodies generated from the quirks where two parsers are
//! likely to part ways: LF- or CR-only line endings, transport padding after a boundary,
//! boundaries in the preamble, no closing boundary, data after it, parts with no blank line,
//! odd header spellings, obs-folds, repeated `Content-Disposition`, part charsets and BOMs,
//! several `cmd` parts, `cmd` in both the query and the body, percent-encoded names, `;`, a
//! bare `sid`, quoted boundaries, upper-case mimetypes, and a few JSON bodies.
//!
//! Every case is judged by `body_kind` + `fields` here and, in one `python3` process, by a
//! werkzeug `Request` built from a WSGI environ and `make_form_dict` imported from
//! `tests/differential/frappe_dispatch.py` (Frappe 15's, rebuilt). A refusal (`Err`) is always
//! acceptable; an `Ok` must name the same `cmd` (absent when falsy), the same presence of a
//! `sid` key and the same `run_method` (absent when falsy) as Frappe would see.
//!
//! `FORM_DIFF_ALL=1` prints every disagreement instead of the first 20.

use frappe_gateway::frappe_request::form::{body_kind, fields, FormFields};
use serde_json::{json, Value};

const INSTALL_HINT: &str = "python3 -m pip install -r tests/differential/requirements.txt";
const SHOWN: usize = 20;

/// One request as both sides see it.
struct Case {
    family: &'static str,
    content_type: Option<String>,
    query: Option<String>,
    body: Vec<u8>,
}

/// xorshift64, fixed seed: the same cases on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T: ?Sized>(&mut self, items: &'a [&'a T]) -> &'a T {
        items[self.below(items.len())]
    }

    /// The first item (the ordinary spelling) unless a quirk is drawn (`percent` of the time).
    fn usual<'a, T: ?Sized>(&mut self, percent: u64, items: &'a [&'a T]) -> &'a T {
        if self.chance(percent) {
            self.pick(&items[1..])
        } else {
            items[0]
        }
    }
}

// ----- multipart -------------------------------------------------------------------------

/// (the `boundary` parameter as written in Content-Type, the boundary itself)
const BOUNDARIES: &[(&str, &str)] = &[
    ("XyZ", "XyZ"),
    ("----WebKitFormBoundary7MA4YWxkTrZu0gW", "----WebKitFormBoundary7MA4YWxkTrZu0gW"),
    ("\"a b\"", "a b"),
    ("\"q;=x\"", "q;=x"),
    ("ab", "ab"),
    ("'x'", "'x'"),
    ("1.2+3", "1.2+3"),
    ("\"--\"", "--"),
];

/// `{b}` is the boundary parameter as written.
const MULTIPART_TYPES: &[&str] = &[
    "multipart/form-data; boundary={b}",
    "multipart/form-data;boundary={b}",
    "Multipart/Form-Data; BOUNDARY={b}",
    "MULTIPART/FORM-DATA ; boundary={b} ; charset=utf-8",
    "multipart/form-data; charset=UTF-8; boundary={b}",
    " multipart/form-data\t; boundary={b}",
    "multipart/form-data; boundary=zzz; boundary={b}",
    "multipart/form-data; boundary={b}; boundary=zzz",
    "multipart/form-data; foo; boundary={b}",
    "multipart/mixed; boundary={b}",
    "multipart/form-data; boundary*={b}",
];

/// Content-Disposition values.
const DISPOSITIONS: &[&str] = &[
    "form-data; name=\"cmd\"",
    "form-data; name=cmd",
    "form-data;name=cmd",
    "form-data; NAME=cmd",
    "form-data; name=\"sid\"",
    "form-data; name=sid",
    "form-data; name=\"run_method\"",
    "form-data; name=\"x\"",
    "form-data; name=\"a\"",
    "form-data",
    "form-data; name=\"\"",
    "form-data; name*=UTF-8''%63md",
    "form-data; name*0=c; name*1=md",
    "form-data; name=\"cmd\"; filename=\"f.txt\"",
    "form-data; name=\"f\"; filename=\"cmd\"",
    "form-data; name = cmd",
    "form-data; name=\"cmd\" ",
    "attachment; name=cmd",
    "form-data; name=\"c\\md\"",
    "form-data; name=cmd; name=x",
    "form-data; name=x; name=cmd",
    "form-data; xname=cmd; name=a",
    "form-data; filename=a; name=sid",
];

/// How the Content-Disposition header line starts.
const DISPOSITION_NAMES: &[&str] = &[
    "Content-Disposition: ",
    "content-disposition:",
    "CONTENT-DISPOSITION:  ",
    "Content-Disposition:\t",
    "Content-Disposition :",
    " Content-Disposition: ",
    "Content-Disposition:\r\n ",
    "Content-Disposition:\n\t",
];

/// Other part header lines; `{cd}` is another Content-Disposition header.
const EXTRA_HEADERS: &[&str] = &[
    "Content-Type: text/plain",
    "Content-Type: text/plain; charset=utf-8",
    "content-type: text/plain; charset=ISO-8859-1",
    "Content-Type: text/plain; charset=us-ascii",
    "Content-Type: text/plain; charset=utf-16le",
    "Content-Type: text/plain; charset=koi8-r",
    "Content-Type: text/plain; charset=windows-1252",
    "Content-Type: text/plain; charset=\"latin1\"",
    "X-A: b",
    "X-Fold: a\r\n b",
    "X-Fold: a\n\tb",
    "Content-Disposition: form-data; name=\"cmd\"",
    "Content-Disposition: form-data; name=\"x\"",
    "content-disposition: form-data; name=sid",
    "NoColonLine",
    "Content-Length: 3",
    "X-Empty:",
];

/// The end of the last header line plus the blank line.
const HEADER_ENDS: &[&str] = &["\r\n\r\n", "\n\n", "\r\n\n", "\n\r\n", "\r\r", "\r\n", "\r\n \r\n"];

/// Line ending between two header lines.
const HEADER_EOLS: &[&str] = &["\r\n", "\n", "\r"];

/// Part values; `{B}` is the boundary.
const VALUES: &[&[u8]] = &[
    b"frappe.client.get_list",
    b"frappe.client.get_password",
    b"",
    b"a.b",
    b"x\r\ny",
    b"x\ny",
    b"\xc3\xa9",
    b"\x80\x81",
    b"\xe9t\xe9",
    b"\xef\xbb\xbfa.b",
    b"\xff\xfea\x00.\x00b\x00",
    b"a%FF",
    b"--{B}",
    b"x\r\n--{B}x",
    b"a\n--{B}\r\nContent-Disposition: form-data; name=\"cmd\"\r\n\r\nsmuggled.lf",
    b"a\r--{B}\r\nContent-Disposition: form-data; name=\"cmd\"\r\n\r\nsmuggled.cr",
    b"  padded  ",
];

/// What separates a value from the next boundary.
const DELIMITERS: &[&str] = &["\r\n", "\n", "\r", "", "\r\n\r\n", "\n\r\n"];

/// What follows `--boundary` on an opening or separating boundary line.
const BOUNDARY_SUFFIXES: &[&str] = &["\r\n", "\n", " \r\n", "\t \r\n", "\x0c\r\n", "\r", "x\r\n", "\x0b\r\n"];

/// Before the first boundary.
const PREAMBLES: &[&str] = &[
    "",
    "preamble\r\n",
    "\r\n",
    "--{B}x\r\n",
    "junk --{B}\r\n",
    "--{B}--\r\n",
    "\n",
    "--{B}\n",
    "x--{B}-\r\n",
];

/// After the last part's delimiter: `{B}` is the boundary.
const ENDINGS: &[&str] = &[
    "--{B}--\r\n",
    "--{B}--",
    "--{B}--epilogue",
    "--{B}--\r\n--{B}\r\nContent-Disposition: form-data; name=\"cmd\"\r\n\r\nafter.close\r\n--{B}--\r\n",
    "--{B}--\r\nContent-Disposition: form-data; name=\"cmd\"\r\n\r\nepilogue.cmd\r\n",
    "",
    "--{B}\r\n",
    "--{B}-- \r\n",
    "--{B}",
    "--{B}-",
    "--{B}--\t\r\n\r\n",
    "--{B}\r\n\r\n",
];

const QUERIES: &[&str] = &[
    "cmd=q.query",
    "cmd=",
    "c%6Dd=q.encoded",
    "sid=1",
    "run_method=submit",
    "cmd=a%FF",
    "a=1;cmd=q.semi",
    "cmd=q.one&cmd=q.two",
    "sid",
    "cmd=a+b%2Ec",
    "cmd=%C3%A9",
];

fn subst(template: &[u8], boundary: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(template.len());
    let mut rest = template;
    while !rest.is_empty() {
        if rest.starts_with(b"{B}") {
            out.extend_from_slice(boundary.as_bytes());
            rest = &rest[3..];
        } else {
            out.push(rest[0]);
            rest = &rest[1..];
        }
    }
    out
}

fn query(rng: &mut Rng, percent: u64) -> Option<String> {
    rng.chance(percent).then(|| rng.pick(QUERIES).to_string())
}

fn multipart_part(rng: &mut Rng, boundary: &str, q: u64) -> Vec<u8> {
    let mut headers: Vec<String> = Vec::new();
    // Mostly `cmd`, `sid`, `run_method` and a harmless field.
    let disposition = if rng.chance(60) { rng.pick(&DISPOSITIONS[..9]) } else { rng.pick(DISPOSITIONS) };
    let name = rng.usual(q, DISPOSITION_NAMES);
    headers.push(format!("{name}{disposition}"));
    if rng.chance(q * 2) {
        for _ in 0..1 + rng.below(2) {
            let extra = rng.pick(EXTRA_HEADERS).to_string();
            if rng.chance(50) {
                headers.insert(0, extra);
            } else {
                headers.push(extra);
            }
        }
    }
    let mut part = Vec::new();
    for (i, header) in headers.iter().enumerate() {
        if i > 0 {
            part.extend_from_slice(rng.usual(q / 2, HEADER_EOLS).as_bytes());
        }
        part.extend_from_slice(header.as_bytes());
    }
    part.extend_from_slice(rng.usual(q, HEADER_ENDS).as_bytes());
    let value = if rng.chance(q * 2) { rng.pick(VALUES) } else { rng.pick(&VALUES[..4]) };
    part.extend_from_slice(&subst(value, boundary));
    part
}

fn multipart_case(rng: &mut Rng) -> Case {
    // How often each place takes a quirk instead of the ordinary spelling.
    let q = [4, 10, 20][rng.below(3)];
    let (param, boundary) = BOUNDARIES[if rng.chance(70) { 0 } else { rng.below(BOUNDARIES.len()) }];
    let content_type = rng.usual(q, MULTIPART_TYPES).replace("{b}", param);
    let mut body = subst(rng.usual(q, PREAMBLES).as_bytes(), boundary);
    let parts = 1 + rng.below(3);
    for _ in 0..parts {
        body.extend_from_slice(b"--");
        body.extend_from_slice(boundary.as_bytes());
        body.extend_from_slice(rng.usual(q, BOUNDARY_SUFFIXES).as_bytes());
        body.extend(multipart_part(rng, boundary, q));
        body.extend_from_slice(rng.usual(q, DELIMITERS).as_bytes());
    }
    body.extend(subst(rng.usual(q, ENDINGS).as_bytes(), boundary));
    Case { family: "multipart", content_type: Some(content_type), query: query(rng, 40), body }
}

// ----- urlencoded ------------------------------------------------------------------------

const PAIRS: &[&str] = &[
    "cmd=a.b",
    "cmd=frappe.client.get_list",
    "c%6Dd=x.encoded",
    "%63md=z.encoded",
    "cmd",
    "cmd=",
    "sid",
    "sid=",
    "s%69d=abc",
    "run_method=submit",
    "run%5Fmethod=cancel",
    "run_method=",
    "cm+d=x",
    "cmd+=x",
    "cmd=a+b",
    "cmd=%FF",
    "cmd=a%e9",
    "cmd=\u{e9}",
    "cmd=%C3%A9",
    "=x",
    "",
    "cmd=a=b",
    "cmd%3Dx=y",
    "CMD=x",
    " cmd=x",
    "cmd =x",
    "cmd=%",
    "cmd=%2",
    "cmd=%zz",
    "cmd=%00",
    "cmd%00=x",
    "x=1",
    "a=%26cmd%3Dinner",
    "cmd=a;cmd=b",
    "cmd=x%2",
    "cmd=\u{fffd}",
];

const SEPARATORS: &[&str] = &["&", ";", "&&", "&;", "\n", "\r\n&"];

const URLENCODED_TYPES: &[&str] = &[
    "application/x-www-form-urlencoded",
    "application/x-www-form-urlencoded; charset=UTF-8",
    "Application/X-WWW-Form-Urlencoded",
    "application/x-www-form-urlencoded ;charset=latin1",
    "APPLICATION/X-WWW-FORM-URLENCODED;",
    "application/x-url-encoded",
    "application/x-www-form-urlencoded; boundary=XyZ",
];

fn urlencoded_case(rng: &mut Rng) -> Case {
    let mut body = String::new();
    if rng.chance(10) {
        body.push('&');
    }
    for i in 0..1 + rng.below(5) {
        if i > 0 {
            body.push_str(rng.usual(15, SEPARATORS));
        }
        body.push_str(rng.pick(PAIRS));
    }
    if rng.chance(10) {
        body.push('&');
    }
    let mut body = body.into_bytes();
    if rng.chance(3) {
        body.extend_from_slice(b"&x=\xff");
    }
    let content_type = rng.usual(20, URLENCODED_TYPES).to_string();
    Case { family: "urlencoded", content_type: Some(content_type), query: query(rng, 40), body }
}

// ----- JSON and bodies that are not forms -------------------------------------------------

const JSON_BODIES: &[&str] = &[
    r#"{"cmd":"j.k"}"#,
    r#"{"cmd":""}"#,
    r#"{"cmd":null}"#,
    r#"{"cmd":0}"#,
    r#"{"cmd":false}"#,
    r#"{"cmd":[]}"#,
    r#"{"cmd":1}"#,
    r#"{"sid":"abc"}"#,
    r#"{"sid":null}"#,
    r#"{"sid":""}"#,
    r#"{"run_method":"submit"}"#,
    r#"{"run_method":1}"#,
    r#"{"run_method":""}"#,
    r#"{"run_method":null}"#,
    r#"{"\u0063md":"escaped.key"}"#,
    r#"{"cmd":"a","cmd":"b"}"#,
    r#"{"x":{"cmd":"nested"}}"#,
    r#"[{"cmd":"x"}]"#,
    "1",
    "\"cmd\"",
    "",
    "  ",
    " \t\r\n{\"cmd\":\"ws\"}",
    "\u{feff}{\"cmd\":\"bom\"}",
    r#"{"cmd":"a\u0000b"}"#,
    r#"{"cmd":"\ud800"}"#,
    r#"{"cmd":NaN}"#,
    "{\"cmd\":\"x\"} trailing",
    "cmd=form.in.json",
];

const JSON_TYPES: &[&str] = &[
    "application/json",
    "application/json; charset=utf-8",
    "APPLICATION/JSON",
    "application/vnd.api+json",
    "application/+json",
    "text/json",
    "application/json-patch",
    " application/json ;",
];

const OPAQUE_TYPES: &[Option<&str>] = &[
    None,
    Some(""),
    Some("text/plain"),
    Some("application/octet-stream"),
    Some("multipart/form-data-x; boundary=XyZ"),
    Some("application/x-www-form-urlencoded-x"),
    Some(";application/x-www-form-urlencoded"),
];

fn json_case(rng: &mut Rng) -> Case {
    let content_type = rng.pick(JSON_TYPES).to_string();
    let body = rng.pick(JSON_BODIES).as_bytes().to_vec();
    Case { family: "json", content_type: Some(content_type), query: query(rng, 50), body }
}

fn opaque_case(rng: &mut Rng) -> Case {
    let content_type = OPAQUE_TYPES[rng.below(OPAQUE_TYPES.len())].map(str::to_string);
    let body = if rng.chance(50) {
        b"cmd=body.cmd".to_vec()
    } else {
        b"--XyZ\r\nContent-Disposition: form-data; name=cmd\r\n\r\nbody.cmd\r\n--XyZ--\r\n".to_vec()
    };
    Case { family: "opaque", content_type, query: query(rng, 70), body }
}

// ----- one minimal case per quirk found to matter ----------------------------------------

const MP: &str = "multipart/form-data; boundary=XyZ";

/// (what it shows, Content-Type, query, body): shown first when they differ.
const CURATED: &[(&str, &str, Option<&str>, &[u8])] = &[
    (
        "LF alone before a boundary",
        MP,
        None,
        b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx\n--XyZ\r\n\
          Content-Disposition: form-data; name=\"cmd\"\r\n\r\nsmuggled\r\n--XyZ--\r\n",
    ),
    (
        "CR alone before a boundary",
        MP,
        None,
        b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx\r--XyZ\r\n\
          Content-Disposition: form-data; name=\"cmd\"\r\n\r\nsmuggled\r\n--XyZ--\r\n",
    ),
    (
        "an empty value: the boundary right after the blank line",
        MP,
        None,
        b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n--XyZ\r\n\
          Content-Disposition: form-data; name=\"cmd\"\r\n\r\nsmuggled\r\n--XyZ--\r\n",
    ),
    (
        "headers ended by LF LF",
        MP,
        None,
        b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\n\nx\r\n--XyZ\r\n\
          Content-Disposition: form-data; name=\"cmd\"\r\n\r\nsmuggled\r\n--XyZ--\r\n",
    ),
    (
        "headers ended by CRLF LF",
        MP,
        None,
        b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\nx\r\n--XyZ\r\n\
          Content-Disposition: form-data; name=\"cmd\"\r\n\r\nsmuggled\r\n--XyZ--\r\n",
    ),
    (
        "two Content-Disposition headers in one part",
        MP,
        None,
        b"--XyZ\r\nContent-Disposition: form-data; name=\"cmd\"\r\n\
          Content-Disposition: form-data; name=\"x\"\r\n\r\nsmuggled\r\n--XyZ--\r\n",
    ),
    (
        "werkzeug drops the whole form (a part without Content-Disposition after an LF boundary)",
        MP,
        Some("cmd=q.query"),
        b"--XyZ\r\nContent-Disposition: form-data; name=\"cmd\"\r\n\r\nbody.cmd\r\n--XyZ\r\n\
          Content-Disposition: form-data; name=\"x\"\r\n\r\nv\n--XyZ\r\nX-A: b\r\n\r\nz\r\n--XyZ--\r\n",
    ),
    (
        "part charset utf-16le",
        MP,
        None,
        b"--XyZ\r\nContent-Disposition: form-data; name=\"cmd\"\r\n\
          Content-Type: text/plain; charset=utf-16le\r\n\r\nfrappe.evil\r\n--XyZ--\r\n",
    ),
    (
        "a UTF-16LE BOM in the value",
        MP,
        None,
        b"--XyZ\r\nContent-Disposition: form-data; name=\"cmd\"\r\n\r\n\xff\xfea\x00.\x00b\x00\r\n--XyZ--\r\n",
    ),
    (
        "a UTF-8 BOM in the value",
        MP,
        None,
        b"--XyZ\r\nContent-Disposition: form-data; name=\"cmd\"\r\n\r\n\xef\xbb\xbfa.b\r\n--XyZ--\r\n",
    ),
    (
        "part charset iso-8859-1 (windows-1252 to encoding_rs)",
        MP,
        None,
        b"--XyZ\r\nContent-Disposition: form-data; name=\"cmd\"\r\n\
          Content-Type: text/plain; charset=iso-8859-1\r\n\r\na\x80\r\n--XyZ--\r\n",
    ),
    (
        "part charset us-ascii",
        MP,
        None,
        b"--XyZ\r\nContent-Disposition: form-data; name=\"cmd\"\r\n\
          Content-Type: text/plain; charset=us-ascii\r\n\r\na\xe9\r\n--XyZ--\r\n",
    ),
    (
        "part charset koi8-r",
        MP,
        None,
        b"--XyZ\r\nContent-Disposition: form-data; name=\"cmd\"\r\n\
          Content-Type: text/plain; charset=koi8-r\r\n\r\na\xc3\xa9\r\n--XyZ--\r\n",
    ),
    ("urlencoded: a percent-escape that is not UTF-8", "application/x-www-form-urlencoded", None, b"cmd=a%FF"),
    ("query: a percent-escape that is not UTF-8", "text/plain", Some("cmd=a%FF"), b""),
    ("JSON: a null sid is still a key", "application/json", None, b"{\"sid\":null}"),
    ("JSON: a run_method that is not a string", "application/json", None, b"{\"run_method\":1}"),
];

fn curated_cases() -> impl Iterator<Item = Case> {
    CURATED.iter().map(|(family, content_type, query, body)| Case {
        family,
        content_type: Some(content_type.to_string()),
        query: query.map(str::to_string),
        body: body.to_vec(),
    })
}

fn cases() -> Vec<Case> {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut cases: Vec<Case> = curated_cases().collect();
    cases.extend((0..5000).map(|_| multipart_case(&mut rng)));
    cases.extend((0..1500).map(|_| urlencoded_case(&mut rng)));
    cases.extend((0..400).map(|_| json_case(&mut rng)));
    cases.extend((0..100).map(|_| opaque_case(&mut rng)));
    cases
}

// ----- werkzeug -------------------------------------------------------------------------

/// Reads `[[content_type|null, query|null, body_hex], ...]`, prints one answer per case:
/// `{"cmd", "sid", "run_method"}` (falsy values as null, non-strings as `{"other": repr}`) or
/// `{"error": ...}` when Frappe would not build a `form_dict` at all.
const WERKZEUG: &str = r#"
import io, json, sys
from importlib.metadata import version
sys.path.insert(0, sys.argv[1])
from werkzeug.wrappers import Request
from frappe_dispatch import make_form_dict, read_body

def norm(v):
    if not v:
        return None
    if isinstance(v, str):
        try:
            v.encode("utf-8")
            return v
        except UnicodeEncodeError:  # a lone surrogate, which no Rust string holds
            return {"other": repr(v)}
    return {"other": repr(v)}

out = []
for content_type, query, body_hex in json.load(sys.stdin):
    body = bytes.fromhex(body_hex)
    environ = {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/api/method/ping",
        "QUERY_STRING": query or "",
        "SERVER_NAME": "frappe.test",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "CONTENT_LENGTH": str(len(body)),
    }
    if content_type is not None:
        environ["CONTENT_TYPE"] = content_type
    request = Request(environ)
    try:
        form_dict = make_form_dict(request, read_body(request))
    except Exception as e:
        out.append({"error": f"{type(e).__name__}: {e}"})
        continue
    out.append({
        "cmd": norm(form_dict.get("cmd")),
        "sid": "sid" in form_dict,
        "run_method": norm(form_dict.get("run_method")),
    })
json.dump({"werkzeug": version("werkzeug"), "answers": out}, sys.stdout)
"#;

fn werkzeug_answers(cases: &[Case]) -> Vec<Value> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("differential");
    let input: Vec<Value> = cases
        .iter()
        .map(|c| {
            let hex: String = c.body.iter().map(|b| format!("{b:02x}")).collect();
            json!([c.content_type, c.query, hex])
        })
        .collect();
    let mut python = std::process::Command::new("python3")
        .args(["-W", "ignore", "-c", WERKZEUG])
        .arg(&dir)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run python3 ({e}); install Python 3, then: {INSTALL_HINT}"));
    let stdin = python.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let mut stdin = stdin;
        std::io::Write::write_all(&mut stdin, &serde_json::to_vec(&input).unwrap())
    });
    let output = python.wait_with_output().unwrap();
    let written = writer.join().unwrap();
    assert!(
        output.status.success() && written.is_ok(),
        "werkzeug is needed: run `{INSTALL_HINT}`\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut answer: Value = serde_json::from_slice(&output.stdout).expect("the werkzeug script's JSON");
    assert_eq!(
        answer["werkzeug"], "3.0.6",
        "tests/differential/requirements.txt pins werkzeug: {INSTALL_HINT}"
    );
    let Value::Array(answers) = answer["answers"].take() else { panic!("no answers") };
    assert_eq!(answers.len(), cases.len());
    answers
}

fn ours_as_json(f: &FormFields) -> Value {
    json!({"cmd": f.cmd, "sid": f.sid, "run_method": f.run_method})
}

fn describe(case: &Case) -> String {
    format!(
        "[{}] Content-Type: {:?}, query: {:?}\n    body: b\"{}\"",
        case.family,
        case.content_type,
        case.query,
        case.body.escape_ascii()
    )
}

#[test]
fn form_fields_agree_with_werkzeug_on_generated_bodies() {
    let cases = cases();
    let answers = werkzeug_answers(&cases);
    let (mut ok, mut refused) = (0, 0);
    let mut frappe_refuses = std::collections::BTreeMap::<String, usize>::new();
    let mut differ = Vec::new();
    for (case, theirs) in cases.iter().zip(&answers) {
        let kind = body_kind(case.content_type.as_deref().map(str::as_bytes));
        let ours = kind.and_then(|kind| fields(case.query.as_deref(), &kind, &case.body));
        let Ok(ours) = ours else {
            refused += 1;
            continue;
        };
        ok += 1;
        if let Some(error) = theirs.get("error") {
            // Frappe builds no form_dict (bad JSON, a JSON scalar): it runs nothing.
            *frappe_refuses.entry(error.as_str().unwrap_or_default().to_string()).or_default() += 1;
            continue;
        }
        let ours = ours_as_json(&ours);
        if ours != *theirs {
            differ.push(format!("{}\n    ours:     {ours}\n    werkzeug: {theirs}", describe(case)));
        }
    }
    eprintln!(
        "{} cases: {ok} judged, {refused} refused, {} differ; judged but Frappe builds no form_dict: {frappe_refuses:?}",
        cases.len(),
        differ.len()
    );
    let shown = if std::env::var_os("FORM_DIFF_ALL").is_some() { differ.len() } else { SHOWN };
    assert!(
        differ.is_empty(),
        "{} of {ok} judged cases differ from werkzeug (first {}):\n{}",
        differ.len(),
        shown.min(differ.len()),
        differ.iter().take(shown).cloned().collect::<Vec<_>>().join("\n")
    );
}
