//! Attacks on the client-IP, allowlist, rate-limit and failed-auth-lockout code, over real
//! sockets on 127.0.0.1 (the in-process gateway in front of the fake Frappe), from an audit.
//!
//! Tests named `fixed_*` are findings of that audit (each failed before its fix): a non-ASCII
//! byte in X-Forwarded-For made the trusted proxy the client; a call's own route (its
//! `per_ip`, allowlist) did not apply to other spellings of the call. Tests named `refused_*`
//! are attacks the gateway already refused, kept where they add coverage that
//! `tests/policy_e2e.rs`, `tests/auth_e2e.rs` and `tests/redis_e2e.rs` do not have.
//!
//! The gateway's TCP peer is always 127.0.0.1 here. Where a test puts `127.0.0.0/8` in
//! `network.trusted_proxies`, the test client plays the trusted reverse proxy (nginx, Envoy, an
//! AWS ALB…) and sends the `X-Forwarded-For` line that proxy would send: the header the remote
//! client sent, then `", "` and the address the proxy saw (nginx's
//! `$proxy_add_x_forwarded_for`), on one line.

mod common;

use std::time::Duration;

use common::*;
use http::HeaderValue;

const USER: &str = "api.user@example.com";
const KEY: &str = "0a1b2c3d4e5f607";
const SECRET: &str = "9f8e7d6c5b4a392";
const SYNC_USER: &str = "gateway-sync@example.com";
const SYNC_KEY: &str = "5e5e5e5e5e5e5e5";
const SYNC_SECRET: &str = "7a7a7a7a7a7a7a7";

/// The remote client the trusted proxy saw (not in any allowlist of these tests).
const ATTACKER: &str = "203.0.113.9";

struct Setup {
    frappe: FakeFrappe,
    gateway: Gateway,
    certs: Certs,
}

/// A fake with one integration user (and a sync user, so `restrict_ip` is read from the first
/// request), and a TLS gateway with `lines` set in its tables and `extra` appended.
async fn setup(lines: &[(&str, &str)], extra: &str) -> Setup {
    setup_with(lines, extra, |_| {}).await
}

/// [`setup`], with `prepare` run on the fake before the gateway starts (and first syncs).
async fn setup_with(lines: &[(&str, &str)], extra: &str, prepare: impl FnOnce(&FakeFrappe)) -> Setup {
    let frappe = FakeFrappe::start().await;
    frappe.add_user(USER, KEY, SECRET);
    frappe.add_sync_user(SYNC_USER, SYNC_KEY, SYNC_SECRET);
    prepare(&frappe);
    let certs = Certs::generate();
    let mut builder = ConfigBuilder::new(&frappe.url()).tls(&certs).set("frappe", "sync_interval = \"1h\"");
    for (table, line) in lines {
        builder = builder.set(table, line);
    }
    let sync_token = format!("{SYNC_KEY}:{SYNC_SECRET}");
    let envs = [("GATEWAY_SYNC_TOKEN", sync_token.as_str())];
    let gateway = Gateway::start(&builder.extra(extra).build(), &envs).await;
    Setup { frappe, gateway, certs }
}

impl Setup {
    fn client(&self, version: HttpVersion) -> reqwest::Client {
        https_client(&self.certs.ca_pem, version)
    }

    /// GET `path` with the given `X-Forwarded-For` lines (raw bytes, in order) and Authorization.
    async fn get_raw(
        &self,
        version: HttpVersion,
        path: &str,
        xff: &[&[u8]],
        auth: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self.client(version).get(format!("{}{path}", self.gateway.base_url()));
        for line in xff {
            req = req.header("x-forwarded-for", HeaderValue::from_bytes(line).expect("header value"));
        }
        if let Some(auth) = auth {
            req = req.header("authorization", auth);
        }
        req.send().await.expect("gateway answers")
    }

    async fn status(&self, path: &str, xff: Option<&str>, auth: Option<&str>) -> u16 {
        let lines: Vec<&[u8]> = xff.iter().map(|s| s.as_bytes()).collect();
        self.get_raw(HttpVersion::Http2, path, &lines, auth).await.status().as_u16()
    }

    /// The `client_ip` the access log recorded for the response's request id.
    async fn logged_client_ip(&self, response: &reqwest::Response) -> String {
        let rid = response.headers()["x-request-id"].to_str().unwrap().to_string();
        let line = self
            .gateway
            .wait_for_access_log(|l| l["request_id"] == rid.as_str(), Duration::from_secs(5))
            .await
            .expect("access-log line");
        line["client_ip"].as_str().unwrap_or_default().to_string()
    }

    /// Requests the fake received whose URI contains `needle`.
    fn forwarded(&self, needle: &str) -> usize {
        self.frappe.requests().iter().filter(|r| r.uri.to_string().contains(needle)).count()
    }
}

fn token() -> String {
    token_header(KEY, SECRET)
}

fn versions() -> [HttpVersion; 2] {
    [HttpVersion::Http1Only, HttpVersion::Http2]
}

// ---------------------------------------------------------------------------------------------
// Finding 1: one non-visible-ASCII byte anywhere in an X-Forwarded-For *line* makes the gateway
// give up on the whole line and take the trusted proxy itself as the client
// (src/policy/client_ip.rs `let Ok(line) = line.to_str() else { return client }`).
// A trusted proxy that appends to the client's own header (nginx, Envoy, ALB) forwards
// "<client's bytes>, <real address>": the real address, right-most and well-formed, is lost.
// ---------------------------------------------------------------------------------------------

/// The route allowlist of the sample `gateway.toml` (`/api/` admits 127/8, 10/8, 192.168/16)
/// with a local reverse proxy in `trusted_proxies`: an Internet client is refused — unless it
/// puts one byte ≥ 0x80 (here "é", or a bare 0xff) in its own X-Forwarded-For.
#[tokio::test]
async fn fixed_non_ascii_xff_entry_no_longer_bypasses_the_route_allowlist() {
    let extra = "[[route]]\npath = \"/api/\"\nauth = \"token\"\n\
                 allow = [\"127.0.0.0/8\", \"::1/128\", \"10.0.0.0/8\", \"192.168.0.0/16\"]\n";
    let s = setup(&[("network", "trusted_proxies = [\"127.0.0.0/8\"]")], extra).await;
    let auth = token();
    let mut bypasses = Vec::new();
    for version in versions() {
        // Control: the proxy's line for a client that sent nothing, or ASCII garbage.
        for line in [ATTACKER.to_string(), format!("1.2.3.4, {ATTACKER}"), format!("garbage, {ATTACKER}")] {
            let resp = s.get_raw(version, "/api/resource/ToDo", &[line.as_bytes()], Some(&auth)).await;
            assert_eq!(resp.status(), 403, "{version:?} {line:?}: {ATTACKER} is outside route.allow");
        }
        for line in
            [format!("é, {ATTACKER}").into_bytes(), [b"\xff, ".as_slice(), ATTACKER.as_bytes()].concat()]
        {
            let resp = s.get_raw(version, "/api/resource/ToDo", &[&line], Some(&auth)).await;
            let status = resp.status().as_u16();
            let client_ip = s.logged_client_ip(&resp).await;
            if (status, client_ip.as_str()) != (403, ATTACKER) {
                bypasses.push(format!(
                    "{version:?} X-Forwarded-For {:?}: client resolved to {client_ip}, status {status}",
                    String::from_utf8_lossy(&line)
                ));
            }
        }
    }
    assert!(
        bypasses.is_empty(),
        "the right-most entry is {ATTACKER} (outside route.allow), but the gateway took the trusted \
         proxy itself as the client:\n{}",
        bypasses.join("\n")
    );
}

/// README, "Setting up the Frappe side": contain the System Manager sync key with a `[[user]]`
/// entry whose `allow` admits no client network (`allow = ["127.0.0.1/32"]`). With a reverse
/// proxy on the same host in `trusted_proxies`, one non-ASCII byte in X-Forwarded-For makes an
/// Internet client 127.0.0.1 and the contained key usable again.
#[tokio::test]
async fn fixed_non_ascii_xff_entry_no_longer_bypasses_user_allow_containment() {
    let extra = format!("[[user]]\nname = \"{SYNC_USER}\"\nallow = [\"127.0.0.1/32\"]\n");
    let s = setup(&[("network", "trusted_proxies = [\"127.0.0.0/8\"]")], &extra).await;
    let sync_key = token_header(SYNC_KEY, SYNC_SECRET);
    let plain = format!("6.6.6.6, {ATTACKER}");
    assert_eq!(
        s.status("/api/resource/ToDo", Some(&plain), Some(&sync_key)).await,
        403,
        "control: the contained key is refused from {ATTACKER}"
    );
    let tricked = format!("ß, {ATTACKER}");
    let resp =
        s.get_raw(HttpVersion::Http1Only, "/api/resource/ToDo", &[tricked.as_bytes()], Some(&sync_key)).await;
    let status = resp.status().as_u16();
    let upstream = s.frappe.last_request_to("/api/resource/ToDo").map(|r| r.header_all("x-forwarded-for"));
    assert_eq!(
        status, 403,
        "the sync user's key is contained to 127.0.0.1, yet {ATTACKER} got {status}; Frappe saw \
         X-Forwarded-For {upstream:?}"
    );
}

/// The address Frappe is told (`X-Forwarded-For`, which Frappe's own `restrict_ip` check of
/// password logins and sessions reads) must be the client's, not the proxy's: on a public
/// route the gateway forwards the request, so Frappe must see 203.0.113.9.
#[tokio::test]
async fn fixed_non_ascii_xff_entry_no_longer_spoofs_the_address_frappe_sees() {
    let extra = "[[route]]\npath = \"/api/method/login\"\nauth = \"public\"\n";
    let s = setup(&[("network", "trusted_proxies = [\"127.0.0.0/8\"]")], extra).await;
    let mut spoofed = Vec::new();
    for version in versions() {
        s.frappe.clear_requests();
        let line = format!("é, {ATTACKER}");
        let resp = s.get_raw(version, "/api/method/login", &[line.as_bytes()], None).await;
        assert_ne!(resp.status(), 403);
        let seen = s.frappe.last_request_to("/api/method/login").expect("forwarded to Frappe");
        let xff = seen.header_all("x-forwarded-for");
        if xff != [ATTACKER] {
            spoofed.push(format!("{version:?}: Frappe saw X-Forwarded-For {xff:?}"));
        }
    }
    assert!(
        spoofed.is_empty(),
        "Frappe must see the client the proxy reported ({ATTACKER}), not the proxy:\n{}",
        spoofed.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Finding 2: a route's own `per_ip` is charged only when the route is the one of the path as
// sent (src/pipeline/pre_auth.rs `limits::limit_ip(ctx, sent)`, src/pipeline/limits.rs
// `ip_rate(route, …)` called with `sent` from `lockout_and_ip` / `lockout_ip_and_key`).
// The same call spelled with `cmd`, `/api/v1/method/…` or `/api/v2/method/…` is judged by the
// route (its allowlist and deny apply) but never charged to that route's per-IP bucket.
// ---------------------------------------------------------------------------------------------

/// The sample's `/api/method/login` route with `per_ip` (brute-force protection of password
/// logins), beside another public path. Frappe's LoginManager logs in whenever
/// `form_dict.cmd == "login"`, on any path; the gateway knows (it judges the request by the
/// login route) but charges the other path's bucket.
#[tokio::test]
async fn fixed_login_per_ip_is_charged_for_cmd_login_on_another_public_path() {
    let extra = "[[route]]\npath = \"/api/method/login\"\nauth = \"public\"\nper_ip = \"3/min\"\n\n\
                 [[route]]\npath = \"/api/method/ping\"\nauth = \"public\"\n";
    let s = setup(&[], extra).await;
    // Control: the login path itself is limited to 3.
    let direct: Vec<u16> = {
        let mut out = Vec::new();
        for i in 0..4 {
            out.push(
                s.status(&format!("/api/method/login?usr=Administrator&pwd=guess{i}"), None, None).await,
            );
        }
        out
    };
    assert_eq!(direct.iter().filter(|&&st| st == 429).count(), 1, "control: {direct:?}");
    // The bucket is now empty; the same login, spelled as a cmd on another public path.
    s.frappe.clear_requests();
    let mut statuses = Vec::new();
    for i in 0..6 {
        let path = format!("/api/method/ping?cmd=login&usr=Administrator&pwd=guess{}", 100 + i);
        statuses.push(s.status(&path, None, None).await);
    }
    let reached = s.forwarded("cmd=login");
    assert_eq!(
        reached, 0,
        "the login route's per_ip (3/min) was already spent, yet {reached} password guesses with \
         cmd=login reached Frappe (statuses {statuses:?})"
    );
}

/// The sample configuration (login public with `per_ip`, `/api/` token): any holder of a
/// valid API key — even a low-privilege one — can run Frappe's password login through a token
/// path with `?cmd=login` and guess another user's password at the `/api/` rate.
#[tokio::test]
async fn fixed_login_per_ip_is_charged_for_cmd_login_on_a_token_path() {
    let extra = "[[route]]\npath = \"/api/method/login\"\nauth = \"public\"\nper_ip = \"3/min\"\n\n\
                 [[route]]\npath = \"/api/\"\nauth = \"token\"\n";
    let s = setup(&[], extra).await;
    let auth = token();
    let mut statuses = Vec::new();
    for i in 0..8 {
        let path = format!("/api/resource/ToDo?cmd=login&usr=Administrator&pwd=guess{i}");
        statuses.push(s.status(&path, None, Some(&auth)).await);
    }
    let reached = s.forwarded("cmd=login");
    assert!(
        reached <= 3,
        "the login route allows 3 per minute per IP, yet {reached} password guesses (cmd=login) \
         reached Frappe from one IP: {statuses:?}"
    );
}

/// A token method route with its own `per_ip`: its v1 and v2 spellings and a `cmd` on another
/// path run the same method (the route's `deny`/allowlist would apply to them) but are charged
/// to the `/api/` route's bucket instead.
#[tokio::test]
async fn fixed_method_route_per_ip_is_charged_for_its_other_spellings() {
    let extra =
        "[[route]]\npath = \"/api/method/frappe.client.get_list\"\nauth = \"token\"\nper_ip = \"2/min\"\n\n\
                 [[route]]\npath = \"/api/\"\nauth = \"token\"\n";
    let s = setup(&[], extra).await;
    let auth = token();
    let mut statuses = Vec::new();
    for path in [
        "/api/method/frappe.client.get_list?doctype=ToDo",
        "/api/method/frappe.client.get_list?doctype=ToDo",
        // The route's 2/min is spent: every spelling below runs frappe.client.get_list.
        "/api/v1/method/frappe.client.get_list?doctype=ToDo",
        "/api/v2/method/frappe.client.get_list?doctype=ToDo",
        "/api/resource/ToDo?cmd=frappe.client.get_list&doctype=ToDo",
        "/api/method/frappe.client.get_list?doctype=ToDo",
    ] {
        statuses.push((path, s.status(path, None, Some(&auth)).await));
    }
    assert_eq!(statuses[5].1, 429, "control: the canonical spelling is refused once spent: {statuses:?}");
    let evaded: Vec<_> = statuses[2..5].iter().filter(|(_, st)| *st != 429).collect();
    assert!(evaded.is_empty(), "spellings that escaped the route's per_ip: {evaded:?}");
}

/// The sample login route with an allowlist: a holder of any valid API key runs the password
/// login through a token path (`?cmd=login`) from outside that allowlist. The token route is
/// the stricter one (it decides authentication), but the login route's allowlist applies too.
#[tokio::test]
async fn fixed_the_call_routes_allowlist_applies_to_cmd_on_a_stricter_path() {
    let extra = "[[route]]\npath = \"/api/method/login\"\nauth = \"public\"\nallow = [\"10.0.0.0/8\"]\n\n\
                 [[route]]\npath = \"/api/\"\nauth = \"token\"\n";
    let s = setup(&[], extra).await;
    let auth = token();
    assert_eq!(s.status("/api/resource/ToDo", None, Some(&auth)).await, 200, "control");
    let path = "/api/resource/ToDo?cmd=login&usr=Administrator&pwd=guess";
    assert_eq!(s.status(path, None, Some(&auth)).await, 403);
    assert_eq!(s.forwarded("cmd=login"), 0, "the login never reached Frappe");
}

// ---------------------------------------------------------------------------------------------
// Attacks the gateway refused correctly (coverage not already in the other suites).
// ---------------------------------------------------------------------------------------------

/// X-Forwarded-For tricks from a client behind the trusted proxy, over HTTP/1.1 and HTTP/2:
/// whatever the client prepends (trusted-looking addresses, ports, brackets, zone ids, mapped
/// and IPv6 forms, empty and ASCII-garbage entries, a 300-entry chain, extra header lines), the
/// gateway resolves the right-most untrusted entry — the one the proxy appended — and tells
/// Frappe exactly that address.
#[tokio::test]
async fn refused_xff_prefixes_from_behind_a_trusted_proxy_never_move_the_client() {
    let extra = "[[route]]\npath = \"/__test/\"\nauth = \"public\"\n";
    let s = setup(&[("network", "trusted_proxies = [\"127.0.0.0/8\", \"10.0.0.0/8\"]")], extra).await;
    let long_chain = (0..300).map(|i| format!("10.0.{}.{}", i / 250, i % 250)).collect::<Vec<_>>().join(", ");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec![format!("10.0.0.7, {ATTACKER}")], ATTACKER),
        (vec![format!("127.0.0.1:80, [::1]:443, {ATTACKER}")], ATTACKER),
        (vec![format!("fe80::1%eth0, {ATTACKER}")], ATTACKER),
        (vec![format!("::ffff:10.0.0.1,,  , {ATTACKER}")], ATTACKER),
        (vec![format!("for=10.0.0.1;proto=https, {ATTACKER}")], ATTACKER),
        (vec![format!("{long_chain}, {ATTACKER}")], ATTACKER),
        (vec!["10.0.0.1".into(), format!("{ATTACKER}")], ATTACKER),
        (vec![format!("10.0.0.1, {ATTACKER}"), "10.0.0.2".into()], ATTACKER),
        (vec![format!("1.2.3.4, ::ffff:{ATTACKER}")], ATTACKER),
        (vec![format!("1.2.3.4, [2001:db8::9]:1234")], "2001:db8::9"),
    ];
    for version in versions() {
        for (lines, want) in &cases {
            s.frappe.clear_requests();
            let raw: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
            let resp = s.get_raw(version, "/__test/echo", &raw, None).await;
            assert_eq!(resp.status(), 200, "{version:?} {lines:?}");
            assert_eq!(s.logged_client_ip(&resp).await, *want, "{version:?} {lines:?}");
            let seen = s.frappe.last_request_to("/__test/echo").expect("forwarded");
            assert_eq!(seen.header_all("x-forwarded-for"), vec![want.to_string()], "{version:?} {lines:?}");
        }
    }
}

/// Every spelling of a failed authentication counts towards one lockout of one address: wrong
/// token secret, wrong Basic secret, an upper-case key, an unknown Bearer token, malformed
/// headers, and the same client written as IPv4 or IPv4-mapped IPv6 by the proxy. Once locked,
/// even the valid key from that address gets 429 without a whoami; another address is not
/// affected.
#[tokio::test]
async fn refused_every_credential_form_and_address_spelling_counts_towards_one_lockout() {
    let s = setup(
        &[
            ("network", "trusted_proxies = [\"127.0.0.0/8\"]"),
            ("rate_limit", "failed_auth_per_ip = \"6/min\""),
            ("rate_limit", "lockout = \"10m\""),
        ],
        "",
    )
    .await;
    let wrong = [
        (ATTACKER.to_string(), token_header(KEY, "000000000000001")),
        (format!("::ffff:{ATTACKER}"), basic_header(KEY, "000000000000002")),
        (ATTACKER.to_string(), token_header(&KEY.to_uppercase(), "000000000000003")),
        (format!("::ffff:{ATTACKER}"), "Bearer not-a-real-token-0001".to_string()),
        (ATTACKER.to_string(), "token nocolon".to_string()),
        (format!("[::ffff:{ATTACKER}]:5555"), "Basic !!!notbase64".to_string()),
    ];
    for (xff, auth) in &wrong {
        let status = s.status("/api/resource/ToDo", Some(xff), Some(auth)).await;
        assert!([400, 401].contains(&status), "{xff} {auth}: {status}");
    }
    // The seventh failure exceeds 6/min: locked, whatever form comes next.
    let seventh = s.status("/api/resource/ToDo", Some(ATTACKER), Some(&basic_header(KEY, "x"))).await;
    assert_eq!(seventh, 429);
    let whoami = s.frappe.whoami_calls();
    assert_eq!(
        s.status("/api/resource/ToDo", Some(&format!("::ffff:{ATTACKER}")), Some(&token())).await,
        429
    );
    assert_eq!(s.frappe.whoami_calls(), whoami, "a locked-out address never reaches Frappe");
    assert_eq!(s.status("/api/resource/ToDo", Some("198.51.100.7"), Some(&token())).await, 200, "bystander");
}

/// `restrict_ip` as Frappe's `validate_ip_address` reads it (`request_ip.startswith(entry)`
/// for each comma-separated, stripped entry), with the documented CIDR / exact-address
/// entries, for IPv4, IPv4-mapped and IPv6 clients named by the trusted proxy. `"10.1"` admits
/// 10.10.0.1 exactly as Frappe does; what Frappe would admit through an empty entry
/// (`"".startswith` → every address) stays refused.
#[tokio::test]
async fn refused_restrict_ip_matches_frappe_prefix_semantics_for_every_address_form() {
    let cases: &[(&str, &[(&str, u16)])] = &[
        (
            "10.1",
            &[
                ("10.1.2.3", 200),
                ("10.10.0.1", 200),
                ("::ffff:10.19.0.1", 200),
                ("10.2.0.1", 403),
                ("110.1.0.1", 403),
            ],
        ),
        (
            "2001:db8:",
            &[("2001:db8::5", 200), ("2001:db80::5", 403), ("2001:db9::5", 403), ("10.1.2.3", 403)],
        ),
        (
            "192.168.1.0/24, ,",
            &[("192.168.1.200", 200), ("::ffff:192.168.1.7", 200), ("192.168.10.1", 403), ("8.8.8.8", 403)],
        ),
        ("203.0.113.7", &[("203.0.113.7", 200), ("203.0.113.70", 403)]),
    ];
    let user = |i: usize| {
        (format!("restricted{i}@example.com"), format!("{:015x}", 0xabc000 + i), "123456789abcdef")
    };
    let s = setup_with(&[("network", "trusted_proxies = [\"127.0.0.0/8\"]")], "", |frappe| {
        for (i, (restrict, _)) in cases.iter().enumerate() {
            let (name, key, secret) = user(i);
            frappe.add_user(&name, &key, secret);
            frappe.set_restrict_ip(&name, Some(restrict));
        }
    })
    .await;
    for (i, (restrict, expectations)) in cases.iter().enumerate() {
        let (_, key, secret) = user(i);
        let auth = token_header(&key, secret);
        for (ip, want) in *expectations {
            let status = s.status("/api/resource/ToDo", Some(ip), Some(&auth)).await;
            assert_eq!(status, *want, "restrict_ip {restrict:?}, client {ip}");
        }
    }
}

/// A TCP forwarder to a real Redis that holds every chunk for `delay` in both directions: a
/// Redis that answers, but slower than `rate_limit.redis_timeout`.
async fn slow_forwarder(target: u16, delay: Duration) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
    async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration) {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = from.read(&mut buf).await {
            if n == 0 {
                break;
            }
            tokio::time::sleep(delay).await;
            if to.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else { continue };
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::spawn(pipe(client_read, server_write, delay));
            tokio::spawn(pipe(server_read, client_write, delay));
        }
    });
    port
}

/// Redis that answers slower than `redis_timeout` (not down): every request is still decided,
/// within about the timeout, by the documented local fallback — the per-key limit and the
/// failed-auth lockout still hold, and `/readyz` says so. (`tests/redis_e2e.rs` covers a
/// stopped Redis; this is the timeout path.)
#[tokio::test]
async fn refused_slow_redis_falls_back_to_local_limits_within_the_timeout() {
    let redis = common::redis::Redis::start();
    let port = slow_forwarder(redis.port, Duration::from_millis(400)).await;
    let url = format!("redis://127.0.0.1:{port}/0");
    let frappe = FakeFrappe::start().await;
    frappe.add_user(USER, KEY, SECRET);
    let certs = Certs::generate();
    let config = ConfigBuilder::new(&frappe.url())
        .tls(&certs)
        .set("rate_limit", "backend = \"redis\"")
        .set("rate_limit", "redis_url_env = \"FGW_AUDIT_REDIS\"")
        .set("rate_limit", "redis_timeout = \"50ms\"")
        .set("rate_limit", "per_key = \"3/min\"")
        .set("rate_limit", "failed_auth_per_ip = \"2/min\"")
        .build();
    let gateway = Gateway::start(&config, &[("FGW_AUDIT_REDIS", url.as_str())]).await;
    let client = https_client(&certs.ca_pem, HttpVersion::Http1Only);
    let send = |auth: String| {
        let req =
            client.get(format!("{}/api/resource/ToDo", gateway.base_url())).header("authorization", auth);
        async move {
            let started = std::time::Instant::now();
            let status = req.send().await.expect("gateway answers").status().as_u16();
            (status, started.elapsed())
        }
    };
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let (status, took) = send(token()).await;
        assert!(took < Duration::from_secs(2), "a slow Redis must not hold requests: {took:?}");
        statuses.push(status);
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429], "per_key 3/min still enforced");
    let mut failures = Vec::new();
    for i in 0..3 {
        failures.push(send(token_header(KEY, &format!("{i:015}"))).await.0);
    }
    assert_eq!(failures, [401, 401, 429], "the third failure exceeds 2/min and locks out");
    let ready: serde_json::Value = http_client()
        .get(format!("{}/readyz", gateway.admin_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["rate_limit"]["degraded_to_local"], true, "{ready}");
}
