//! One verification against Frappe per unknown credential (single flight), its standing
//! (sync's view or the user's own record), and what is remembered or refused afterwards.

use super::*;

impl CredentialStore {
    /// One Frappe call for all concurrent requests with the same credential. The epoch in
    /// the flight key keeps requests that arrive after a revocation from joining a call that
    /// started before it.
    pub(super) async fn verify_once(
        &self,
        probe: &Probe<'_>,
        authorization: &HeaderValue,
    ) -> Result<Arc<Entry>, FlightError> {
        let flight = (probe.digest, self.directory.epoch());
        let result = self.flights.try_get_with(flight, self.fly(probe, authorization)).await;
        self.flights.invalidate(&flight).await;
        result.map_err(|e| FlightError::clone(&e))
    }

    /// The body of a flight. It looks at both caches again first: a request that missed
    /// just before another's flight finished must not call Frappe a second time.
    pub(super) async fn fly(
        &self,
        probe: &Probe<'_>,
        authorization: &HeaderValue,
    ) -> Result<Arc<Entry>, FlightError> {
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
                let standing = self.standing(probe, authorization, &user).await?;
                Ok(self.remember(probe, user, standing, started).await)
            }
            Ok(_) | Err(VerifyError::Rejected) => {
                self.refuse(probe).await;
                Err(FlightError::Rejected)
            }
            Err(VerifyError::Unavailable(why)) => Err(FlightError::Unavailable(why)),
        }
    }

    /// The policy source of a user Frappe just vouched for. A user sync cannot see is barred
    /// unless `auth.allow_administrator`; then its own record is read with the client's
    /// credentials (still under the flight's budget permit). A failed read caches nothing.
    pub(super) async fn standing(
        &self,
        probe: &Probe<'_>,
        authorization: &HeaderValue,
        user: &str,
    ) -> Result<Standing, FlightError> {
        if !hidden_from_sync(user) {
            return Ok(Standing::Synced);
        }
        if !self.allow_administrator {
            tracing::warn!(api_key = %probe.key, user, "credential refused: the Administrator account is not usable through the gateway (auth.allow_administrator = false)");
            return Ok(Standing::Barred);
        }
        match self.verifier.read_own_user(authorization, user).await {
            Ok(record) => Ok(Standing::SelfRead { enabled: record.enabled, restrict_ip: record.restrict_ip }),
            Err(VerifyError::Rejected) => {
                self.refuse(probe).await;
                Err(FlightError::Rejected)
            }
            Err(VerifyError::Unavailable(why)) => Err(FlightError::Unavailable(why)),
        }
    }

    pub(super) async fn remember(
        &self,
        probe: &Probe<'_>,
        user: String,
        standing: Standing,
        started: Instant,
    ) -> Arc<Entry> {
        let entry = Arc::new(Entry {
            key: Arc::from(probe.key.as_ref()),
            user: Arc::from(user),
            digest: probe.digest,
            verified_at: started,
            bearer: probe.bearer,
            standing,
        });
        tracing::debug!(api_key = %entry.key, user = %entry.user, "credential verified by Frappe");
        self.positive.insert(entry.key.clone(), entry.clone()).await;
        entry
    }

    /// Caches a refusal; a cached entry with the same digest (the secret was regenerated)
    /// goes too.
    pub(super) async fn refuse(&self, probe: &Probe<'_>) {
        let key: Arc<str> = Arc::from(probe.key.as_ref());
        tracing::debug!(api_key = %key, "credential refused by Frappe");
        self.negative.insert(probe.digest, Refused { key, at: self.clock.now() }).await;
        if self.cached(probe).await.is_some() {
            self.positive.invalidate(probe.key.as_ref()).await;
        }
    }
}
