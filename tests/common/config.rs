//! Minimal valid `gateway.toml` texts for tests, keys exactly as in DESIGN.md, so each test
//! writes only what it changes.
//!
//! ```ignore
//! let toml = ConfigBuilder::new(&frappe.url())
//!     .tls(&certs)
//!     .set("server", "max_header_bytes = 2048")
//!     .set("frappe", "sync_interval = \"1s\"")
//!     .extra("[[route]]\npath = \"/api/\"\nauth = \"token\"\n")
//!     .build();
//! ```

use super::certs::Certs;

/// Builds a config table by table; `set` adds `key = value` lines inside a table (creating
/// it after the defaults), `extra` is appended verbatim at the very end.
#[derive(Clone, Debug)]
pub struct ConfigBuilder {
    tables: Vec<(String, Vec<String>)>,
    extra: String,
}

impl ConfigBuilder {
    /// `[server] listen = "127.0.0.1:0"` (plain HTTP until [`ConfigBuilder::tls`]),
    /// `[admin] listen = "127.0.0.1:0"`, `[upstream] url`, `[log] access = "stdout"`.
    pub fn new(upstream_url: &str) -> ConfigBuilder {
        let table = |name: &str, lines: &[String]| (name.to_string(), lines.to_vec());
        ConfigBuilder {
            tables: vec![
                table("server", &[kv("listen", "127.0.0.1:0")]),
                table("admin", &[kv("listen", "127.0.0.1:0")]),
                table("upstream", &[kv("url", upstream_url)]),
                table("log", &[kv("access", "stdout"), kv("level", "info")]),
            ],
            extra: String::new(),
        }
    }

    /// Serve TLS with the test certificate (`tls_cert`, `tls_key`).
    pub fn tls(self, certs: &Certs) -> ConfigBuilder {
        let cert = certs.cert_path.to_string_lossy().into_owned();
        let key = certs.key_path.to_string_lossy().into_owned();
        self.set("server", &kv("tls_cert", &cert)).set("server", &kv("tls_key", &key))
    }

    /// Add a raw `key = value` line to `[table]`. A key already present is replaced, so
    /// defaults can be overridden (`.set("log", "access = \"/tmp/a.log\"")`).
    pub fn set(mut self, table: &str, line: &str) -> ConfigBuilder {
        let key = line.split('=').next().unwrap_or("").trim().to_string();
        let lines = match self.tables.iter_mut().find(|(name, _)| name == table) {
            Some((_, lines)) => lines,
            None => {
                self.tables.push((table.to_string(), Vec::new()));
                &mut self.tables.last_mut().expect("just pushed").1
            }
        };
        lines.retain(|l| l.split('=').next().unwrap_or("").trim() != key);
        lines.push(line.to_string());
        self
    }

    /// TOML appended after every table: `[[route]]`, `[[user]]`, whole new tables. It must
    /// start with a table header, or its keys would land in the last table.
    pub fn extra(mut self, toml: &str) -> ConfigBuilder {
        self.extra.push_str(toml);
        if !self.extra.ends_with('\n') {
            self.extra.push('\n');
        }
        self
    }

    pub fn build(&self) -> String {
        let mut out = String::new();
        for (name, lines) in &self.tables {
            out.push_str(&format!("[{name}]\n"));
            for line in lines {
                out.push_str(line);
                out.push('\n');
            }
            out.push('\n');
        }
        out.push_str(&self.extra);
        out
    }
}

/// One route, `/`, open to everyone: for tests about forwarding rather than authentication.
pub const PUBLIC_ROUTE: &str = "[[route]]\npath = \"/\"\nauth = \"public\"\n";

/// A minimal valid `gateway.toml`: listeners on 127.0.0.1:0, the upstream, TLS when `certs`
/// is given, access log on stdout; then `extra` appended at the END. Because a table
/// header in `extra` ends the previous table, `extra` must begin with a header such as
/// `[frappe]` or `[[route]]`; to add keys to `[server]`, `[admin]`, `[upstream]` or `[log]`
/// use [`ConfigBuilder::set`] instead.
pub fn config_for(upstream_url: &str, certs: Option<&Certs>, extra: &str) -> String {
    let mut builder = ConfigBuilder::new(upstream_url);
    if let Some(certs) = certs {
        builder = builder.tls(certs);
    }
    builder.extra(extra).build()
}

/// A TOML basic string literal.
pub fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn kv(key: &str, value: &str) -> String {
    format!("{key} = {}", toml_str(value))
}
