//! The effective configuration as `check` prints it: valid `gateway.toml` text with every
//! default filled in, in the contract's key names, secrets shown only as `<redacted>`, routes
//! in matching order. Reading the output back gives the same configuration.

use std::fmt::Write as _;
use std::time::Duration;

use http::Uri;
use ipnet::IpNet;

use super::types::*;

/// What the validated [`Config`] no longer holds but `check` reports: the file read, the
/// names of the `_env` variables, and each route's index in the file (the config keeps
/// routes sorted longest first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceInfo {
    /// The file as read, absolute.
    pub file: String,
    pub sync_token_env: String,
    pub webhook_secret_env: String,
    pub redis_url_env: String,
    /// `route[i].path` in file order.
    pub route_paths: Vec<String>,
}

impl SourceInfo {
    /// Reads the names from `src` (already validated), with the documented defaults.
    pub fn read(file: &str, src: &str) -> SourceInfo {
        let doc: toml::Table = toml::from_str(src).unwrap_or_default();
        let text = |table: &str, key: &str, default: &str| {
            doc.get(table).and_then(|t| t.get(key)).and_then(|v| v.as_str()).unwrap_or(default).to_string()
        };
        let route_paths = doc
            .get("route")
            .and_then(|r| r.as_array())
            .map(|routes| {
                routes
                    .iter()
                    .map(|r| r.get("path").and_then(|p| p.as_str()).unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default();
        SourceInfo {
            file: file.to_string(),
            sync_token_env: text("frappe", "sync_token_env", "GATEWAY_SYNC_TOKEN"),
            webhook_secret_env: text("frappe", "webhook_secret_env", "GATEWAY_WEBHOOK_SECRET"),
            redis_url_env: text("rate_limit", "redis_url_env", "GATEWAY_REDIS_URL"),
            route_paths,
        }
    }

    /// The key prefix of the route with `path` as written in the file: `route[2]`.
    pub fn route_key(&self, path: &str) -> String {
        match self.route_paths.iter().position(|p| p == path) {
            Some(i) => format!("route[{i}]"),
            None => format!("route[path = {}]", quote(path)),
        }
    }
}

/// `config` as `gateway.toml` text. Secrets appear as their `_env` variable name with a
/// comment saying whether it is set (`<redacted>`), never as their value.
pub fn render(config: &Config, source: &SourceInfo) -> String {
    let mut out = Toml::default();
    let _ = writeln!(
        out.0,
        "# Effective configuration of {}: defaults filled in, secrets redacted,\n\
         # routes in matching order (longest prefix first).",
        source.file
    );

    let s = &config.server;
    out.table("server");
    out.kv("listen", quote(&s.listen.to_string()));
    match &s.tls {
        Some(tls) => {
            out.kv("tls_cert", quote(&tls.cert.display().to_string()));
            out.kv("tls_key", quote(&tls.key.display().to_string()));
        }
        None => out.comment("no tls_cert / tls_key: plain HTTP"),
    }
    out.kv("self_signed_if_missing", s.self_signed_if_missing.to_string());
    out.kv("max_connections", s.max_connections.to_string());
    out.kv("header_read_timeout", duration(s.header_read_timeout));
    out.kv("idle_timeout", duration(s.idle_timeout));
    out.kv("max_header_bytes", s.max_header_bytes.to_string());
    out.kv("max_body_bytes", s.max_body_bytes.to_string());
    out.kv("inspect_body_bytes", s.inspect_body_bytes.to_string());
    out.kv("request_buffering", s.request_buffering.to_string());
    out.kv("max_spool_bytes", s.max_spool_bytes.to_string());
    out.kv("max_buffered_bytes", s.max_buffered_bytes.to_string());
    out.kv("max_buffered_bytes_per_connection", s.max_buffered_bytes_per_connection.to_string());
    out.kv("body_read_timeout", duration(s.body_read_timeout));
    out.kv("shutdown_grace", duration(s.shutdown_grace));
    out.kv("workers", s.workers.to_string());

    out.table("admin");
    out.kv("listen", quote(&config.admin.listen.to_string()));
    out.kv("allowed_hosts", list(config.admin.allowed_hosts.iter().map(String::as_str)));

    let u = &config.upstream;
    out.table("upstream");
    out.kv("url", quote(&url(&u.url)));
    out.kv("host", quote(&u.host));
    match &u.site_name {
        Some(site) => out.kv("site_name", quote(site)),
        None => out.comment("site_name: not set"),
    }
    out.kv("connect_timeout", duration(u.connect_timeout));
    out.kv("timeout", duration(u.timeout));
    out.kv("max_connections", u.max_connections.to_string());
    out.kv("queue_timeout", duration(u.queue_timeout));

    let f = &config.frappe;
    out.table("frappe");
    out.kv("url", quote(&url(&f.url)));
    out.kv("sync_interval", duration(f.sync_interval));
    out.secret("sync_token_env", &source.sync_token_env, f.sync_token.as_ref(), "credential sync is off");
    out.secret(
        "webhook_secret_env",
        &source.webhook_secret_env,
        f.webhook_secret.as_ref(),
        "POST /hooks/frappe is off",
    );
    out.kv("verify_timeout", duration(f.verify_timeout));
    out.kv("max_verify_concurrency", f.max_verify_concurrency.to_string());
    out.kv("max_verify_rate", rate(&f.max_verify_rate));

    let a = &config.auth;
    out.table("auth");
    out.kv("user_header", quote(a.user_header.as_str()));
    out.kv("forward_authorization", a.forward_authorization.to_string());
    out.kv("cache_capacity", a.cache_capacity.to_string());
    out.kv("cache_ttl", duration(a.cache_ttl));
    out.kv("negative_ttl", duration(a.negative_ttl));
    out.kv("stale_if_error", duration(a.stale_if_error));
    out.kv("allow_administrator", a.allow_administrator.to_string());

    let n = &config.network;
    out.table("network");
    out.kv("trusted_proxies", cidrs(&n.trusted_proxies));
    out.kv("allow", cidrs(&n.allow));
    out.kv("deny", cidrs(&n.deny));

    let r = &config.rate_limit;
    out.table("rate_limit");
    let backend = match r.backend {
        RateLimitBackend::Local => "local",
        RateLimitBackend::Redis => "redis",
    };
    out.kv("backend", quote(backend));
    match r.backend {
        RateLimitBackend::Redis => {
            out.secret("redis_url_env", &source.redis_url_env, r.redis_url.as_ref(), "")
        }
        RateLimitBackend::Local => out.kv("redis_url_env", quote(&source.redis_url_env)),
    }
    out.kv("redis_timeout", duration(r.redis_timeout));
    out.optional_rate("per_key", r.per_key.as_ref(), "no limit");
    out.optional_rate("per_ip", r.per_ip.as_ref(), "no limit");
    out.optional_rate("failed_auth_per_ip", r.failed_auth_per_ip.as_ref(), "no lockout");
    out.kv("lockout", duration(r.lockout));

    for route in &config.routes {
        out.0.push_str("\n[[route]]");
        let _ = writeln!(out.0, "  # {} in the file", source.route_key(&route.path));
        out.kv("path", quote(&route.path));
        out.kv("auth", quote(route.auth.as_str()));
        if !route.allow.is_empty() {
            out.kv("allow", cidrs(&route.allow));
        }
        if let Some(per_ip) = &route.per_ip {
            out.kv("per_ip", rate(per_ip));
        }
        if let Some(per_key) = &route.per_key {
            out.kv("per_key", rate(per_key));
        }
        if let Some(upstream) = &route.upstream {
            out.kv("upstream", quote(&url(upstream)));
        }
        if let Some(fwd) = route.forward_authorization {
            out.kv("forward_authorization", fwd.to_string());
        }
    }

    for user in &config.users {
        out.0.push_str("\n[[user]]\n");
        out.kv("name", quote(&user.name));
        if !user.allow.is_empty() {
            out.kv("allow", cidrs(&user.allow));
        }
        if !user.methods.is_empty() {
            out.kv("methods", list(user.methods.iter().map(|m| m.as_str())));
        }
        if let Some(per_key) = &user.per_key {
            out.kv("per_key", rate(per_key));
        }
        if let Some(doctypes) = &user.doctypes {
            out.kv("doctypes", list(doctypes.iter().map(String::as_str)));
        }
        if let Some(rpc) = &user.rpc {
            out.kv("rpc", list(rpc.iter().map(String::as_str)));
        }
    }

    let l = &config.log;
    out.table("log");
    let access = match &l.access {
        AccessLogTarget::Stdout => "stdout".to_string(),
        AccessLogTarget::Off => "off".to_string(),
        AccessLogTarget::File(path) => path.display().to_string(),
    };
    out.kv("access", quote(&access));
    out.kv("full_api_key", l.full_api_key.to_string());
    out.kv("level", quote(&l.level));
    out.0
}

#[derive(Default)]
struct Toml(String);

impl Toml {
    fn table(&mut self, name: &str) {
        let _ = writeln!(self.0, "\n[{name}]");
    }

    fn kv(&mut self, key: &str, value: String) {
        let _ = writeln!(self.0, "{key} = {value}");
    }

    fn comment(&mut self, text: &str) {
        let _ = writeln!(self.0, "# {text}");
    }

    fn secret(&mut self, key: &str, var: &str, value: Option<&Secret>, off: &str) {
        let state = match value {
            Some(secret) => format!("set: {secret}"),
            None if off.is_empty() => "not set".to_string(),
            None => format!("not set: {off}"),
        };
        let _ = writeln!(self.0, "{key} = {}  # {state}", quote(var));
    }

    fn optional_rate(&mut self, key: &str, value: Option<&Rate>, none: &str) {
        match value {
            Some(r) => self.kv(key, rate(r)),
            None => self.comment(&format!("{key}: {none}")),
        }
    }
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn list<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let quoted: Vec<String> = items.map(quote).collect();
    format!("[{}]", quoted.join(", "))
}

fn cidrs(nets: &[IpNet]) -> String {
    let texts: Vec<String> = nets.iter().map(|n| n.to_string()).collect();
    list(texts.iter().map(String::as_str))
}

/// `"1m 15s"`: the humantime form the config parser reads back.
fn duration(d: Duration) -> String {
    quote(&humantime::format_duration(d).to_string())
}

/// `"600/min"`, `"10/sec burst 3"`: the rate syntax the config parser reads back.
fn rate(r: &Rate) -> String {
    let unit = match r.per.as_secs() {
        1 => "sec".to_string(),
        60 => "min".to_string(),
        3600 => "hour".to_string(),
        86_400 => "day".to_string(),
        _ => humantime::format_duration(r.per).to_string(),
    };
    let burst = if r.burst == r.count { String::new() } else { format!(" burst {}", r.burst) };
    quote(&format!("{}/{unit}{burst}", r.count))
}

/// `http://host:port` without the `/` that `Uri` adds.
fn url(u: &Uri) -> String {
    match (u.scheme_str(), u.authority()) {
        (Some(scheme), Some(authority)) => format!("{scheme}://{authority}"),
        _ => u.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;

    const SAMPLE: &str = include_str!("../../gateway.toml");

    fn env(name: &str) -> Option<String> {
        match name {
            "GATEWAY_SYNC_TOKEN" => Some("key123:topsecret456".into()),
            "FGW_REDIS" => Some("redis://:hunter2@127.0.0.1:6379/0".into()),
            _ => None,
        }
    }

    fn round_trip(src: &str) -> (String, String) {
        let config = parse(src, "g.toml", &env).unwrap();
        let text = render(&config, &SourceInfo::read("/etc/g.toml", src));
        let again = parse(&text, "effective.toml", &env).unwrap_or_else(|e| panic!("{e}\n{text}"));
        (text.clone(), render(&again, &SourceInfo::read("/etc/g.toml", &text)))
    }

    #[test]
    fn sample_renders_as_toml_that_reads_back_the_same() {
        let (first, second) = round_trip(SAMPLE);
        // Route comments name the index in the file read; the rest must be identical.
        let strip =
            |s: &str| s.lines().filter(|l| !l.starts_with("[[route]]")).collect::<Vec<_>>().join("\n");
        assert_eq!(strip(&first), strip(&second));
        assert!(first.contains("max_body_bytes = 26214400"), "{first}");
        assert!(first.contains("per_ip = \"10/min\""), "{first}");
        assert!(first.contains("stale_if_error = \"1h\""), "{first}");
        assert!(first.contains("url = \"http://127.0.0.1:8000\"\n"), "{first}");
        assert!(first.contains(
            "[[route]]  # route[3] in the file\npath = \"/api/method/frappe.client.get_password\""
        ));
        assert!(first.contains("sync_token_env = \"GATEWAY_SYNC_TOKEN\"  # set: <redacted>"), "{first}");
        assert!(first.contains("webhook_secret_env = \"GATEWAY_WEBHOOK_SECRET\"  # not set"), "{first}");
        assert!(!first.contains("topsecret456"), "{first}");
    }

    #[test]
    fn secrets_and_bursts_and_redis() {
        let src = "[upstream]\nurl = \"http://127.0.0.1:8000\"\n[rate_limit]\nbackend = \"redis\"\n\
                   redis_url_env = \"FGW_REDIS\"\nper_ip = \"10/sec burst 3\"\n";
        let (text, again) = round_trip(src);
        assert_eq!(text, again);
        assert!(text.contains("redis_url_env = \"FGW_REDIS\"  # set: <redacted>"), "{text}");
        assert!(text.contains("per_ip = \"10/sec burst 3\""), "{text}");
        assert!(text.contains("# per_key: no limit"), "{text}");
        assert!(text.contains("[admin]\nlisten = \"127.0.0.1:9901\"\nallowed_hosts = []\n"), "{text}");
        let (text, again) = round_trip(&format!("{src}[admin]\nallowed_hosts = [\"GW.internal\"]\n"));
        assert_eq!(text, again);
        assert!(text.contains("allowed_hosts = [\"gw.internal\"]"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn route_keys_follow_file_order() {
        let src = "[[route]]\npath = \"/a/\"\n[[route]]\npath = \"/api/method/x\"\n";
        let info = SourceInfo::read("g.toml", src);
        assert_eq!(info.route_key("/api/method/x"), "route[1]");
        assert_eq!(info.route_key("/nope"), "route[path = \"/nope\"]");
        assert_eq!(info.sync_token_env, "GATEWAY_SYNC_TOKEN");
    }
}
