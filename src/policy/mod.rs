//! Policy: real client IP, allowlists, Frappe restrict_ip, rate limits, DocType/method rules.
