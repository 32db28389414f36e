//! Raw `gateway.toml` → validated [`Config`]: defaults, value parsing, cross-checks. Every
//! problem is collected (not just the first) and names the key and the line.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use http::header::HeaderName;
use http::Uri;
use ipnet::IpNet;
use toml::Spanned;

use super::raw::*;
use super::toml_errors::{humanize, key_at};
use super::types::*;
use super::values::*;

/// One problem in the configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Dotted key, e.g. `route[2].per_ip`.
    pub key: String,
    /// 1-based line, 0 when unknown.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "line {}: {}: {}", self.line, self.key, self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

/// All problems found in one configuration file.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub file: String,
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.issues.len();
        writeln!(f, "{}: {n} configuration error{}", self.file, if n == 1 { "" } else { "s" })?;
        for issue in &self.issues {
            writeln!(f, "  {}:{issue}", self.file)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Parses and validates `src` (the text of `file`); `env` looks up `_env` variables.
pub fn parse(src: &str, file: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let mut v = Validator { src, env, issues: Vec::new() };
    let config = match toml::from_str::<RawConfig>(src) {
        Ok(raw) => Some(v.config(raw)),
        Err(e) => {
            v.toml_error(&e);
            None
        }
    };
    match config {
        Some(config) if v.issues.is_empty() => Ok(config),
        _ => Err(ConfigError { file: file.to_string(), issues: v.issues }),
    }
}

mod policy;

/// More whoami calls in flight than this would not protect Frappe from anything.
const MAX_VERIFY_CONCURRENCY: u64 = 10_000;
/// `upstream.max_connections` when unset: more than gunicorn's workers take at once (the
/// rest wait in its backlog either way), few enough that a burst cannot flood the backlog.
const DEFAULT_UPSTREAM_CONNECTIONS: usize = 512;
const MAX_UPSTREAM_CONNECTIONS: u64 = 1_000_000;

struct Validator<'a> {
    src: &'a str,
    env: &'a dyn Fn(&str) -> Option<String>,
    issues: Vec<ConfigIssue>,
}

impl Validator<'_> {
    fn line_of(&self, span: &Range<usize>) -> usize {
        let end = span.start.min(self.src.len());
        self.src[..end].bytes().filter(|&b| b == b'\n').count() + 1
    }

    fn issue(&mut self, key: &str, span: Option<Range<usize>>, message: impl Into<String>) {
        let line = span.map_or(0, |s| self.line_of(&s));
        self.issues.push(ConfigIssue { key: key.to_string(), line, message: message.into() });
    }

    /// A syntax, type or unknown-key error from the TOML deserializer, named by the key at
    /// its span (`route[0].pth`), falling back to the enclosing table for unknown keys.
    fn toml_error(&mut self, e: &toml::de::Error) {
        let message = humanize(e.message().trim());
        let at_span = e.span().and_then(|span| key_at(self.src, span.start));
        let key = match (at_span, unknown_field_name(&message), e.span()) {
            (Some(key), _, _) => key,
            (None, Some(field), Some(span)) => match enclosing_table(self.src, span.start) {
                Some(table) => format!("{table}.{field}"),
                None => field,
            },
            (None, Some(field), None) => field,
            (None, None, _) => "gateway.toml".to_string(),
        };
        self.issue(&key, e.span(), message);
    }

    /// Parses a spanned value with `f`, recording an issue on failure.
    fn value<T, R>(
        &mut self,
        key: &str,
        raw: &Option<Spanned<R>>,
        f: impl FnOnce(&R) -> Result<T, String>,
    ) -> Option<T> {
        let raw = raw.as_ref()?;
        match f(raw.get_ref()) {
            Ok(v) => Some(v),
            Err(msg) => {
                self.issue(key, Some(raw.span()), msg);
                None
            }
        }
    }

    fn duration(&mut self, key: &str, raw: &S<String>, default: &str) -> Duration {
        let parsed = self.value(key, raw, |s| parse_duration(s));
        parsed.unwrap_or_else(|| parse_duration(default).expect("valid default duration"))
    }

    fn rate(&mut self, key: &str, raw: &S<String>) -> Option<Rate> {
        self.value(key, raw, |s| parse_rate(s))
    }

    fn cidrs(&mut self, key: &str, raw: &Option<Vec<Spanned<String>>>) -> Option<Vec<IpNet>> {
        self.list(key, raw, |s| parse_cidr(s))
    }

    /// Parses each item of an array with `f`; an issue names the item (`key[i]`) and its line.
    fn list<T>(
        &mut self,
        key: &str,
        raw: &Option<Vec<Spanned<String>>>,
        f: impl Fn(&String) -> Result<T, String>,
    ) -> Option<Vec<T>> {
        let list = raw.as_ref()?;
        let mut out = Vec::with_capacity(list.len());
        for (i, item) in list.iter().enumerate() {
            let k = format!("{key}[{i}]");
            if let Some(v) = self.value(&k, &Some(item.clone()), &f) {
                out.push(v);
            }
        }
        Some(out)
    }

    fn url(&mut self, key: &str, raw: &S<String>) -> Option<Uri> {
        self.value(key, raw, |s| parse_http_url(s))
    }

    /// Like [`Self::positive`], also at most `max`.
    fn bounded(&mut self, key: &str, raw: &S<u64>, default: u64, max: u64) -> u64 {
        self.value(key, raw, |&n| match n {
            0 => Err("must be greater than 0".into()),
            n if n > max => Err(format!("must be at most {max}")),
            n => Ok(n),
        })
        .unwrap_or(default)
    }

    fn positive(&mut self, key: &str, raw: &S<u64>, default: u64) -> u64 {
        self.value(key, raw, |&n| if n == 0 { Err("must be greater than 0".into()) } else { Ok(n) })
            .unwrap_or(default)
    }

    /// Reads the variable named by an `_env` key. `required` turns "unset" into an error;
    /// otherwise the caller warns and runs without the feature.
    fn secret_env(&mut self, key: &str, raw: &S<String>, default: &str, required: bool) -> Option<Secret> {
        let name = raw.as_ref().map_or(default.to_string(), |s| s.get_ref().clone());
        let span = raw.as_ref().map(|s| s.span());
        if !is_env_name(&name) {
            self.issue(key, span, format!("{name:?} is not a valid environment variable name"));
            return None;
        }
        match (self.env)(&name).filter(|v| !v.is_empty()) {
            Some(value) => Some(Secret::new(value)),
            None if required => {
                self.issue(key, span, format!("environment variable {name} is not set"));
                None
            }
            None => None,
        }
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let server = self.server(&raw.server);
        let admin = AdminConfig {
            listen: self
                .value("admin.listen", &raw.admin.listen, |s| parse_socket_addr(s))
                .unwrap_or_else(|| "127.0.0.1:9901".parse().expect("valid default")),
            allowed_hosts: self
                .list("admin.allowed_hosts", &raw.admin.allowed_hosts, |s| parse_allowed_host(s))
                .unwrap_or_default(),
        };
        let upstream = self.upstream(raw.upstream.as_ref());
        let frappe = self.frappe(&raw.frappe, &upstream);
        let auth = self.auth(&raw.auth);
        let network = NetworkConfig {
            trusted_proxies: self
                .cidrs("network.trusted_proxies", &raw.network.trusted_proxies)
                .unwrap_or_default(),
            allow: self.cidrs("network.allow", &raw.network.allow).unwrap_or_default(),
            deny: self.cidrs("network.deny", &raw.network.deny).unwrap_or_default(),
        };
        let rate_limit = self.rate_limit(&raw.rate_limit);
        let routes = self.routes(&raw.route);
        let users = self.users(&raw.user);
        let log = self.log(&raw.log);
        Config { server, admin, upstream, frappe, auth, network, rate_limit, routes, users, log }
    }

    fn server(&mut self, s: &RawServer) -> ServerConfig {
        let listen = self
            .value("server.listen", &s.listen, |v| parse_socket_addr(v))
            .unwrap_or_else(|| "0.0.0.0:8443".parse().expect("valid default"));
        let tls = match (&s.tls_cert, &s.tls_key) {
            (Some(cert), Some(key)) => {
                Some(TlsFiles { cert: PathBuf::from(cert.get_ref()), key: PathBuf::from(key.get_ref()) })
            }
            (None, None) => None,
            (Some(c), None) => {
                self.issue("server.tls_key", Some(c.span()), "tls_cert is set but tls_key is missing");
                None
            }
            (None, Some(k)) => {
                self.issue("server.tls_cert", Some(k.span()), "tls_key is set but tls_cert is missing");
                None
            }
        };
        let max_body_bytes = self.positive("server.max_body_bytes", &s.max_body_bytes, 26_214_400);
        // Unset, it follows a smaller max_body_bytes down; set, it must fit under it.
        let inspect_default = max_body_bytes.min(1_048_576);
        let inspect_body_bytes =
            self.positive("server.inspect_body_bytes", &s.inspect_body_bytes, inspect_default);
        if inspect_body_bytes > max_body_bytes {
            let span = s.inspect_body_bytes.as_ref().map(|v| v.span());
            self.issue(
                "server.inspect_body_bytes",
                span,
                format!("{inspect_body_bytes} is larger than server.max_body_bytes {max_body_bytes}"),
            );
        }
        // A body's chunk may cross inspect_body_bytes before it is spooled: room for two.
        let at_least = inspect_body_bytes.saturating_mul(2);
        let mut buffered = |key: &str, raw: &S<u64>, default: u64| {
            let value = self.positive(key, raw, default.max(at_least));
            if value < at_least {
                let span = raw.as_ref().map(|v| v.span());
                let why = format!("{value} is less than twice server.inspect_body_bytes ({at_least})");
                self.issue(key, span, why);
            }
            value
        };
        let max_buffered_bytes = buffered("server.max_buffered_bytes", &s.max_buffered_bytes, 268_435_456);
        let max_buffered_bytes_per_connection = buffered(
            "server.max_buffered_bytes_per_connection",
            &s.max_buffered_bytes_per_connection,
            8_388_608,
        );
        ServerConfig {
            listen,
            tls,
            self_signed_if_missing: s.self_signed_if_missing.unwrap_or(false),
            max_connections: self.positive("server.max_connections", &s.max_connections, 4096) as usize,
            header_read_timeout: self.duration("server.header_read_timeout", &s.header_read_timeout, "10s"),
            idle_timeout: self.duration("server.idle_timeout", &s.idle_timeout, "75s"),
            max_header_bytes: self.positive("server.max_header_bytes", &s.max_header_bytes, 16384) as usize,
            max_body_bytes,
            inspect_body_bytes,
            request_buffering: s.request_buffering.unwrap_or(true),
            max_spool_bytes: self.positive("server.max_spool_bytes", &s.max_spool_bytes, 1_073_741_824),
            max_buffered_bytes,
            max_buffered_bytes_per_connection,
            body_read_timeout: self.duration("server.body_read_timeout", &s.body_read_timeout, "30s"),
            shutdown_grace: self.duration("server.shutdown_grace", &s.shutdown_grace, "30s"),
            workers: self.positive("server.workers", &s.workers, default_workers()) as usize,
        }
    }

    fn upstream(&mut self, raw: Option<&Spanned<RawUpstream>>) -> UpstreamConfig {
        let fallback = || "http://127.0.0.1:8000".parse::<Uri>().expect("valid default");
        let Some(raw) = raw else {
            self.issue("upstream.url", None, "the [upstream] table with `url` is required");
            return upstream_defaults(fallback());
        };
        let u = raw.get_ref();
        if u.url.is_none() {
            self.issue(
                "upstream.url",
                Some(raw.span()),
                "is required (the Frappe site, e.g. \"http://127.0.0.1:8000\")",
            );
        }
        let url = self.url("upstream.url", &u.url).unwrap_or_else(fallback);
        let mut cfg = upstream_defaults(url);
        if let Some(host) = self.value("upstream.host", &u.host, |h| parse_host(h)) {
            cfg.host = host;
        }
        cfg.site_name = self.value("upstream.site_name", &u.site_name, |h| parse_host(h));
        cfg.connect_timeout = self.duration("upstream.connect_timeout", &u.connect_timeout, "2s");
        cfg.timeout = self.duration("upstream.timeout", &u.timeout, "120s");
        cfg.max_connections = self
            .value("upstream.max_connections", &u.max_connections, |&n| {
                if n > MAX_UPSTREAM_CONNECTIONS {
                    Err(format!("must be at most {MAX_UPSTREAM_CONNECTIONS} (0 = no cap)"))
                } else {
                    Ok(n as usize)
                }
            })
            .unwrap_or(DEFAULT_UPSTREAM_CONNECTIONS);
        cfg.queue_timeout = self.duration("upstream.queue_timeout", &u.queue_timeout, "10s");
        cfg
    }

    fn frappe(&mut self, f: &RawFrappe, upstream: &UpstreamConfig) -> FrappeConfig {
        FrappeConfig {
            url: self.url("frappe.url", &f.url).unwrap_or_else(|| upstream.url.clone()),
            sync_interval: self.duration("frappe.sync_interval", &f.sync_interval, "30s"),
            sync_token: self
                .secret_env("frappe.sync_token_env", &f.sync_token_env, "GATEWAY_SYNC_TOKEN", false)
                .and_then(|t| self.token_shape("frappe.sync_token_env", &f.sync_token_env, t)),
            webhook_secret: self.secret_env(
                "frappe.webhook_secret_env",
                &f.webhook_secret_env,
                "GATEWAY_WEBHOOK_SECRET",
                false,
            ),
            verify_timeout: self.duration("frappe.verify_timeout", &f.verify_timeout, "5s"),
            max_verify_concurrency: self.bounded(
                "frappe.max_verify_concurrency",
                &f.max_verify_concurrency,
                16,
                MAX_VERIFY_CONCURRENCY,
            ) as usize,
            max_verify_rate: self
                .rate("frappe.max_verify_rate", &f.max_verify_rate)
                .unwrap_or_else(|| parse_rate("50/sec").expect("valid default rate")),
        }
    }

    /// The sync token must look like `api_key:api_secret`; the message never shows it.
    fn token_shape(&mut self, key: &str, raw: &S<String>, token: Secret) -> Option<Secret> {
        let ok = matches!(token.expose().split_once(':'), Some((k, s)) if !k.is_empty() && !s.is_empty() && !s.contains(':'));
        if ok {
            return Some(token);
        }
        let span = raw.as_ref().map(|s| s.span());
        self.issue(key, span, "the variable's value must have the form api_key:api_secret");
        None
    }

    fn auth(&mut self, a: &RawAuth) -> AuthConfig {
        let user_header = self
            .value("auth.user_header", &a.user_header, |h| {
                HeaderName::from_bytes(h.as_bytes()).map_err(|_| format!("{h:?} is not a valid header name"))
            })
            .unwrap_or_else(|| HeaderName::from_static("x-frappe-user"));
        AuthConfig {
            user_header,
            forward_authorization: a.forward_authorization.unwrap_or(true),
            cache_capacity: self.positive("auth.cache_capacity", &a.cache_capacity, 100_000),
            cache_ttl: self.duration("auth.cache_ttl", &a.cache_ttl, "10m"),
            negative_ttl: self.duration("auth.negative_ttl", &a.negative_ttl, "30s"),
            stale_if_error: self.duration("auth.stale_if_error", &a.stale_if_error, "1h"),
            allow_administrator: a.allow_administrator.unwrap_or(false),
        }
    }
}

fn default_workers() -> u64 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u64)
}

fn upstream_defaults(url: Uri) -> UpstreamConfig {
    let host = url.authority().map(|a| a.as_str().to_string()).unwrap_or_default();
    UpstreamConfig {
        url,
        host,
        site_name: None,
        connect_timeout: Duration::from_secs(2),
        timeout: Duration::from_secs(120),
        max_connections: DEFAULT_UPSTREAM_CONNECTIONS,
        queue_timeout: Duration::from_secs(10),
    }
}

/// An `admin.allowed_hosts` entry: a bare host name (`gateway.internal`), compared
/// case-insensitively and without a trailing dot, so returned lowercase without it; or `*`
/// alone (any Host). No scheme, port, path, userinfo or wildcard label.
fn parse_allowed_host(s: &str) -> Result<String, String> {
    let example = "use a bare host name such as \"gateway.internal\" (no scheme, port or path), or \"*\" alone for any Host";
    if s == "*" {
        return Ok(s.to_string());
    }
    let name = s.strip_suffix('.').unwrap_or(s);
    let label_ok =
        |l: &str| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if name.is_empty() || !name.split('.').all(label_ok) {
        return Err(format!("invalid host name {s:?}; {example}"));
    }
    Ok(name.to_ascii_lowercase())
}

/// toml reports unknown keys as "unknown field `x`, expected one of …".
fn unknown_field_name(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest[..rest.find('`')?].to_string())
}

/// The `[table]` / `[[table]]` header in force at byte `offset` (`route` for `[[route]]`).
fn enclosing_table(src: &str, offset: usize) -> Option<&str> {
    src[..offset.min(src.len())]
        .lines()
        .rev()
        .map(str::trim)
        .find(|line| line.starts_with('['))
        .map(|header| header.trim_start_matches('[').split(']').next().unwrap_or_default().trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_none(_: &str) -> Option<String> {
        None
    }

    fn check(src: &str) -> Result<Config, ConfigError> {
        parse(src, "gateway.toml", &env_none)
    }

    const MIN: &str = "[upstream]\nurl = \"http://127.0.0.1:8000\"\n";

    #[test]
    fn urls_with_credentials_are_refused_without_echoing_them() {
        let e = check("[upstream]\nurl = \"http://admin:hunter2@127.0.0.1:8000\"\n").unwrap_err();
        assert_eq!((e.issues[0].key.as_str(), e.issues[0].line), ("upstream.url", 2));
        assert!(e.issues[0].message.contains("credentials"), "{:?}", e.issues[0]);
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = check(MIN).unwrap();
        assert_eq!(c.server.max_body_bytes, 26_214_400);
        assert_eq!(c.upstream.host, "127.0.0.1:8000");
        assert_eq!(c.auth.user_header.as_str(), "x-frappe-user");
        assert_eq!(c.frappe.url, c.upstream.url);
        assert!(c.frappe.sync_token.is_none());
        assert!(!c.auth.allow_administrator, "Administrator is refused unless allowed");
        assert!(
            check(&format!("{MIN}[auth]\nallow_administrator = true\n")).unwrap().auth.allow_administrator
        );
    }

    #[test]
    fn errors_name_key_and_line() {
        let src =
            format!("{MIN}[server]\nheader_read_timeout = \"ten\"\n[network]\nallow = [\"10.0.0.0/33\"]\n");
        let e = check(&src).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("line 4: server.header_read_timeout"), "{text}");
        assert!(text.contains("line 6: network.allow[0]"), "{text}");
    }

    #[test]
    fn unknown_key_is_an_error_with_line() {
        let e = check(&format!("{MIN}[server]\nlisten_port = 1\n")).unwrap_err();
        assert_eq!(e.issues[0].key, "server.listen_port");
        assert_eq!(e.issues[0].line, 4);
    }

    #[test]
    fn bad_rate_and_auth_mode() {
        let src = format!("{MIN}[[route]]\npath = \"/api/\"\nauth = \"tokne\"\nper_ip = \"10/fortnight\"\n");
        let e = check(&src).unwrap_err();
        let keys: Vec<_> = e.issues.iter().map(|i| (i.key.as_str(), i.line)).collect();
        assert!(keys.contains(&("route[0].auth", 5)), "{keys:?}");
        assert!(keys.contains(&("route[0].per_ip", 6)), "{keys:?}");
    }

    #[test]
    fn redis_backend_requires_its_env_var() {
        let src = format!("{MIN}[rate_limit]\nbackend = \"redis\"\nredis_url_env = \"FGW_NOPE\"\n");
        let e = check(&src).unwrap_err();
        assert_eq!(e.issues[0].key, "rate_limit.redis_url_env");
        assert_eq!(e.issues[0].line, 5);
        assert!(e.issues[0].message.contains("FGW_NOPE is not set"));
    }

    #[test]
    fn verify_budget_defaults_and_errors() {
        let c = check(MIN).unwrap();
        assert_eq!(c.frappe.max_verify_concurrency, 16);
        assert_eq!(c.frappe.max_verify_rate, parse_rate("50/sec").unwrap());
        let c = check(&format!("{MIN}[frappe]\nmax_verify_concurrency = 4\nmax_verify_rate = \"20/sec\"\n"))
            .unwrap();
        assert_eq!((c.frappe.max_verify_concurrency, c.frappe.max_verify_rate.count), (4, 20));
        let src = format!("{MIN}[frappe]\nmax_verify_concurrency = 0\nmax_verify_rate = \"0/sec\"\n");
        let e = check(&src).unwrap_err();
        let keys: Vec<_> = e.issues.iter().map(|i| (i.key.as_str(), i.line)).collect();
        assert_eq!(keys, [("frappe.max_verify_concurrency", 4), ("frappe.max_verify_rate", 5)]);
        assert!(e.issues[0].message.contains("greater than 0"), "{:?}", e.issues[0]);
        let e = check(&format!("{MIN}[frappe]\nmax_verify_concurrency = 1000000\n")).unwrap_err();
        assert!(e.issues[0].message.contains("at most 10000"), "{:?}", e.issues[0]);
    }

    #[test]
    fn rates_parse_with_burst() {
        let r = parse_rate("60/min").unwrap();
        assert_eq!((r.count, r.per, r.burst), (60, Duration::from_secs(60), 60));
        assert_eq!(parse_rate("10/sec burst 3").unwrap().burst, 3);
        assert!(parse_rate("0/min").is_err());
        assert!(parse_rate("ten/min").is_err());
    }

    #[test]
    fn routes_sorted_longest_first() {
        let src = format!("{MIN}[[route]]\npath = \"/api/\"\nauth = \"token\"\n[[route]]\npath = \"/api/method/login\"\nauth = \"public\"\n");
        let c = check(&src).unwrap();
        assert_eq!(c.routes[0].path, "/api/method/login");
    }

    #[test]
    fn body_memory_bounds_default_and_must_hold_two_inspected_bodies() {
        let c = check(MIN).unwrap();
        assert_eq!(
            (c.server.max_buffered_bytes, c.server.max_buffered_bytes_per_connection),
            (268_435_456, 8_388_608)
        );
        let src =
            format!("{MIN}[server]\ninspect_body_bytes = 1000\nmax_buffered_bytes_per_connection = 1999\n");
        let e = check(&src).unwrap_err();
        assert_eq!(e.issues[0].key, "server.max_buffered_bytes_per_connection");
        assert!(e.issues[0].message.contains("twice server.inspect_body_bytes"), "{:?}", e.issues[0]);
        let src = format!("{MIN}[server]\ninspect_body_bytes = 1000\nmax_buffered_bytes = 2000\n");
        assert_eq!(check(&src).unwrap().server.max_buffered_bytes, 2000);
    }

    #[test]
    fn admin_allowed_hosts_default_normalize_and_errors() {
        assert!(check(MIN).unwrap().admin.allowed_hosts.is_empty());
        let c = check(&format!("{MIN}[admin]\nallowed_hosts = [\"Gateway.Internal.\", \"*\", \"gw_1\"]\n"))
            .unwrap();
        assert_eq!(c.admin.allowed_hosts, ["gateway.internal", "*", "gw_1"]);
        let bad =
            ["", "http://gw", "gw:9901", "gw/status", "g w", " gw", "*.example.com", "[::1]", "a..b", "."];
        for (i, entry) in bad.iter().enumerate() {
            let src = format!("{MIN}[admin]\nallowed_hosts = [\"ok\",\n  {:?}]\n", entry);
            let e = check(&src).unwrap_err();
            let issue = &e.issues[0];
            assert_eq!(
                (issue.key.as_str(), issue.line, e.issues.len()),
                ("admin.allowed_hosts[1]", 5, 1),
                "{i}: {entry:?}"
            );
            assert!(issue.message.contains("invalid host name"), "{issue:?}");
        }
    }

    #[test]
    fn sync_token_is_redacted_and_checked() {
        let env = |n: &str| (n == "GATEWAY_SYNC_TOKEN").then(|| "abc:def".to_string());
        let c = parse(MIN, "g.toml", &env).unwrap();
        assert_eq!(format!("{:?}", c.frappe.sync_token), "Some(\"<redacted>\")");
        let bad = |n: &str| (n == "GATEWAY_SYNC_TOKEN").then(|| "nocolon".to_string());
        let e = parse(MIN, "g.toml", &bad).unwrap_err();
        assert!(!e.to_string().contains("nocolon"));
    }
}
