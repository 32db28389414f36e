//! One verification against Frappe per unknown credential (single flight), its standing
//! (sync's view or the user's own record), and what is remembered or refused afterwards.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use tokio::sync::OnceCell;

use super::*;

/// One verification's outcome, shared by every request that joined it.
type Flight = OnceCell<Result<Entry, FlightError>>;
type FlightKey = (Digest, u64);

/// The verifications in progress, by credential digest and directory epoch. A flight is
/// there only while it is in the air: the last request holding it takes it out (its result
/// is in the caches by then), so nothing here grows with the number of cached credentials.
#[derive(Default)]
pub(super) struct Flights {
    in_air: Mutex<HashMap<FlightKey, Arc<Flight>>>,
}

/// A request's hold on a flight. Clones of the flight's `Arc` are only made and dropped
/// under the map's lock, so the count seen there is exact.
struct Boarding<'a> {
    flights: &'a Flights,
    key: FlightKey,
    flight: Option<Arc<Flight>>,
}

impl Flights {
    fn board(&self, key: FlightKey) -> Boarding<'_> {
        let flight = self.lock().entry(key).or_default().clone();
        Boarding { flights: self, key, flight: Some(flight) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FlightKey, Arc<Flight>>> {
        self.in_air.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[cfg(test)]
    pub(super) fn in_air(&self) -> usize {
        self.lock().len()
    }
}

impl Drop for Boarding<'_> {
    /// A landed flight leaves the map at once: later requests find its result in the caches
    /// (`fly` looks there first). One that never landed (every request holding it was
    /// cancelled) leaves with its last passenger.
    fn drop(&mut self) {
        let mut in_air = self.flights.lock();
        let Some(mine) = self.flight.take() else { return };
        let leaves = in_air.get(&self.key).is_some_and(|current| Arc::ptr_eq(current, &mine))
            && (mine.initialized() || Arc::strong_count(&mine) == 2);
        if leaves {
            in_air.remove(&self.key);
        }
        drop(mine);
    }
}

impl CredentialStore {
    /// One Frappe call for all concurrent requests with the same credential. The epoch in
    /// the flight key keeps requests that arrive after a revocation from joining a call that
    /// started before it. If the request flying it is cancelled, a request that joined it
    /// flies it instead.
    pub(super) async fn verify_once(
        &self,
        probe: &Probe<'_>,
        authorization: &HeaderValue,
    ) -> Result<Entry, FlightError> {
        let boarding = self.flights.board((probe.digest, self.directory.epoch()));
        let flight = boarding.flight.as_ref().expect("held until dropped");
        flight.get_or_init(|| self.fly(probe, authorization)).await.clone()
    }

    /// The body of a flight. It looks at both caches again first: a request that missed
    /// just before another's flight finished must not call Frappe a second time.
    pub(super) async fn fly(
        &self,
        probe: &Probe<'_>,
        authorization: &HeaderValue,
    ) -> Result<Entry, FlightError> {
        let started = self.clock.now();
        if let Some(entry) = self.cached(probe).await {
            if matches!(self.judge(&entry, started), Judgement::Fresh(_) | Judgement::Disabled) {
                return Ok(entry);
            }
        }
        if self.refused(&probe.digest, started).await {
            return Err(FlightError::Negative);
        }
        // Held until Frappe answered; joined requests share it with this flight.
        let _permit = match &self.budget {
            Some(budget) => Some(budget.try_start().map_err(FlightError::OverBudget)?),
            None => None,
        };
        self.verify_calls.fetch_add(1, Ordering::Relaxed);
        match self.verifier.verify(authorization).await {
            Ok(user) if !user.is_empty() && user != "Guest" => {
                let standing = self.standing(probe, authorization, &user, started).await?;
                Ok(self.remember(probe, user, standing, started).await)
            }
            Ok(_) | Err(VerifyError::Rejected) => {
                self.refuse(probe).await;
                Err(FlightError::Rejected)
            }
            Err(VerifyError::Unavailable(why)) => Err(FlightError::Unavailable(why)),
        }
    }

    /// The policy source of a user Frappe just vouched for: sync's record, read now if sync
    /// does not know the user yet. A user sync cannot see is barred unless
    /// `auth.allow_administrator`; then its own record is read with the client's credentials.
    /// Both reads run under the flight's budget permit; a failed read caches nothing.
    pub(super) async fn standing(
        &self,
        probe: &Probe<'_>,
        authorization: &HeaderValue,
        user: &str,
        started: Instant,
    ) -> Result<Standing, FlightError> {
        if !hidden_from_sync(user) {
            self.learn_user(probe, user, started).await?;
            return Ok(Standing::Synced);
        }
        if !self.allow_administrator {
            tracing::warn!(user, "credential refused: the Administrator account is not usable through the gateway (auth.allow_administrator = false)");
            return Ok(Standing::Hidden(Arc::new(Hidden::Barred)));
        }
        match self.verifier.read_own_user(authorization, user).await {
            Ok(record) => {
                let own = Hidden::SelfRead { enabled: record.enabled, restrict_ip: record.restrict_ip };
                Ok(Standing::Hidden(Arc::new(own)))
            }
            Err(VerifyError::Rejected) => {
                self.refuse(probe).await;
                Err(FlightError::Rejected)
            }
            Err(VerifyError::Unavailable(why)) => Err(FlightError::Unavailable(why)),
        }
    }

    /// Reads `user` with the sync token when sync does not know it (or not with this key), so
    /// the credential is judged by the user's own record from its first request. The record
    /// is marked as changed just before this flight began: credentials verified earlier are
    /// judged again, this one is not. A failed read caches nothing (503, like whoami down).
    async fn learn_user(&self, probe: &Probe<'_>, user: &str, started: Instant) -> Result<(), FlightError> {
        let Some(reader) = &self.user_reader else {
            return Ok(());
        };
        let api_key = (!probe.bearer).then_some(probe.key.as_ref());
        if self.directory.knows(user, api_key) {
            return Ok(());
        }
        let read_from = self.clock.now();
        let unavailable = |why: String| FlightError::Unavailable(format!("reading User {user}: {why}"));
        let record = match reader.source.get_user(&reader.token, user).await {
            Ok(Some(record)) if &*record.name == user => record,
            Ok(_) => return Err(unavailable("the sync user cannot see it".into())),
            Err(e) => return Err(unavailable(e.to_string())),
        };
        // `fly` stamps this credential with its start; a mark at or after it would kill it.
        let just_before = started.checked_sub(Duration::from_nanos(1)).unwrap_or(started);
        // Credentials this marks are refused on their next use; no pass over the cache here
        // (one per new user would be a scan of every cached credential).
        self.directory.update(user, Some(&record), just_before, read_from);
        tracing::debug!(user, "credential of a user sync did not know yet: user read with the sync token");
        Ok(())
    }

    pub(super) async fn remember(
        &self,
        probe: &Probe<'_>,
        user: String,
        standing: Standing,
        started: Instant,
    ) -> Entry {
        // The names sync already holds are shared rather than copied into every entry.
        let api_key = (!probe.bearer).then_some(probe.key.as_ref());
        let (shared_user, shared_key) = self.directory.shared_names(&user, api_key);
        let entry = Entry {
            key: shared_key.unwrap_or_else(|| Arc::from(probe.key.as_ref())),
            user: shared_user.unwrap_or_else(|| Arc::from(user)),
            digest: probe.digest,
            verified: Stamp::of(started),
            standing,
        };
        tracing::debug!(api_key = %entry.key, user = %entry.user, "credential verified by Frappe");
        self.positive.insert(entry.key.clone(), entry.clone());
        self.sweep_if_due();
        entry
    }

    /// Caches a refusal; a cached entry with the same digest (the secret was regenerated)
    /// goes too.
    pub(super) async fn refuse(&self, probe: &Probe<'_>) {
        let key: Arc<str> = Arc::from(probe.key.as_ref());
        tracing::debug!(api_key = %key, "credential refused by Frappe");
        self.negative.insert(probe.digest, Refused { key, at: self.clock.now() }).await;
        if self.cached(probe).await.is_some() {
            self.positive.invalidate(probe.key.as_ref());
        }
    }
}
