//! `frappe-gateway check`, the pre-deploy gate (like `nginx -t`): on top of the config
//! validation it reads the certificate and key, and warns about settings that work but are
//! risky. Exit status: 0 fine, 1 warnings under `--strict`, 2 errors.

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;

use crate::config::{AuthMode, Config, Rate, SourceInfo};
use crate::tls::{self, CertificateInfo, TlsFile};

/// A certificate with less time left than this is worth a warning: renewal is failing.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 86_400);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Warning,
    Error,
}

/// One thing `check` says about the configuration, named by its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    /// Dotted key as in the file, e.g. `route[1]` or `network.trusted_proxies[0]`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = match self.severity {
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        write!(f, "{label}: {}: {}", self.key, self.message)
    }
}

/// Everything `check` found, plus notes (the certificate's names and dates).
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn count(&self, severity: Severity) -> usize {
        self.findings.iter().filter(|f| f.severity == severity).count()
    }

    /// 2 with errors; 1 with warnings when `strict`; else 0.
    pub fn exit_code(&self, strict: bool) -> u8 {
        if self.count(Severity::Error) > 0 {
            2
        } else if strict && self.count(Severity::Warning) > 0 {
            1
        } else {
            0
        }
    }

    /// The text `check` writes to stderr: notes, findings, and a verdict line naming `file`.
    pub fn render(&self, file: &str, strict: bool) -> String {
        let mut out = String::new();
        for note in &self.notes {
            out.push_str(&format!("note: {note}\n"));
        }
        for finding in &self.findings {
            out.push_str(&format!("{finding}\n"));
        }
        let (errors, warnings) = (self.count(Severity::Error), self.count(Severity::Warning));
        let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
        let verdict = match self.exit_code(strict) {
            2 => format!("{}, {}: check failed", plural(errors, "error"), plural(warnings, "warning")),
            1 => format!("{}: check failed (--strict)", plural(warnings, "warning")),
            _ if warnings > 0 => format!("{}: check passed", plural(warnings, "warning")),
            _ => "check passed".to_string(),
        };
        out.push_str(&format!("{file}: {verdict}\n"));
        out
    }
}

/// Runs every check on a validated config: settings, then the TLS files against `now`.
pub fn run(config: &Config, source: &SourceInfo, now: SystemTime) -> Report {
    let mut report = Report { findings: settings(config, source), notes: Vec::new() };
    certificate(config, now, &mut report);
    report
}

fn warning(key: impl Into<String>, message: impl Into<String>) -> Finding {
    Finding { severity: Severity::Warning, key: key.into(), message: message.into() }
}

fn error(key: impl Into<String>, message: impl Into<String>) -> Finding {
    Finding { severity: Severity::Error, key: key.into(), message: message.into() }
}

fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Risky settings, each a warning. Pure: reads only the config (secrets as set or not).
pub fn settings(config: &Config, source: &SourceInfo) -> Vec<Finding> {
    let mut out = Vec::new();
    open_token_routes(config, source, &mut out);

    for (i, net) in config.network.trusted_proxies.iter().enumerate() {
        let key = format!("network.trusted_proxies[{i}]");
        if net.prefix_len() == 0 {
            out.push(warning(
                key,
                format!(
                    "{net} trusts every address: any client can write its own X-Forwarded-For and choose \
                     the IP that allowlists, restrict_ip and per-IP limits judge; list only your load \
                     balancer's addresses"
                ),
            ));
        } else if !is_private(net) {
            out.push(warning(
                key,
                format!(
                    "{net} holds public addresses: whoever sends from there chooses the client IP through \
                     X-Forwarded-For; list only your own load balancer's (private) addresses"
                ),
            ));
        }
    }

    let listen = config.server.listen;
    if config.server.tls.is_none() && !listen.ip().is_loopback() {
        out.push(warning(
            "server.listen",
            format!(
                "{listen} serves plain HTTP on a non-loopback address: API keys cross the network in clear; \
                 set server.tls_cert and server.tls_key, or listen on 127.0.0.1 behind a TLS proxy"
            ),
        ));
    }
    if config.server.tls.is_some() && config.server.self_signed_if_missing {
        out.push(warning(
            "server.self_signed_if_missing",
            "is true: if the certificate files go missing the gateway serves a self-signed certificate \
             clients do not trust (development only)",
        ));
    }

    let auth = &config.auth;
    if auth.stale_if_error < auth.cache_ttl {
        out.push(warning(
            "auth.stale_if_error",
            format!(
                "{} is shorter than auth.cache_ttl {}: an entry is already older than that when it needs \
                 re-verifying, so it never applies and a Frappe outage fails every key as its cache \
                 entry expires",
                human(auth.stale_if_error),
                human(auth.cache_ttl)
            ),
        ));
    }

    let frappe = &config.frappe;
    if frappe.sync_token.is_none() {
        out.push(warning(
            "frappe.sync_token_env",
            format!(
                "{} is not set in the environment: no credential sync, so disabled users and regenerated \
                 keys keep working until their cache entry expires (auth.cache_ttl {}) or a webhook arrives",
                source.sync_token_env,
                human(auth.cache_ttl)
            ),
        ));
    }
    if frappe.webhook_secret.is_none() {
        out.push(warning(
            "frappe.webhook_secret_env",
            format!(
                "{} is not set in the environment: POST /hooks/frappe is disabled, so a disabled user or a \
                 regenerated key is noticed only at the next sync or cache expiry",
                source.webhook_secret_env
            ),
        ));
    }

    let admin = config.admin.listen;
    if !admin.ip().is_loopback() {
        out.push(warning(
            "admin.listen",
            format!(
                "{admin} is not a loopback address: /metrics, /readyz and POST /hooks/frappe are reachable \
                 from the network; keep this port on a private network (container network, firewall)"
            ),
        ));
    }
    out
}

/// Token routes that every address may reach (their own `allow`, then `network.allow`) with
/// no rate limit on them: a leaked key could be used from anywhere, without limit.
fn open_token_routes(config: &Config, source: &SourceInfo, out: &mut Vec<Finding>) {
    let network_all = everyone(&config.network.allow);
    let rl = &config.rate_limit;
    let unlimited = |route_ip: Option<&Rate>, route_key: Option<&Rate>| {
        route_ip.is_none() && route_key.is_none() && rl.per_ip.is_none() && rl.per_key.is_none()
    };
    let network_why = || match network_all {
        Some(i) => format!("network.allow[{i}] is {}", config.network.allow[i]),
        None => "network.allow is empty".to_string(),
    };
    // A network.allow that leaves some addresses out closes every route to them.
    let network_open = network_all.is_some() || config.network.allow.is_empty();
    let tokens = config.routes.iter().filter(|r| r.auth == AuthMode::Token);
    for route in tokens {
        if !network_open || !unlimited(route.per_ip.as_ref(), route.per_key.as_ref()) {
            continue;
        }
        let key = source.route_key(&route.path);
        let why = match everyone(&route.allow) {
            Some(j) => format!("{key}.allow[{j}] is {}", route.allow[j]),
            None if route.allow.is_empty() => format!("{} and the route sets no allow", network_why()),
            None => continue,
        };
        out.push(warning(
            key,
            format!(
                "token route {:?} accepts every address ({why}) and has no rate limit (no per_ip or \
                 per_key on the route or in [rate_limit]): a leaked key works from anywhere, without limit",
                route.path
            ),
        ));
    }
    // Paths no route matches need a token too (the implicit route "/").
    let has_root = config.routes.iter().any(|r| r.path == "/");
    if !has_root && network_open && unlimited(None, None) {
        let key = match network_all {
            Some(i) => format!("network.allow[{i}]"),
            None => "network.allow".to_string(),
        };
        out.push(warning(
            key,
            format!(
                "paths no [[route]] matches need a token and accept every address ({}) with no rate \
                 limit: set rate_limit.per_ip / per_key or narrow network.allow",
                network_why()
            ),
        ));
    }
}

/// Index of a `0.0.0.0/0` or `::/0` in `nets`.
fn everyone(nets: &[IpNet]) -> Option<usize> {
    nets.iter().position(|n| n.prefix_len() == 0)
}

/// Loopback, RFC 1918, link-local, CGNAT (100.64/10), IPv6 unique-local and link-local.
fn is_private(net: &IpNet) -> bool {
    const PRIVATE: &[&str] = &[
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "169.254.0.0/16",
        "100.64.0.0/10",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
    ];
    let net = match net.addr() {
        // ::ffff:10.0.0.0/104 is 10.0.0.0/8.
        IpAddr::V6(v6) if net.prefix_len() >= 96 => match v6.to_ipv4_mapped() {
            Some(v4) => IpNet::new(IpAddr::V4(v4), net.prefix_len() - 96).unwrap_or(*net),
            None => *net,
        },
        _ => *net,
    };
    PRIVATE.iter().filter_map(|p| p.parse::<IpNet>().ok()).any(|p| p.contains(&net))
}

/// The TLS files: present, readable, parse, key matches, valid now; a note with the names.
fn certificate(config: &Config, now: SystemTime, report: &mut Report) {
    let Some(files) = &config.server.tls else { return };
    let missing = tls::missing_files(files);
    if !missing.is_empty() {
        let names: Vec<String> = missing.iter().map(|p| p.display().to_string()).collect();
        if config.server.self_signed_if_missing {
            report.findings.push(warning(
                "server.tls_cert",
                format!(
                    "{} missing: at start the gateway writes a self-signed pair there \
                     (server.self_signed_if_missing), which clients do not trust",
                    names.join(", ")
                ),
            ));
        } else {
            for path in &missing {
                let key = if *path == files.key.as_path() { "server.tls_key" } else { "server.tls_cert" };
                report.findings.push(error(
                    key,
                    format!(
                        "{} does not exist; `frappe-gateway gen-cert` writes a development pair",
                        path.display()
                    ),
                ));
            }
        }
        return;
    }
    match tls::inspect(files) {
        Ok(info) => judge_certificate(&files.cert.display().to_string(), &info, now, report),
        Err(e) => {
            let key = match e.file {
                TlsFile::Cert => "server.tls_cert",
                TlsFile::Key => "server.tls_key",
            };
            report.findings.push(error(key, e.message));
        }
    }
}

/// Dates and names of a certificate that loaded.
pub fn judge_certificate(path: &str, info: &CertificateInfo, now: SystemTime, report: &mut Report) {
    let date = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
    let sans = if info.sans.is_empty() { "none".to_string() } else { info.sans.join(", ") };
    let left = info.not_after.duration_since(now).ok();
    report.notes.push(format!(
        "certificate {path}: subject {}; issuer {}; SANs {sans}; valid {} to {}{}; {} in the chain; the key \
         matches",
        info.subject,
        info.issuer,
        date(info.not_before),
        date(info.not_after),
        left.map_or(String::new(), |d| format!(" ({} days left)", d.as_secs() / 86_400)),
        info.chain_len,
    ));
    match left {
        None => report.findings.push(error(
            "server.tls_cert",
            format!("{path} expired on {}; clients refuse it", date(info.not_after)),
        )),
        Some(d) if d < EXPIRY_WARNING => report.findings.push(warning(
            "server.tls_cert",
            format!(
                "{path} expires on {} ({} days left): renewal seems not to be working",
                date(info.not_after),
                d.as_secs() / 86_400
            ),
        )),
        Some(_) => {}
    }
    if info.not_before > now {
        report.findings.push(error(
            "server.tls_cert",
            format!(
                "{path} is not valid before {}; clients refuse it (check the clock)",
                date(info.not_before)
            ),
        ));
    }
    if info.sans.is_empty() {
        report.findings.push(warning(
            "server.tls_cert",
            format!("{path} has no subject alternative names: browsers and most clients ignore the CN"),
        ));
    }
    if info.self_signed {
        report.findings.push(warning(
            "server.tls_cert",
            format!("{path} is self-signed: clients do not trust it unless told to"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    const BASE: &str = "[server]\nlisten = \"127.0.0.1:8443\"\n[admin]\nlisten = \"127.0.0.1:9901\"\n\
                        [upstream]\nurl = \"http://127.0.0.1:8000\"\n[rate_limit]\nper_ip = \"600/min\"\n";

    fn env(name: &str) -> Option<String> {
        match name {
            "GATEWAY_SYNC_TOKEN" => Some("k:s".into()),
            "GATEWAY_WEBHOOK_SECRET" => Some("w".into()),
            _ => None,
        }
    }

    fn findings(src: &str) -> Vec<Finding> {
        let config = parse(src, "g.toml", &env).unwrap_or_else(|e| panic!("{e}"));
        settings(&config, &SourceInfo::read("g.toml", src))
    }

    fn keys(src: &str) -> Vec<String> {
        findings(src).into_iter().map(|f| f.key).collect()
    }

    #[test]
    fn a_quiet_config_has_no_findings() {
        assert_eq!(findings(BASE), []);
    }

    #[test]
    fn open_token_route_without_limits() {
        let no_limit = BASE.replace("[rate_limit]\nper_ip = \"600/min\"\n", "");
        let src = format!(
            "{no_limit}[[route]]\npath = \"/a/\"\nauth = \"public\"\n[[route]]\npath = \"/api/\"\nauth = \"token\"\n\
             allow = [\"10.0.0.0/8\", \"0.0.0.0/0\"]\n[[route]]\npath = \"/x/\"\nauth = \"token\"\nallow = [\"10.0.0.0/8\"]\n"
        );
        let f = findings(&src);
        assert_eq!(f[0].key, "route[1]", "{f:?}");
        assert!(f[0].message.contains("route[1].allow[1] is 0.0.0.0/0"), "{f:?}");
        // The implicit route for unmatched paths, open through an empty network.allow.
        assert_eq!(f[1].key, "network.allow", "{f:?}");
        assert_eq!(f.len(), 2, "{f:?}");
        // A limit anywhere (route or global) silences it.
        let limited = src
            .replace("allow = [\"10.0.0.0/8\", \"0.0.0.0/0\"]", "allow = [\"::/0\"]\nper_key = \"10/min\"");
        assert_eq!(keys(&limited), ["network.allow"]);
        let global = src.replace(&no_limit, BASE);
        assert_eq!(findings(&global), []);
        // A route open through network.allow 0.0.0.0/0.
        let src = format!(
            "{no_limit}[network]\nallow = [\"0.0.0.0/0\"]\n[[route]]\npath = \"/api/\"\nauth = \"token\"\n"
        );
        let f = findings(&src);
        assert_eq!(f[0].key, "route[0]");
        assert!(f[0].message.contains("network.allow[0] is 0.0.0.0/0 and the route sets no allow"), "{f:?}");
        assert_eq!(f[1].key, "network.allow[0]");
        // A restrictive network.allow closes every route.
        let src = format!(
            "{no_limit}[network]\nallow = [\"10.0.0.0/8\"]\n[[route]]\npath = \"/api/\"\nauth = \"token\"\n"
        );
        assert_eq!(findings(&src), []);
    }

    #[test]
    fn trusted_proxies_public_or_all() {
        let src = format!(
            "{BASE}[network]\ntrusted_proxies = [\"10.0.0.0/8\", \"0.0.0.0/0\", \"203.0.113.0/24\", \"::/0\", \
             \"fd00::/8\", \"::ffff:192.168.1.0/120\", \"10.0.0.0/7\"]\n"
        );
        let f = findings(&src);
        let keys: Vec<&str> = f.iter().map(|f| f.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "network.trusted_proxies[1]",
                "network.trusted_proxies[2]",
                "network.trusted_proxies[3]",
                "network.trusted_proxies[6]"
            ]
        );
        assert!(f[0].message.contains("trusts every address"));
        assert!(f[1].message.contains("public addresses"));
    }

    #[test]
    fn plain_http_off_loopback_and_admin_off_loopback() {
        let src = BASE.replace("127.0.0.1:8443", "0.0.0.0:8443").replace("127.0.0.1:9901", "[::]:9901");
        assert_eq!(keys(&src), ["server.listen", "admin.listen"]);
        let src = BASE.replace("127.0.0.1:8443", "[::1]:8443");
        assert_eq!(findings(&src), []);
    }

    #[test]
    fn stale_if_error_below_cache_ttl() {
        let f = findings(&format!("{BASE}[auth]\ncache_ttl = \"10m\"\nstale_if_error = \"5m\"\n"));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].key, "auth.stale_if_error");
        assert!(f[0].message.contains("5m is shorter than auth.cache_ttl 10m"), "{f:?}");
        assert_eq!(findings(&format!("{BASE}[auth]\ncache_ttl = \"10m\"\nstale_if_error = \"10m\"\n")), []);
    }

    #[test]
    fn missing_secrets_name_their_variables() {
        let src =
            format!("{BASE}[frappe]\nsync_token_env = \"FGW_NONE_1\"\nwebhook_secret_env = \"FGW_NONE_2\"\n");
        let f = findings(&src);
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].key, "frappe.sync_token_env");
        assert!(f[0].message.starts_with("FGW_NONE_1 is not set"), "{f:?}");
        assert_eq!(f[1].key, "frappe.webhook_secret_env");
        assert!(f[1].message.starts_with("FGW_NONE_2 is not set"), "{f:?}");
    }

    #[test]
    fn exit_codes_and_verdicts() {
        let mut report = Report::default();
        assert_eq!((report.exit_code(false), report.exit_code(true)), (0, 0));
        assert!(report.render("g.toml", false).ends_with("g.toml: check passed\n"));
        report.findings.push(warning("a", "b"));
        assert_eq!((report.exit_code(false), report.exit_code(true)), (0, 1));
        assert!(report
            .render("g.toml", true)
            .contains("warning: a: b\ng.toml: 1 warning: check failed (--strict)"));
        report.findings.push(error("c", "d"));
        assert_eq!((report.exit_code(false), report.exit_code(true)), (2, 2));
        assert!(report.render("g.toml", false).ends_with("1 error, 1 warning: check failed\n"));
    }

    #[test]
    fn certificate_dates() {
        let day = Duration::from_secs(86_400);
        let now = SystemTime::UNIX_EPOCH + 1000 * day;
        let info = |from: u32, to: u32| CertificateInfo {
            subject: "CN=x".into(),
            issuer: "CN=ca".into(),
            sans: vec!["x".into()],
            not_before: SystemTime::UNIX_EPOCH + from * day,
            not_after: SystemTime::UNIX_EPOCH + to * day,
            chain_len: 2,
            self_signed: false,
        };
        let judge = |i: CertificateInfo| {
            let mut r = Report::default();
            judge_certificate("c.pem", &i, now, &mut r);
            r
        };
        let ok = judge(info(900, 1100));
        assert_eq!(ok.findings, []);
        assert!(
            ok.notes[0]
                .contains("SANs x; valid 1972-06-19T00:00:00Z to 1973-01-05T00:00:00Z (100 days left)"),
            "{:?}",
            ok.notes
        );
        let expired = judge(info(900, 999));
        assert_eq!(expired.findings[0].severity, Severity::Error);
        assert!(expired.findings[0].message.contains("expired on"));
        let soon = judge(info(900, 1005));
        assert_eq!(soon.findings[0].severity, Severity::Warning);
        assert!(soon.findings[0].message.contains("5 days left"), "{:?}", soon.findings);
        let future = judge(info(1001, 1100));
        assert!(future.findings[0].message.contains("not valid before"));
    }
}
