//! Authentication: Authorization header parsing, the credential store, talking to Frappe, webhooks.
//!
//! Construction: a [`FrappeClient`] (the only code that talks to Frappe) is the store's
//! [`Verify`]; [`CredentialStore::authenticate`] runs on every token request; [`spawn_sync`]
//! and [`webhook::handle_user_event`] keep the store in step with Frappe's Users.

pub mod budget;
mod digest;
mod directory;
pub mod frappe;
pub mod header;
mod outcome;
pub mod store;
pub mod sync;
pub mod webhook;

pub use budget::{OverBudget, VerifyBudget};
pub use directory::SyncedUser;
pub use frappe::{FrappeClient, SyncError, UserSource};
pub use header::{parse, Credential, HeaderError, Malformed};
pub use store::{Admitted, CredentialStore, Outcome, Rejection, Verify, VerifyError};
pub use sync::{spawn_sync, SyncReport, SyncStatus};
