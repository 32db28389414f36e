//! Authentication: Authorization header parsing, the credential store, talking to Frappe, webhooks.
