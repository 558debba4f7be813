//! Fair shares of registry lookups: a process-wide pool of permits and a smaller pool per
//! registry host, so one slow registry holds at most its share and never the whole pool; a
//! lookup that sleeps on `Retry-After` gives its permits back while it sleeps.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

use super::ResolveError;

/// The least time worth starting a lookup with after queueing; with less left it is answered as busy.
pub const MIN_LOOKUP: Duration = Duration::from_millis(100);

/// Which pool of permits a lookup waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// The permits of one registry host (`--max-concurrent-resolutions-per-registry`).
    Registry,
    /// The permits of the whole process (`--max-concurrent-resolutions`).
    All,
}

/// The permit pools of one resolver.
#[derive(Debug)]
pub struct Permits {
    all: Arc<Semaphore>,
    all_limit: usize,
    per_registry: usize,
    /// One pool per host with lookups running or waiting; a pool nobody holds is dropped (only
    /// its dead entry stays, until the next prune), so the map is bounded by lookups in flight.
    hosts: Mutex<Hosts>,
}

#[derive(Debug, Default)]
struct Hosts {
    pools: HashMap<String, Weak<Semaphore>>,
    prune_at: usize,
}

/// Both permits of one running lookup; dropping it frees them.
#[derive(Debug)]
pub struct Held {
    _registry: OwnedSemaphorePermit,
    _all: OwnedSemaphorePermit,
}

impl Permits {
    /// `all` lookups at once across the process, `per_registry` at once to one host (each at least 1).
    pub fn new(all: usize, per_registry: usize) -> Self {
        let all = all.max(1);
        Self {
            all: Arc::new(Semaphore::new(all)),
            all_limit: all,
            per_registry: per_registry.clamp(1, all),
            hosts: Mutex::new(Hosts::default()),
        }
    }

    /// The pool of `host`, created when no lookup to it is running or waiting.
    fn pool(&self, host: &str) -> Arc<Semaphore> {
        // A poisoned lock only means another thread panicked while pruning; the map is still usable.
        let mut hosts = self
            .hosts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(pool) = hosts.pools.get(host).and_then(Weak::upgrade) {
            return pool;
        }
        if hosts.pools.len() >= hosts.prune_at {
            hosts.pools.retain(|_, pool| pool.strong_count() > 0);
            hosts.prune_at = (hosts.pools.len() * 2).max(64);
        }
        let pool = Arc::new(Semaphore::new(self.per_registry));
        hosts.pools.insert(host.to_owned(), Arc::downgrade(&pool));
        pool
    }

    /// Waits for a permit of `host`'s pool, then the process's, while [`MIN_LOOKUP`] would be left before `deadline`.
    pub async fn acquire(&self, host: &str, deadline: Instant) -> Result<Held, ResolveError> {
        let started = Instant::now();
        let busy = |pool: Pool, in_flight: usize| ResolveError::Busy {
            registry: host.to_owned(),
            seconds: started.elapsed().as_secs_f64(),
            in_flight,
            pool,
        };
        let give_up =
            tokio::time::Instant::from_std(deadline.checked_sub(MIN_LOOKUP).unwrap_or(deadline));
        let mut queued = None;
        let registry = self.pool(host);
        let registry_permit = match registry.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(TryAcquireError::Closed) => return Err(self.shutting_down(host)),
            Err(TryAcquireError::NoPermits) => {
                queued = Some((Pool::Registry, self.per_registry));
                match tokio::time::timeout_at(give_up, registry.clone().acquire_owned()).await {
                    Ok(Ok(p)) => p,
                    Ok(Err(_)) => return Err(self.shutting_down(host)),
                    Err(_) => {
                        return Err(busy(
                            Pool::Registry,
                            self.in_flight(&registry, self.per_registry),
                        ));
                    }
                }
            }
        };
        let all_permit = match self.all.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(TryAcquireError::Closed) => return Err(self.shutting_down(host)),
            Err(TryAcquireError::NoPermits) => {
                queued = Some((Pool::All, self.all_limit));
                match tokio::time::timeout_at(give_up, self.all.clone().acquire_owned()).await {
                    Ok(Ok(p)) => p,
                    Ok(Err(_)) => return Err(self.shutting_down(host)),
                    Err(_) => {
                        return Err(busy(Pool::All, self.in_flight(&self.all, self.all_limit)));
                    }
                }
            }
        };
        // Permits obtained after queueing almost to the deadline: the wait, not the registry,
        // used up the time, so say that rather than "did not answer within 0.0s".
        if let Some((pool, limit)) = queued
            && deadline.saturating_duration_since(Instant::now()) < MIN_LOOKUP
        {
            return Err(busy(pool, limit));
        }
        Ok(Held {
            _registry: registry_permit,
            _all: all_permit,
        })
    }

    /// Lookups holding permits of `pool` (of `limit`).
    fn in_flight(&self, pool: &Semaphore, limit: usize) -> usize {
        limit.saturating_sub(pool.available_permits())
    }

    fn shutting_down(&self, host: &str) -> ResolveError {
        ResolveError::ShuttingDown {
            registry: host.to_owned(),
        }
    }

    /// Hosts with a pool entry (live or not yet pruned), for tests of the bound.
    #[cfg(test)]
    fn tracked_hosts(&self) -> usize {
        self.hosts.lock().map(|h| h.pools.len()).unwrap_or_default()
    }
}

/// The permits of one lookup to one host: held while it talks, given back while it sleeps on `Retry-After`.
#[derive(Debug)]
pub struct Slot<'a> {
    permits: &'a Permits,
    host: &'a str,
    deadline: Instant,
    held: Option<Held>,
}

impl<'a> Slot<'a> {
    /// Waits for the permits of a lookup to `host` (see [`Permits::acquire`]).
    pub async fn acquire(
        permits: &'a Permits,
        host: &'a str,
        deadline: Instant,
    ) -> Result<Self, ResolveError> {
        let held = permits.acquire(host, deadline).await?;
        Ok(Self {
            permits,
            host,
            deadline,
            held: Some(held),
        })
    }

    /// Sleeps `wait` without holding any permit, then takes them again (or fails as busy).
    pub async fn sleep(&mut self, wait: Duration) -> Result<(), ResolveError> {
        self.held = None;
        tokio::time::sleep(wait).await;
        self.held = Some(self.permits.acquire(self.host, self.deadline).await?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_ms(ms: u64) -> Instant {
        Instant::now() + Duration::from_millis(ms)
    }

    #[tokio::test]
    async fn one_registry_uses_at_most_its_share() {
        let permits = Permits::new(4, 2);
        let a1 = permits.acquire("slow.example", in_ms(1000)).await.unwrap();
        let _a2 = permits.acquire("slow.example", in_ms(1000)).await.unwrap();
        // The third lookup to the same registry waits for its own pool and is told why.
        let err = permits
            .acquire("slow.example", in_ms(100))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ResolveError::Busy {
                    pool: Pool::Registry,
                    in_flight: 2,
                    ..
                }
            ),
            "{err:?}"
        );
        // Another registry still gets permits from the process pool.
        let _b1 = permits.acquire("fast.example", in_ms(1000)).await.unwrap();
        let _b2 = permits.acquire("fast.example", in_ms(1000)).await.unwrap();
        // The process pool is now full: a third registry waits for it.
        let err = permits
            .acquire("third.example", in_ms(50))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ResolveError::Busy {
                    pool: Pool::All,
                    in_flight: 4,
                    ..
                }
            ),
            "{err:?}"
        );
        drop(a1);
        permits.acquire("third.example", in_ms(1000)).await.unwrap();
    }

    #[tokio::test]
    async fn the_queueing_message_blames_the_wait_not_the_registry() {
        let permits = Permits::new(16, 1);
        let _held = permits.acquire("tarpit.example:5000", in_ms(1000)).await;
        let err = permits
            .acquire("tarpit.example:5000", in_ms(200))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(
                "pinhook's lookups to registry tarpit.example:5000 were all busy for 0."
            ),
            "{text}"
        );
        assert!(
            text.ends_with("s (1 in flight, the most per registry); the registry was not asked"),
            "{text}"
        );
        assert!(!text.contains("did not answer"), "{text}");
        assert_eq!(err.metric_label(), "busy");
    }

    #[tokio::test]
    async fn permits_are_given_back_during_a_retry_after_sleep() {
        let permits = Arc::new(Permits::new(1, 1));
        let slept = Arc::new(tokio::sync::Notify::new());
        let sleeper = {
            let (permits, slept) = (permits.clone(), slept.clone());
            tokio::spawn(async move {
                let mut slot = Slot::acquire(&permits, "rate.example", in_ms(10_000))
                    .await
                    .unwrap();
                slept.notify_one();
                slot.sleep(Duration::from_millis(300)).await
            })
        };
        slept.notified().await;
        // While the first lookup sleeps, the only permit of the process is free.
        let other = permits
            .acquire("rate.example", in_ms(10_000))
            .await
            .unwrap();
        assert!(!sleeper.is_finished(), "the sleeper is still sleeping");
        drop(other);
        // ...and it takes the permit again when it wakes.
        sleeper.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn pools_of_idle_hosts_are_dropped() {
        let permits = Permits::new(16, 4);
        for i in 0..1000 {
            let _held = permits
                .acquire(&format!("host-{i}.example"), in_ms(1000))
                .await
                .unwrap();
        }
        assert!(permits.tracked_hosts() <= 64, "{}", permits.tracked_hosts());
    }
}
