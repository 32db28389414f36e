//! How the store follows Frappe: revocations (webhooks, other instances) and user syncs drop
//! or re-judge cached credentials.

use moka::ops::compute::Op;

use super::*;

impl CredentialStore {
    /// Drops every cached credential of `user` at once; a verification in flight for it
    /// lands dead in the cache. Its next request is verified again, and never served stale.
    pub fn revoke_user(&self, user: &str) {
        self.directory.mark_user(user, self.clock.now());
        let user: Arc<str> = Arc::from(user);
        self.drop_entries(move |e| e.user == user);
    }

    /// Drops the cached credential of one api_key (any case).
    pub fn revoke_key(&self, api_key: &str) {
        let key: Arc<str> = Arc::from(lowercase_key(api_key));
        self.directory.mark_key(&key, self.clock.now());
        self.drop_entries(move |e| !e.bearer() && e.key == key);
    }

    /// Takes a full user list from sync: records each user's state and drops cached
    /// credentials whose key vanished, whose user is disabled or whose `modified` changed
    /// (also credentials cached before their user was first synced).
    pub fn apply_sync(&self, users: &[SyncedUser]) {
        let now = self.clock.now();
        self.apply_sync_fetched(users, &HashSet::new(), now);
    }

    /// `apply_sync` for a list whose fetch began at `fetched_from` (from [`Self::now`]) and
    /// that asked by name for the users without an api_key in `asked` (those missing from
    /// `users` are gone): users read one by one since then keep their newer record.
    pub(crate) fn apply_sync_fetched(
        &self,
        users: &[SyncedUser],
        asked: &HashSet<Arc<str>>,
        fetched_from: Instant,
    ) {
        let changed = self.directory.replace(users, asked, self.clock.now(), fetched_from);
        self.after_change(changed);
    }

    /// Takes one user's record from a read that began at `read_from` (from [`Self::now`]; a
    /// webhook refresh); `None` means the user `name` is gone or has no readable record, and
    /// its credentials are dropped. A record read later than `read_from` stays.
    pub fn apply_user(&self, user: Option<SyncedUser>, name: &str, read_from: Instant) {
        // Every save of any User in Frappe sends the webhook: a user without a key that no
        // credential has brought here is not taken in (sync would ask for every user ever
        // saved). Its first bearer token reads it then.
        let keyless = user.as_ref().is_some_and(|u| u.api_key.is_none());
        if keyless && !self.directory.knows(name, None) {
            return;
        }
        let changed = self.directory.update(name, user.as_ref(), self.clock.now(), read_from);
        self.after_change(changed);
    }

    /// The users without an api_key whose records the store follows (sync asks for them).
    pub(crate) fn keyless_users(&self) -> Vec<Arc<str>> {
        self.directory.keyless_users()
    }

    /// After sync or a refresh that marked someone: forget refusals of changed users' keys (a
    /// regenerated secret must work at once) and drop credentials that are now dead or
    /// disabled. Unchanged syncs cost nothing here: a disabled user's credential that was
    /// cached again is refused by the hit path anyway.
    pub(super) fn after_change(&self, changes: Changes) {
        if !changes.marked {
            return;
        }
        if !changes.keys.is_empty() {
            let keys: HashSet<Arc<str>> = changes.keys.into_iter().collect();
            if let Err(e) = self.negative.invalidate_entries_if(move |_, r| keys.contains(&r.key)) {
                tracing::error!(error = %e, "cannot drop refused credentials");
            }
        }
        let directory = self.directory.clone();
        self.drop_entries(move |e| {
            let view = directory.view(&e.user, e.api_key(), e.verified_at());
            view.disabled || view.revoked
        });
    }

    /// Removes matching entries now: one pass over the cache (revocations and syncs with
    /// changes are rare; never on a proxy worker). The marks set before this call already
    /// make them unusable, so removal only frees memory. An entry replaced meanwhile is judged
    /// again, so a fresh verification that landed in between stays.
    pub(super) fn drop_entries(&self, matches: impl Fn(&Entry) -> bool) {
        for (key, entry) in self.positive.iter() {
            if matches(&entry) {
                self.positive.entry(Arc::clone(&key)).and_compute_with(|current| match current {
                    Some(e) if matches(e.value()) => Op::Remove,
                    _ => Op::Nop,
                });
            }
        }
    }

    /// Frees entries older than `keep` (no window serves them: `judge` calls them dead), at
    /// most once per `keep`, on the miss path that just cached one more. Between sweeps the
    /// cache's capacity bounds them.
    pub(super) fn sweep_if_due(&self) {
        let now = self.clock.now();
        let last = self.swept.load(Ordering::Relaxed);
        if now < Stamp(last).instant() + self.keep {
            return;
        }
        let claimed =
            self.swept.compare_exchange(last, Stamp::of(now).0, Ordering::Relaxed, Ordering::Relaxed);
        if claimed.is_err() {
            return;
        }
        let keep = self.keep;
        self.drop_entries(move |e| now.saturating_duration_since(e.verified_at()) >= keep);
    }
}
