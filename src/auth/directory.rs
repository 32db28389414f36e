//! What the store knows about Frappe users besides cached credentials: the state sync last
//! reported (enabled, modified, restrict_ip, api_key) and revocation marks.
//!
//! A mark is the instant a user (or key) was revoked or changed; a cached credential verified
//! at or before it is dead, whenever its verification finished. That keeps a verification that
//! raced a revocation from bringing the credential back.
//!
//! Sync's list holds the users with an api_key. Users without one (OAuth-only users, met through
//! a bearer token) are read one by one when first seen and then asked for by name with each
//! list, so their `enabled` and `restrict_ip` are followed the same way.
//!
//! Every record remembers when the read that produced it began (`as_of`): a read that began
//! earlier — a slow webhook refresh, a list fetched before a refresh landed — is older news and
//! does not overwrite it.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

/// One User as Frappe's REST API reports it (FRAPPE.md §4). `api_key` is kept as Frappe stores
/// it and compared lowercased; `modified` is an opaque stamp; `restrict_ip` is the raw text
/// (`None` when null or empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncedUser {
    pub name: Arc<str>,
    pub enabled: bool,
    pub api_key: Option<Arc<str>>,
    pub modified: Arc<str>,
    pub restrict_ip: Option<Arc<str>>,
}

impl SyncedUser {
    /// A different key, stamp or enabled flag: cached credentials must be verified again.
    fn differs(&self, other: &SyncedUser) -> bool {
        self.modified != other.modified || self.enabled != other.enabled || self.api_key != other.api_key
    }

    fn normalized(&self) -> SyncedUser {
        let mut user = self.clone();
        if let Some(key) = &self.api_key {
            if let Cow::Owned(lower) = lowercase_key(key) {
                user.api_key = Some(Arc::from(lower));
            }
        }
        user
    }
}

/// ASCII-lowercased api_key, borrowed when it already is (Frappe generates lowercase hex).
pub(crate) fn lowercase_key(key: &str) -> Cow<'_, str> {
    if key.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(key.to_ascii_lowercase())
    } else {
        Cow::Borrowed(key)
    }
}

#[derive(Default)]
struct UserRecord {
    /// With `api_key` lowercased.
    synced: Option<SyncedUser>,
    revoked_at: Option<Instant>,
    /// When the read that set `synced` began (a list's fetch or a one-user read); `None` once
    /// older than any read that can still be in flight.
    as_of: Option<Instant>,
}

impl UserRecord {
    /// Newer than what a read that began at `read_from` can say.
    fn newer_than(&self, read_from: Instant) -> bool {
        self.as_of.is_some_and(|at| at > read_from)
    }

    /// Whether a full list is expected to hold this user: every user with an api_key is in it;
    /// a user without one only when the list asked for it by name.
    fn listed_by(&self, name: &str, asked: &HashSet<Arc<str>>) -> bool {
        self.synced.as_ref().is_some_and(|s| s.api_key.is_some()) || asked.contains(name)
    }
}

#[derive(Default)]
struct Inner {
    users: HashMap<Arc<str>, UserRecord>,
    /// Marks from `revoke_key`, by lowercased key.
    revoked_keys: HashMap<Arc<str>, Instant>,
}

/// What a sync or refresh marked.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Changes {
    /// Some user was marked: cached credentials may have died.
    pub marked: bool,
    /// The (lowercased) api_keys of marked users, before and after, without duplicates.
    pub keys: Vec<Arc<str>>,
}

/// What the hot path needs to know about a cached credential's user.
pub(crate) struct View {
    /// Sync says the user is disabled.
    pub disabled: bool,
    /// Revoked or changed since the credential was verified, or the key is no longer the user's.
    pub revoked: bool,
    pub restrict_ip: Option<Arc<str>>,
}

/// Synced user state and revocation marks behind one short-held lock (never across an await).
pub(crate) struct Directory {
    inner: RwLock<Inner>,
    /// Bumped by every mark, so verifications that began before it are not shared after it.
    epoch: AtomicU64,
    /// A mark older than this cannot outlive any cached credential it applies to.
    keep_marks: Duration,
}

impl Directory {
    pub(crate) fn new(keep_marks: Duration) -> Self {
        Directory { inner: RwLock::default(), epoch: AtomicU64::new(0), keep_marks }
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The state that applies to a credential of `user` verified at `verified_at`. `api_key`
    /// (lowercased) is `None` for bearer tokens.
    pub(crate) fn view(&self, user: &str, api_key: Option<&str>, verified_at: Instant) -> View {
        let inner = self.read();
        let key_revoked =
            api_key.and_then(|k| inner.revoked_keys.get(k)).is_some_and(|at| *at >= verified_at);
        let Some(record) = inner.users.get(user) else {
            return View { disabled: false, revoked: key_revoked, restrict_ip: None };
        };
        let user_revoked = record.revoked_at.is_some_and(|at| at >= verified_at);
        let synced = record.synced.as_ref();
        let key_moved = match (synced, api_key) {
            (Some(s), Some(key)) => s.api_key.as_deref() != Some(key),
            _ => false,
        };
        View {
            disabled: synced.is_some_and(|s| !s.enabled),
            revoked: key_revoked || user_revoked || key_moved,
            restrict_ip: synced.and_then(|s| s.restrict_ip.clone()),
        }
    }

    /// The directory's own copies of a user's name and (lowercased) api_key, for a cached
    /// credential to share instead of holding copies of its own; `None` for what sync does not
    /// report (the key only when it is the user's current one).
    pub(crate) fn shared_names(
        &self,
        user: &str,
        api_key: Option<&str>,
    ) -> (Option<Arc<str>>, Option<Arc<str>>) {
        let inner = self.read();
        let Some(synced) = inner.users.get(user).and_then(|r| r.synced.as_ref()) else {
            return (None, None);
        };
        let key = synced.api_key.as_ref().filter(|k| api_key == Some(&***k)).cloned();
        (Some(synced.name.clone()), key)
    }

    /// Marks `user` revoked at `now` (every credential verified before is dead).
    pub(crate) fn mark_user(&self, user: &str, now: Instant) {
        let mut inner = self.write();
        inner.users.entry(Arc::from(user)).or_default().revoked_at = Some(now);
        self.bump();
    }

    /// Marks one (lowercased) api_key revoked at `now`.
    pub(crate) fn mark_key(&self, key: &str, now: Instant) {
        self.write().revoked_keys.insert(Arc::from(key), now);
        self.bump();
    }

    /// Replaces the synced state with a full list whose fetch began at `fetched_from`: every
    /// user with an api_key, and those of the users without one named in `asked` that still
    /// exist. A user that is new, changed or gone is marked; a record read after
    /// `fetched_from` is newer and stays; a user without a key that the list did not ask for
    /// is left as it is.
    pub(crate) fn replace(
        &self,
        users: &[SyncedUser],
        asked: &HashSet<Arc<str>>,
        now: Instant,
        fetched_from: Instant,
    ) -> Changes {
        let mut inner = self.write();
        let mut old = std::mem::take(&mut inner.users);
        let mut next = HashMap::with_capacity(users.len());
        let mut changes = Changes::default();
        for user in users {
            let user = user.normalized();
            let (name, prev) = match old.remove_entry(&user.name) {
                Some(known) => known,
                None => (user.name.clone(), UserRecord::default()),
            };
            let record = if prev.newer_than(fetched_from) {
                prev
            } else {
                self.merge(prev, Some(user), now, fetched_from, &mut changes)
            };
            next.insert(name, record);
        }
        for (name, prev) in old {
            let gone =
                prev.synced.is_some() && prev.listed_by(&name, asked) && !prev.newer_than(fetched_from);
            let record = if gone { self.merge(prev, None, now, fetched_from, &mut changes) } else { prev };
            if record.synced.is_some() || record.revoked_at.is_some() {
                next.insert(name, record);
            }
        }
        inner.users = next;
        self.prune(&mut inner, now);
        self.finish(changes)
    }

    /// Sets (or, with `None`, forgets) one user's synced state from a read that began at
    /// `read_from`, marking it when it changed. A record from a read that began later stays.
    pub(crate) fn update(
        &self,
        name: &str,
        user: Option<&SyncedUser>,
        now: Instant,
        read_from: Instant,
    ) -> Changes {
        let mut inner = self.write();
        let user = user.map(SyncedUser::normalized);
        let name = user.as_ref().map_or(name, |u| &*u.name);
        let (key, prev) = match inner.users.remove_entry(name) {
            Some(known) => known,
            None => {
                (user.as_ref().map_or_else(|| Arc::from(name), |u| u.name.clone()), UserRecord::default())
            }
        };
        let mut changes = Changes::default();
        let record = if prev.newer_than(read_from) {
            prev
        } else {
            self.merge(prev, user, now, read_from, &mut changes)
        };
        inner.users.insert(key, record);
        self.prune(&mut inner, now);
        self.finish(changes)
    }

    /// Whether sync's record of `user` is known and, for an api_key (lowercased), names it as
    /// the user's current key. A credential verified for a user that is not known this way
    /// has its user read at once, rather than go without its policy until the next sync.
    pub(crate) fn knows(&self, user: &str, api_key: Option<&str>) -> bool {
        let inner = self.read();
        let synced = inner.users.get(user).and_then(|r| r.synced.as_ref());
        synced.is_some_and(|s| api_key.is_none() || s.api_key.as_deref() == api_key)
    }

    /// The users without an api_key whose records are kept (met through bearer tokens): sync
    /// asks for them by name with each list.
    pub(crate) fn keyless_users(&self) -> Vec<Arc<str>> {
        let inner = self.read();
        let keyless = |(name, r): (&Arc<str>, &UserRecord)| {
            r.synced.as_ref().is_some_and(|s| s.api_key.is_none()).then(|| name.clone())
        };
        inner.users.iter().filter_map(keyless).collect()
    }

    /// The new record for a user from a read that began at `read_from`: marked when it is
    /// new, changed or gone.
    fn merge(
        &self,
        prev: UserRecord,
        next: Option<SyncedUser>,
        now: Instant,
        read_from: Instant,
        changes: &mut Changes,
    ) -> UserRecord {
        let changed = match (&prev.synced, &next) {
            (Some(p), Some(n)) => p.differs(n),
            _ => true,
        };
        if !changed {
            // The strings already held (and shared by cached credentials) stay; the new list's
            // copies go.
            let next = match (prev.synced.as_ref(), next) {
                (Some(p), Some(n)) => Some(SyncedUser { restrict_ip: n.restrict_ip, ..p.clone() }),
                (_, next) => next,
            };
            return UserRecord { synced: next, as_of: Some(read_from), ..prev };
        }
        changes.marked = true;
        for user in [&prev.synced, &next].into_iter().flatten() {
            changes.keys.extend(user.api_key.clone());
        }
        // A mark only moves forward: one set later (a webhook's) keeps its reach.
        let revoked_at = prev.revoked_at.map_or(now, |at| at.max(now));
        UserRecord { synced: next, revoked_at: Some(revoked_at), as_of: Some(read_from) }
    }

    fn finish(&self, mut changes: Changes) -> Changes {
        if changes.marked {
            self.bump();
        }
        changes.keys.sort_unstable();
        changes.keys.dedup();
        changes
    }

    /// Drops marks too old to matter and records left with nothing in them.
    fn prune(&self, inner: &mut Inner, now: Instant) {
        let fresh = |at: &Instant| now.saturating_duration_since(*at) <= self.keep_marks;
        inner.revoked_keys.retain(|_, at| fresh(at));
        inner.users.retain(|_, record| {
            if !record.revoked_at.as_ref().is_some_and(fresh) {
                record.revoked_at = None;
            }
            record.synced.is_some() || record.revoked_at.is_some()
        });
        // A read older than any that could still be in flight no longer matters.
        for record in inner.users.values_mut() {
            if !record.as_of.as_ref().is_some_and(fresh) {
                record.as_of = None;
            }
        }
    }

    /// Number of users sync knows about.
    pub(crate) fn synced_users(&self) -> usize {
        self.read().users.values().filter(|r| r.synced.is_some()).count()
    }

    fn bump(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> HashSet<Arc<str>> {
        HashSet::new()
    }

    fn user(name: &str, key: &str, modified: &str, enabled: bool) -> SyncedUser {
        SyncedUser {
            name: name.into(),
            enabled,
            api_key: Some(key.into()),
            modified: modified.into(),
            restrict_ip: Some("10.0.0.".into()),
        }
    }

    #[test]
    fn views_follow_sync_and_marks() {
        let dir = Directory::new(Duration::from_secs(600));
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(1);
        dir.replace(&[user("a@x", "KA", "m1", true)], &none(), t0, t0);
        // Verified after the first sighting: alive; the key is compared lowercased.
        let v = dir.view("a@x", Some("ka"), later);
        assert!(!v.revoked && !v.disabled);
        assert_eq!(v.restrict_ip.as_deref(), Some("10.0.0."));
        // Same state again: nothing marked, epoch unchanged.
        let epoch = dir.epoch();
        assert_eq!(dir.replace(&[user("a@x", "KA", "m1", true)], &none(), later, later), Changes::default());
        assert_eq!(dir.epoch(), epoch);
        assert!(!dir.view("a@x", Some("ka"), later).revoked);
        // A key that is not the user's is dead.
        assert!(dir.view("a@x", Some("other"), later).revoked);
        // modified changed: verified before the change → dead.
        let t2 = later + Duration::from_secs(1);
        assert_eq!(
            dir.replace(&[user("a@x", "KA", "m2", true)], &none(), t2, t2).keys,
            vec![Arc::<str>::from("ka")]
        );
        assert!(dir.epoch() > epoch);
        assert!(dir.view("a@x", Some("ka"), later).revoked);
        assert!(!dir.view("a@x", Some("ka"), t2 + Duration::from_secs(1)).revoked);
        // Disabled.
        dir.replace(&[user("a@x", "KA", "m3", false)], &none(), t2, t2);
        assert!(dir.view("a@x", Some("ka"), t2 + Duration::from_secs(5)).disabled);
        // Gone from the list: verified before → dead; the record keeps its mark.
        let t3 = t2 + Duration::from_secs(10);
        dir.replace(&[], &none(), t3, t3);
        assert!(dir.view("a@x", Some("ka"), t3 - Duration::from_secs(1)).revoked);
        assert_eq!(dir.synced_users(), 0);
    }

    #[test]
    fn cached_credentials_share_the_synced_names_across_syncs() {
        let dir = Directory::new(Duration::from_secs(600));
        let t0 = Instant::now();
        dir.replace(&[user("a@x", "KA", "m1", true)], &none(), t0, t0);
        let (name, key) = dir.shared_names("a@x", Some("ka"));
        let (name, key) = (name.unwrap(), key.unwrap());
        assert_eq!((&*name, &*key), ("a@x", "ka"));
        // Not the user's key, a bearer token, a user sync does not know: nothing to share.
        assert_eq!(dir.shared_names("a@x", Some("kb")).1, None);
        assert_eq!(dir.shared_names("a@x", None).1, None);
        assert_eq!(dir.shared_names("b@x", Some("ka")), (None, None));
        // An unchanged user in the next list keeps the strings already held (and shared).
        let t1 = t0 + Duration::from_secs(1);
        dir.replace(&[user("a@x", "KA", "m1", true)], &none(), t1, t1);
        let (again, again_key) = dir.shared_names("a@x", Some("ka"));
        assert!(Arc::ptr_eq(&name, &again.unwrap()) && Arc::ptr_eq(&key, &again_key.unwrap()));
        dir.update("a@x", Some(&user("a@x", "KA", "m1", true)), t1, t1);
        assert!(Arc::ptr_eq(&name, &dir.shared_names("a@x", None).0.unwrap()));
        // restrict_ip still follows the list (one fetched after that refresh).
        let t2 = t1 + Duration::from_secs(1);
        let mut moved = user("a@x", "KA", "m1", true);
        moved.restrict_ip = Some("10.9.9.".into());
        dir.replace(&[moved], &none(), t2, t2);
        assert_eq!(dir.view("a@x", Some("ka"), t2).restrict_ip.as_deref(), Some("10.9.9."));
    }

    #[test]
    fn marks_expire() {
        let dir = Directory::new(Duration::from_secs(10));
        let t0 = Instant::now();
        dir.mark_user("u", t0);
        dir.mark_key("k", t0);
        assert!(dir.view("u", Some("k"), t0).revoked);
        let t11 = t0 + Duration::from_secs(11);
        dir.replace(&[], &none(), t11, t11);
        assert!(!dir.view("u", Some("k"), t0).revoked);
    }

    #[test]
    fn update_one_user() {
        let dir = Directory::new(Duration::from_secs(600));
        let t0 = Instant::now();
        dir.replace(&[user("a@x", "ka", "m1", true)], &none(), t0, t0);
        let t1 = t0 + Duration::from_secs(1);
        assert!(!dir.update("a@x", Some(&user("a@x", "ka", "m1", true)), t1, t1).marked);
        assert!(!dir.view("a@x", Some("ka"), t1).revoked);
        assert_eq!(dir.update("a@x", None, t1, t1).keys, vec![Arc::<str>::from("ka")]);
        assert!(dir.view("a@x", Some("ka"), t1).revoked);
        assert!(!dir.view("a@x", Some("ka"), t1 + Duration::from_secs(1)).disabled);
    }

    #[test]
    fn a_list_fetched_before_a_refresh_does_not_undo_it() {
        let dir = Directory::new(Duration::from_secs(600));
        let t0 = Instant::now();
        dir.replace(&[user("a@x", "ka", "m1", true)], &none(), t0, t0);
        let (fetch_start, refresh) = (t0 + Duration::from_secs(1), t0 + Duration::from_secs(2));
        dir.update("a@x", Some(&user("a@x", "ka", "m2", false)), refresh, refresh);
        let t3 = t0 + Duration::from_secs(3);
        dir.replace(&[user("a@x", "ka", "m1", true)], &none(), t3, fetch_start);
        assert!(dir.view("a@x", Some("ka"), t3).disabled);
        dir.replace(&[], &none(), t3, fetch_start);
        assert!(dir.view("a@x", Some("ka"), t3).disabled);
        // The next list, fetched after the refresh, wins.
        let t4 = t0 + Duration::from_secs(4);
        dir.replace(&[user("a@x", "ka", "m3", true)], &none(), t4, t4);
        assert!(!dir.view("a@x", Some("ka"), t4 + Duration::from_secs(1)).disabled);
    }

    #[test]
    fn a_slow_refresh_does_not_undo_a_later_one() {
        let dir = Directory::new(Duration::from_secs(600));
        let t0 = Instant::now();
        dir.replace(&[user("a@x", "ka", "m1", true)], &none(), t0, t0);
        // Two webhook refreshes: the second read began later and said "disabled"; the first
        // read (begun earlier, still "enabled") lands after it.
        let (first_read, second_read) = (t0 + Duration::from_secs(1), t0 + Duration::from_secs(2));
        let landed = t0 + Duration::from_secs(3);
        dir.update("a@x", Some(&user("a@x", "ka", "m2", false)), landed, second_read);
        let changes = dir.update("a@x", Some(&user("a@x", "ka", "m1", true)), landed, first_read);
        assert_eq!(changes, Changes::default());
        assert!(dir.view("a@x", Some("ka"), landed).disabled);
        // Nor does a list whose fetch began before the second read.
        dir.replace(&[user("a@x", "ka", "m1", true)], &none(), landed, first_read);
        assert!(dir.view("a@x", Some("ka"), landed).disabled);
        // A read begun after it does.
        let t4 = t0 + Duration::from_secs(4);
        dir.update("a@x", Some(&user("a@x", "ka", "m3", true)), t4, t4);
        assert!(!dir.view("a@x", Some("ka"), t4).disabled);
    }

    fn keyless(name: &str, modified: &str, enabled: bool) -> SyncedUser {
        SyncedUser { api_key: None, ..user(name, "", modified, enabled) }
    }

    #[test]
    fn users_without_a_key_are_followed_by_name() {
        let dir = Directory::new(Duration::from_secs(600));
        let t0 = Instant::now();
        dir.replace(&[user("a@x", "ka", "m1", true)], &none(), t0, t0);
        assert!(!dir.knows("o@x", None));
        // Met through a bearer token: read by itself.
        let t1 = t0 + Duration::from_secs(1);
        dir.update("o@x", Some(&keyless("o@x", "m1", true)), t1, t1);
        assert!(dir.knows("o@x", None) && !dir.knows("o@x", Some("ka")));
        assert!(dir.knows("a@x", Some("ka")) && !dir.knows("a@x", Some("kb")));
        assert_eq!(dir.keyless_users(), vec![Arc::<str>::from("o@x")]);
        assert_eq!(dir.view("o@x", None, t1).restrict_ip.as_deref(), Some("10.0.0."));
        // A list that did not ask for it (key users only) leaves it alone...
        let t2 = t0 + Duration::from_secs(2);
        assert!(!dir.replace(&[user("a@x", "ka", "m1", true)], &none(), t2, t2).marked);
        assert!(dir.knows("o@x", None));
        // ...one that asked carries its changes (disabled: its bearer tokens stop working)...
        let asked: HashSet<Arc<str>> = [Arc::from("o@x")].into();
        let t3 = t0 + Duration::from_secs(3);
        let both = [user("a@x", "ka", "m1", true), keyless("o@x", "m2", false)];
        assert!(dir.replace(&both, &asked, t3, t3).marked);
        assert!(dir.view("o@x", None, t3 + Duration::from_secs(1)).disabled);
        // ...and stays disabled at the next list, and one that asked and did not find it:
        // deleted.
        let t4 = t0 + Duration::from_secs(4);
        assert!(!dir.replace(&both, &asked, t4, t4).marked);
        assert!(dir.view("o@x", None, t4 + Duration::from_secs(1)).disabled);
        let t5 = t0 + Duration::from_secs(5);
        assert!(dir.replace(&[user("a@x", "ka", "m1", true)], &asked, t5, t5).marked);
        assert!(!dir.knows("o@x", None) && dir.keyless_users().is_empty());
        assert!(dir.view("o@x", None, t5 - Duration::from_secs(1)).revoked);
    }
}
