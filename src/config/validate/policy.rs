//! Validation of the policy sections: `[rate_limit]`, `[[route]]`, `[[user]]`, `[log]`.

use super::*;

impl Validator<'_> {
    pub(super) fn rate_limit(&mut self, r: &RawRateLimit) -> RateLimitConfig {
        let backend = self
            .value("rate_limit.backend", &r.backend, |b| match b.as_str() {
                "local" => Ok(RateLimitBackend::Local),
                "redis" => Ok(RateLimitBackend::Redis),
                other => Err(format!("unknown backend {other:?}; expected \"local\" or \"redis\"")),
            })
            .unwrap_or(RateLimitBackend::Local);
        let redis = backend == RateLimitBackend::Redis;
        let redis_url =
            self.secret_env("rate_limit.redis_url_env", &r.redis_url_env, "GATEWAY_REDIS_URL", redis);
        let redis_url = if redis { redis_url } else { None };
        let redis_url = redis_url.and_then(|url| self.redis_url_shape(&r.redis_url_env, url));
        RateLimitConfig {
            backend,
            redis_url,
            redis_timeout: self.duration("rate_limit.redis_timeout", &r.redis_timeout, "50ms"),
            per_key: self.rate("rate_limit.per_key", &r.per_key),
            per_ip: self.rate("rate_limit.per_ip", &r.per_ip),
            failed_auth_per_ip: self.rate("rate_limit.failed_auth_per_ip", &r.failed_auth_per_ip),
            lockout: self.duration("rate_limit.lockout", &r.lockout, "10m"),
        }
    }

    /// The Redis URL must parse the way the Redis client reads it, so a typo is a config
    /// error (exit 2) here rather than a failure at start; the message never shows the URL,
    /// which may hold a password.
    fn redis_url_shape(&mut self, raw: &S<String>, url: Secret) -> Option<Secret> {
        use redis::IntoConnectionInfo as _;
        match url.expose().into_connection_info() {
            Ok(_) => Some(url),
            Err(e) => {
                let span = raw.as_ref().map(|s| s.span());
                // Display is "<description>- <kind>"; the descriptions are fixed texts.
                let text = e.to_string();
                let why = text.split_once("- ").map_or(text.as_str(), |(d, _)| d).trim().to_string();
                self.issue(
                    "rate_limit.redis_url_env",
                    span,
                    format!(
                        "the variable's value is not a Redis URL ({why}); use e.g. \"redis://host:6379/0\" \
                         or \"redis://:password@host:6379/0\""
                    ),
                );
                None
            }
        }
    }

    pub(super) fn routes(&mut self, raw: &[Spanned<RawRoute>]) -> Vec<Route> {
        let mut routes = Vec::with_capacity(raw.len());
        for (i, r) in raw.iter().enumerate() {
            let k = |field: &str| format!("route[{i}].{field}");
            let span = r.span();
            let r = r.get_ref();
            let path = self.value(&k("path"), &r.path, |p| {
                if p.starts_with('/') {
                    Ok(p.clone())
                } else {
                    Err(format!("{p:?} must start with '/'"))
                }
            });
            if r.path.is_none() {
                self.issue(&k("path"), Some(span.clone()), "is required");
            }
            if r.auth.is_none() {
                self.issue(&k("auth"), Some(span), "is required: \"token\", \"public\" or \"deny\"");
            }
            let auth = self.value(&k("auth"), &r.auth, |a| match a.as_str() {
                "token" => Ok(AuthMode::Token),
                "public" => Ok(AuthMode::Public),
                "deny" => Ok(AuthMode::Deny),
                other => {
                    Err(format!("unknown auth mode {other:?}; expected \"token\", \"public\" or \"deny\""))
                }
            });
            let route = Route {
                path: path.unwrap_or_default(),
                auth: auth.unwrap_or(AuthMode::Deny),
                allow: self.cidrs(&k("allow"), &r.allow).unwrap_or_default(),
                per_ip: self.rate(&k("per_ip"), &r.per_ip),
                per_key: self.rate(&k("per_key"), &r.per_key),
                upstream: self.url(&k("upstream"), &r.upstream),
                forward_authorization: r.forward_authorization,
            };
            if let Some(dup) =
                routes.iter().position(|x: &Route| x.path == route.path && !route.path.is_empty())
            {
                let span = r.path.as_ref().map(|p| p.span());
                self.issue(&k("path"), span, format!("duplicates route[{dup}].path {:?}", route.path));
            }
            routes.push(route);
        }
        // Longest prefix first: the first match is the most specific.
        routes.sort_by_key(|r| std::cmp::Reverse(r.path.len()));
        routes
    }

    pub(super) fn users(&mut self, raw: &[Spanned<RawUser>]) -> Vec<UserPolicy> {
        let mut users = Vec::with_capacity(raw.len());
        for (i, u) in raw.iter().enumerate() {
            let k = |field: &str| format!("user[{i}].{field}");
            let span = u.span();
            let u = u.get_ref();
            let Some(name) = u.name.as_ref().map(|n| n.get_ref().trim().to_string()) else {
                self.issue(&k("name"), Some(span), "is required (the Frappe user name, e.g. an email)");
                continue;
            };
            let methods = u.methods.as_ref().map(|list| {
                list.iter()
                    .enumerate()
                    .filter_map(|(j, m)| {
                        self.value(&format!("{}[{j}]", k("methods")), &Some(m.clone()), |s| parse_method(s))
                    })
                    .collect()
            });
            users.push(UserPolicy {
                name,
                allow: self.cidrs(&k("allow"), &u.allow).unwrap_or_default(),
                methods: methods.unwrap_or_default(),
                per_key: self.rate(&k("per_key"), &u.per_key),
                doctypes: u.doctypes.clone(),
                rpc: u.rpc.clone(),
            });
        }
        users
    }

    pub(super) fn log(&mut self, l: &RawLog) -> LogConfig {
        let access = match l.access.as_ref().map(|a| a.get_ref().as_str()) {
            None | Some("stdout") => AccessLogTarget::Stdout,
            Some("off") => AccessLogTarget::Off,
            Some(path) => AccessLogTarget::File(PathBuf::from(path)),
        };
        let level = self
            .value("log.level", &l.level, |lv| match lv.as_str() {
                "error" | "warn" | "info" | "debug" | "trace" => Ok(lv.clone()),
                other => Err(format!("unknown level {other:?}; expected error, warn, info, debug or trace")),
            })
            .unwrap_or_else(|| "info".to_string());
        LogConfig { access, level, full_api_key: l.full_api_key.unwrap_or(false) }
    }
}
