//! Issue 9, acceptance 1: after a scripted mix of allowed, denied, rate-limited and
//! failed-upstream requests (plus a failed TLS handshake and two webhooks), `/metrics` parses
//! as OpenMetrics text with a strict parser and every counter equals what the test sent.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::*;

const USER: &str = "metrics.user@example.com";
const KEY: &str = "0a1b2c3d4e5f6a7";
const SECRET: &str = "9f8e7d6c5b4a3b2";
const SYNC_USER: &str = "gateway-sync@example.com";
const SYNC_KEY: &str = "5e5e5e5e5e5e5e6";
const SYNC_SECRET: &str = "7a7a7a7a7a7a7a8";
const WEBHOOK_SECRET: &str = "whsec-metrics-test";
const WAIT: Duration = Duration::from_secs(15);

fn routes() -> String {
    format!(
        "[[route]]\npath = \"/api/\"\nauth = \"token\"\n\n\
         [[route]]\npath = \"/api/method/frappe.client.get_password\"\nauth = \"deny\"\n\n\
         [[route]]\npath = \"/api/method/ping\"\nauth = \"public\"\nper_ip = \"2/min\"\n\n\
         [[route]]\npath = \"/down/\"\nauth = \"public\"\nupstream = \"http://127.0.0.1:{}\"\n",
        common::refused_port()
    )
}

// ----- a strict OpenMetrics text parser ----------------------------------------------------

/// One series: metric name and its labels, sorted.
type Series = (String, BTreeMap<String, String>);

#[derive(Debug, Default)]
struct Exposition {
    types: BTreeMap<String, String>,
    samples: BTreeMap<Series, f64>,
}

impl Exposition {
    /// The value of `name{labels}` (labels given must be all the series has).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.samples.get(&(name.to_string(), labels)).copied()
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or_else(|| panic!("no series {name}{labels:?} in the exposition"))
    }

    /// Every series of `name`, as (labels, value).
    fn series(&self, name: &str) -> Vec<(&BTreeMap<String, String>, f64)> {
        self.samples.iter().filter(|((n, _), _)| n == name).map(|((_, l), v)| (l, *v)).collect()
    }
}

/// Parses the OpenMetrics text format strictly: every sample belongs to a family declared by
/// `# TYPE` before it, with the suffixes its type allows; names and label names are valid;
/// label values are quoted with only `\\`, `\"` and `\n` escapes; no series repeats; histogram
/// buckets are cumulative and end at `+Inf` equal to `_count`; `# EOF` ends the text.
fn parse(text: &str) -> Result<Exposition, String> {
    let mut out = Exposition::default();
    let mut helped = BTreeMap::new();
    let mut saw_eof = false;
    for (i, line) in text.lines().enumerate() {
        let at = |msg: &str| format!("line {}: {msg}: {line:?}", i + 1);
        if saw_eof {
            return Err(at("text after # EOF"));
        }
        if line == "# EOF" {
            saw_eof = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name, arg) = (parts.next(), parts.next(), parts.next());
            let (Some(kind), Some(name)) = (kind, name) else { return Err(at("bad comment")) };
            if !valid_name(name) {
                return Err(at("bad metric name"));
            }
            match kind {
                "TYPE" => {
                    let ty = arg.ok_or_else(|| at("TYPE without a type"))?;
                    if ![
                        "counter",
                        "gauge",
                        "histogram",
                        "info",
                        "stateset",
                        "unknown",
                        "summary",
                        "gaugehistogram",
                    ]
                    .contains(&ty)
                    {
                        return Err(at("unknown type"));
                    }
                    if out.types.insert(name.to_string(), ty.to_string()).is_some() {
                        return Err(at("family declared twice"));
                    }
                }
                "HELP" => {
                    helped.insert(name.to_string(), arg.unwrap_or_default().to_string());
                }
                "UNIT" => {}
                _ => return Err(at("unknown comment")),
            }
            continue;
        }
        let (name, labels, value) = sample(line).map_err(|e| at(&e))?;
        let family = family_of(&out.types, &name).ok_or_else(|| at("sample of no declared family"))?;
        let allowed: &[&str] = match out.types[&family].as_str() {
            "counter" => &["_total", "_created"],
            "gauge" => &[""],
            "histogram" => &["_bucket", "_sum", "_count", "_created"],
            "info" => &["_info"],
            _ => &[""],
        };
        if !allowed.iter().any(|s| name == format!("{family}{s}")) {
            return Err(at("suffix not allowed for the family's type"));
        }
        if out.types[&family] == "counter" && value < 0.0 {
            return Err(at("negative counter"));
        }
        if out.samples.insert((name, labels), value).is_some() {
            return Err(at("series repeated"));
        }
    }
    if !saw_eof {
        return Err("no # EOF".into());
    }
    for (family, ty) in &out.types {
        if ty == "histogram" {
            check_histogram(&out, family)?;
        }
    }
    Ok(out)
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn family_of(types: &BTreeMap<String, String>, name: &str) -> Option<String> {
    if types.contains_key(name) {
        return Some(name.to_string());
    }
    ["_total", "_created", "_bucket", "_sum", "_count", "_info"]
        .iter()
        .filter_map(|s| name.strip_suffix(s))
        .find(|f| types.contains_key(*f))
        .map(str::to_string)
}

/// `name{a="x",b="y"} value` (no timestamps or exemplars are expected from the gateway).
fn sample(line: &str) -> Result<(String, BTreeMap<String, String>, f64), String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !valid_name(name) {
        return Err("bad metric name".into());
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        loop {
            let (start, c) = chars.next().ok_or("unterminated labels")?;
            if c == '}' && labels.is_empty() {
                rest = &inner[start + 1..];
                break;
            }
            let eq = inner[start..].find('=').ok_or("label without =")? + start;
            let key = &inner[start..eq];
            if !valid_name(key) || key.contains(':') {
                return Err(format!("bad label name {key:?}"));
            }
            while chars.peek().is_some_and(|(i, _)| *i <= eq) {
                chars.next();
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err("label value not quoted".into());
            }
            let mut value = String::new();
            loop {
                match chars.next().ok_or("unterminated label value")? {
                    (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        'n' => value.push('\n'),
                        other => return Err(format!("bad escape \\{other}")),
                    },
                    (_, '"') => break,
                    (_, c) => value.push(c),
                }
            }
            if labels.insert(key.to_string(), value).is_some() {
                return Err(format!("label {key} repeated"));
            }
            match chars.next().ok_or("unterminated labels")? {
                (_, ',') => continue,
                (i, '}') => {
                    rest = &inner[i + 1..];
                    break;
                }
                (_, c) => return Err(format!("unexpected {c:?} after a label")),
            }
        }
    }
    let value = rest.strip_prefix(' ').ok_or("no space before the value")?;
    if value.contains(' ') {
        return Err("timestamps or exemplars are not expected".into());
    }
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse::<f64>().map_err(|_| format!("bad value {v:?}"))?,
    };
    Ok((name.to_string(), labels, value))
}

fn check_histogram(out: &Exposition, family: &str) -> Result<(), String> {
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for (labels, v) in out.series(&format!("{family}_bucket")) {
        let le = labels.get("le").ok_or(format!("{family}: bucket without le"))?;
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().map_err(|_| format!("{family}: le {le}"))?
        };
        buckets.push((le, v));
    }
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    if buckets.windows(2).any(|w| w[1].1 < w[0].1) {
        return Err(format!("{family}: buckets are not cumulative"));
    }
    let last = buckets.last().ok_or(format!("{family}: no buckets"))?;
    let count = out.get(&format!("{family}_count"), &[]).ok_or(format!("{family}: no _count"))?;
    if last.0 != f64::INFINITY || last.1 != count {
        return Err(format!("{family}: +Inf bucket {last:?} != count {count}"));
    }
    Ok(())
}

#[test]
fn the_parser_refuses_what_it_should() {
    let ok = "# TYPE a counter\na_total{x=\"1\\\"\"} 2\n# EOF\n";
    assert_eq!(parse(ok).unwrap().value("a_total", &[("x", "1\"")]), 2.0);
    for bad in [
        "a_total 1\n# EOF\n",
        "# TYPE a counter\na 1\n# EOF\n",
        "# TYPE a counter\na_total 1\n",
        "# TYPE a counter\na_total{x=1} 1\n# EOF\n",
        "# TYPE a counter\na_total 1\na_total 1\n# EOF\n",
        "# TYPE a gauge\na x\n# EOF\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\nh_sum 0\n# EOF\n",
    ] {
        assert!(parse(bad).is_err(), "accepted: {bad:?}");
    }
}

// ----- the scripted mix --------------------------------------------------------------------

fn sign(body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

async fn scrape(gateway: &Gateway) -> (String, String) {
    let response = http_client().get(format!("{}/metrics", gateway.admin_url())).send().await.expect("admin");
    let content_type = response.headers()["content-type"].to_str().unwrap().to_string();
    (content_type, response.text().await.expect("metrics text"))
}

/// Scrapes until `done` holds for the parsed exposition (request counters are written when
/// a response is complete, a moment after the client has read it).
async fn scrape_until(gateway: &Gateway, done: impl Fn(&Exposition) -> bool) -> Exposition {
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, text) = scrape(gateway).await;
        let parsed = parse(&text).unwrap_or_else(|e| panic!("/metrics does not parse: {e}\n{text}"));
        if done(&parsed) {
            return parsed;
        }
        assert!(Instant::now() < deadline, "metrics never reached the expected state:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn requests_total(m: &Exposition) -> f64 {
    m.series("gateway_requests_total").iter().map(|(_, v)| v).sum()
}

#[tokio::test]
async fn counters_equal_the_scripted_traffic() {
    let started = SystemTime::now();
    let frappe = FakeFrappe::start().await;
    frappe.add_user(USER, KEY, SECRET);
    frappe.add_sync_user(SYNC_USER, SYNC_KEY, SYNC_SECRET);
    let certs = Certs::generate();
    let config = ConfigBuilder::new(&frappe.url()).tls(&certs).extra(&routes()).build();
    let sync_token = format!("{SYNC_KEY}:{SYNC_SECRET}");
    let envs = [("GATEWAY_SYNC_TOKEN", sync_token.as_str()), ("GATEWAY_WEBHOOK_SECRET", WEBHOOK_SECRET)];
    let gateway = Gateway::start(&config, &envs).await;
    // Keys verified before the first sync are verified again after it: count from a synced start.
    gateway.wait_ready(std::time::Duration::from_secs(10)).await;
    let client = https_client(&certs.ca_pem, HttpVersion::Http1Only);
    let base = gateway.base_url();
    let token = token_header(KEY, SECRET);

    // Before any traffic: every labelled series exists at zero and the text parses.
    let (content_type, text) = scrape(&gateway).await;
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    let before = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(before.value("gateway_requests_total", &[("decision", "allow"), ("status", "2xx")]), 0.0);
    assert_eq!(
        before.value("gateway_route_requests_total", &[("route", "/down/"), ("method", "write")]),
        0.0
    );
    assert_eq!(before.value("gateway_config_reloads_total", &[("result", "error")]), 0.0);

    // (method, path, authorization, expected status)
    let script: Vec<(&str, &str, Option<String>, u16)> = vec![
        // allowed: one verification, then cache hits
        ("GET", "/api/resource/ToDo", Some(token.clone()), 200),
        ("GET", "/api/resource/ToDo", Some(token.clone()), 200),
        ("GET", "/api/resource/ToDo", Some(token.clone()), 200),
        ("POST", "/api/resource/ToDo", Some(token.clone()), 200),
        // denied: a deny route, a wrong secret, no credentials
        ("GET", "/api/method/frappe.client.get_password", None, 403),
        ("GET", "/api/method/frappe.client.get_password", None, 403),
        ("GET", "/api/resource/ToDo", Some(token_header(KEY, "wrongwrongwrong")), 401),
        ("GET", "/api/resource/ToDo", None, 401),
        // rate-limited: per_ip 2/min on the ping route
        ("GET", "/api/method/ping", None, 200),
        ("GET", "/api/method/ping", None, 200),
        ("GET", "/api/method/ping", None, 429),
        // failed upstream: connection refused
        ("GET", "/down/a", None, 502),
        ("GET", "/down/b", None, 502),
    ];
    for (method, path, authorization, want) in &script {
        let mut req = match *method {
            "POST" => client
                .post(format!("{base}{path}"))
                .header("content-type", "application/json")
                .body(r#"{"description":"from the metrics test"}"#),
            _ => client.get(format!("{base}{path}")),
        };
        if let Some(value) = authorization {
            req = req.header("authorization", value);
        }
        let response = req.send().await.expect("gateway answers");
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        assert_eq!(status, *want, "{method} {path}: {body}");
    }

    // A client that speaks no TLS: one failed handshake.
    let mut raw = tcp_connect(gateway.proxy_addr()).await;
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(WAIT, raw.read_to_end(&mut sink)).await;

    // The credential cache holds the one valid key, exactly, right after its hits.
    let sent = script.len() as f64;
    let m = scrape_until(&gateway, |m| requests_total(m) >= sent).await;
    assert_eq!(m.value("gateway_credential_cache_entries", &[]), 1.0);

    // Webhooks: one signed, one with a wrong signature.
    let hook = |body: &'static str, signature: String| {
        http_client()
            .post(format!("{}/hooks/frappe", gateway.admin_url()))
            .header("content-type", "application/json")
            .header("x-frappe-webhook-signature", signature)
            .body(body)
            .send()
    };
    let body = r#"{"name":"metrics.user@example.com"}"#;
    assert_eq!(hook(body, sign(body)).await.unwrap().status(), 200);
    assert_eq!(hook(body, sign("something else")).await.unwrap().status(), 401);

    let m = scrape_until(&gateway, |m| {
        requests_total(m) >= sent && m.get("gateway_sync_last_success_timestamp_seconds", &[]).is_some()
    })
    .await;

    // Requests by decision and status class: exactly the script, nothing else.
    let expected = [
        ("allow", "2xx", 6.0),
        ("deny", "4xx", 4.0),
        ("rate_limited", "4xx", 1.0),
        ("upstream_error", "5xx", 2.0),
    ];
    for (labels, value) in m.series("gateway_requests_total") {
        let want = expected
            .iter()
            .find(|(d, s, _)| labels["decision"] == *d && labels["status"] == *s)
            .map_or(0.0, |(_, _, n)| *n);
        assert_eq!(value, want, "gateway_requests_total{labels:?}");
    }
    assert_eq!(m.value("gateway_request_duration_seconds_count", &[]), sent);

    // Authentication outcomes and the credential cache.
    let auth = [("miss-verified", 1.0), ("hit", 3.0), ("rejected", 1.0)];
    for (labels, value) in m.series("gateway_auth_total") {
        let want = auth.iter().find(|(o, _)| labels["outcome"] == *o).map_or(0.0, |(_, n)| *n);
        assert_eq!(value, want, "gateway_auth_total{labels:?}");
    }
    assert_eq!(m.value("gateway_auth_verify_calls_total", &[]), 2.0);
    assert_eq!(frappe.whoami_calls(), 2);
    // The signed webhook dropped the user's cached credential.
    assert_eq!(m.value("gateway_credential_cache_entries", &[]), 0.0);

    // Rate limits: one refusal, by the per-IP limiter.
    for (labels, value) in m.series("gateway_rate_limited_total") {
        assert_eq!(value, if labels["limiter"] == "per_ip" { 1.0 } else { 0.0 }, "{labels:?}");
    }

    // Requests by route and method class: the configured prefixes only.
    let routes = [
        ("/api/", "read", 5.0),
        ("/api/", "write", 1.0),
        ("/api/method/frappe.client.get_password", "read", 2.0),
        ("/api/method/ping", "read", 3.0),
        ("/down/", "read", 2.0),
    ];
    for (labels, value) in m.series("gateway_route_requests_total") {
        let want = routes
            .iter()
            .find(|(r, c, _)| labels["route"] == *r && labels["method"] == *c)
            .map_or(0.0, |(_, _, n)| *n);
        assert_eq!(value, want, "gateway_route_requests_total{labels:?}");
    }

    // Upstream: six answers timed, two refused connections.
    assert_eq!(m.value("gateway_upstream_request_duration_seconds_count", &[]), 6.0);
    for (labels, value) in m.series("gateway_upstream_errors_total") {
        assert_eq!(value, if labels["kind"] == "connect" { 2.0 } else { 0.0 }, "{labels:?}");
    }

    // Connections and TLS.
    assert_eq!(m.value("gateway_tls_handshake_failures_total", &[("reason", "error")]), 1.0);
    assert_eq!(m.value("gateway_tls_handshake_failures_total", &[("reason", "timeout")]), 0.0);
    assert!(m.value("gateway_open_connections", &[]) >= 1.0, "the client's pooled connection is open");
    // Every body is done with: nothing held in memory or on disk.
    for store in ["memory", "disk"] {
        assert_eq!(m.value("gateway_request_body_bytes", &[("store", store)]), 0.0, "{store}");
    }
    let not_after = {
        let pem = std::fs::read(&certs.cert_path).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
        pem.parse_x509().unwrap().validity().not_after.timestamp() as f64
    };
    assert_eq!(m.value("gateway_tls_certificate_expiry_timestamp_seconds", &[]), not_after);

    // Webhooks, sync, reloads, the access log.
    for (labels, value) in m.series("gateway_webhook_events_total") {
        let want = match labels["outcome"].as_str() {
            "applied" | "bad_signature" => 1.0,
            _ => 0.0,
        };
        assert_eq!(value, want, "{labels:?}");
    }
    assert!(m.value("gateway_sync_runs_total", &[]) >= 1.0);
    assert_eq!(m.value("gateway_sync_failures_total", &[]), 0.0);
    let last_sync = m.value("gateway_sync_last_success_timestamp_seconds", &[]);
    let unix = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(last_sync >= unix(started) - 1.0 && last_sync <= unix(SystemTime::now()) + 1.0, "{last_sync}");
    assert_eq!(m.value("gateway_config_reloads_total", &[("result", "ok")]), 0.0);
    assert_eq!(m.value("gateway_access_log_dropped_total", &[]), 0.0);
    assert_eq!(m.types["gateway_access_log_dropped"], "counter");
    assert!(m.get("gateway_sync_age_seconds", &[]).is_none(), "the -1 sentinel gauge is gone");

    // Build and process.
    assert_eq!(m.value("gateway_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), 1.0);
    assert!(m.value("process_resident_memory_bytes", &[]) > 1e6);
    assert!(m.value("process_open_fds", &[]) >= 3.0);
    assert!(m.value("process_cpu_seconds_total", &[]) >= 0.0);
    assert_eq!(m.types["process_cpu_seconds"], "counter");

    // No user name, key or raw path in any label.
    for (name, labels) in m.samples.keys() {
        for value in labels.values() {
            for secret in [USER, KEY, SECRET, "ToDo", "/down/a"] {
                assert!(!value.contains(secret), "{name}{labels:?} carries {secret}");
            }
        }
    }
}
