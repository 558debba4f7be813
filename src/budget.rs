//! A process-wide budget of request-body bytes in flight (`--max-inflight-body-bytes`).
//!
//! Parsing an AdmissionReview costs 25 to 40 times its size in memory, so the bytes being read
//! and parsed at once are what bounds pinhook's memory. A request reserves its bytes before its
//! body is read and holds them until it is answered. Unlike a FIFO semaphore, a waiting large
//! request never holds back smaller ones that fit: any request whose bytes fit goes ahead.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

/// Bytes of request bodies in flight, shared by every request.
#[derive(Debug)]
pub struct BodyBudget {
    capacity: u64,
    used: Mutex<u64>,
    released: Notify,
}

/// The bytes a request holds; released when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<BodyBudget>,
    bytes: u64,
}

/// The budget could not supply the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    /// More bytes than the whole budget.
    #[error("{bytes} bytes exceed the whole budget of {capacity} bytes")]
    TooLarge {
        /// The bytes asked for.
        bytes: u64,
        /// The budget.
        capacity: u64,
    },
    /// The bytes did not become free in time.
    #[error("{bytes} bytes did not become free within {waited:?} ({capacity} bytes in flight)")]
    Busy {
        /// The bytes asked for.
        bytes: u64,
        /// The budget.
        capacity: u64,
        /// How long the request waited.
        waited: Duration,
    },
}

impl BodyBudget {
    /// A budget of `capacity` bytes.
    pub fn new(capacity: u64) -> Arc<Self> {
        Arc::new(Self {
            capacity,
            used: Mutex::new(0),
            released: Notify::new(),
        })
    }

    /// The budget in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes reserved now.
    pub fn in_use(&self) -> u64 {
        *self.used.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn try_take(&self, bytes: u64) -> bool {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        if self.capacity - *used >= bytes {
            *used += bytes;
            true
        } else {
            false
        }
    }

    /// Reserves `bytes`, waiting at most `wait` for them to become free.
    pub async fn reserve(
        self: &Arc<Self>,
        bytes: u64,
        wait: Duration,
    ) -> Result<Reservation, BudgetError> {
        if bytes > self.capacity {
            return Err(BudgetError::TooLarge {
                bytes,
                capacity: self.capacity,
            });
        }
        let attempt = async {
            loop {
                let released = self.released.notified();
                tokio::pin!(released);
                // Registered before the check, so a release in between is not missed.
                released.as_mut().enable();
                if self.try_take(bytes) {
                    return;
                }
                released.await;
            }
        };
        match tokio::time::timeout(wait, attempt).await {
            Ok(()) => Ok(Reservation {
                budget: self.clone(),
                bytes,
            }),
            Err(_) => Err(BudgetError::Busy {
                bytes,
                capacity: self.capacity,
                waited: wait,
            }),
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        {
            let mut used = self.budget.used.lock().unwrap_or_else(|e| e.into_inner());
            *used = used.saturating_sub(self.bytes);
        }
        self.budget.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_wait_for_released_bytes_and_time_out() {
        let budget = BodyBudget::new(100);
        let a = budget.reserve(60, Duration::ZERO).await.unwrap();
        assert_eq!(budget.in_use(), 60);
        // 50 more do not fit: refused after the wait.
        let e = budget
            .reserve(50, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(e, BudgetError::Busy { bytes: 50, .. }), "{e}");
        // A waiter gets its bytes as soon as they are released.
        let waiter = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.reserve(50, Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(a);
        let b = waiter.await.unwrap().unwrap();
        assert_eq!(budget.in_use(), 50);
        drop(b);
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test]
    async fn a_waiting_large_request_does_not_hold_back_small_ones() {
        let budget = BodyBudget::new(100);
        let _held = budget.reserve(60, Duration::ZERO).await.unwrap();
        let large = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.reserve(90, Duration::from_secs(1)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let small = budget.reserve(30, Duration::ZERO).await;
        assert!(small.is_ok(), "{small:?}");
        assert!(large.await.unwrap().is_err());
    }

    #[tokio::test]
    async fn more_than_the_whole_budget_is_refused_at_once() {
        let budget = BodyBudget::new(100);
        let e = budget
            .reserve(101, Duration::from_secs(60))
            .await
            .unwrap_err();
        assert_eq!(
            e,
            BudgetError::TooLarge {
                bytes: 101,
                capacity: 100
            }
        );
    }
}
