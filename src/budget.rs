//! A process-wide budget of request and answer bytes in flight (`--max-inflight-body-bytes`).
//!
//! Parsing an AdmissionReview costs 25 to 40 times its size in memory, so the bytes being read
//! and parsed at once are what bounds pinhook's memory. A request reserves its bytes before its
//! body is read and holds them until its answer has been handed to the connection: the answer
//! ([`HeldBody`]) covers its own size too and goes out in frames, so an answer a client does not
//! read (an HTTP/2 receive window never opened) holds budget beyond the connection's own buffer
//! for the stream, not unbounded memory. Unlike a FIFO semaphore, a waiting large request never
//! holds back smaller ones that fit: any request whose bytes fit goes ahead.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::Notify;

/// Largest frame an answer is handed to the connection in: hyper asks for the next one only
/// when the stream has room, so the unsent rest of an unread answer stays here, counted.
pub const ANSWER_FRAME_BYTES: usize = 16 * 1024;

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

impl Reservation {
    /// Grows the reservation to `bytes` (an answer larger than its request) without waiting:
    /// the bytes exist already; requests that come after wait for them instead.
    pub fn cover(&mut self, bytes: u64) {
        if bytes <= self.bytes {
            return;
        }
        let extra = bytes - self.bytes;
        *self.budget.used.lock().unwrap_or_else(|e| e.into_inner()) += extra;
        self.bytes = bytes;
    }
}

/// An answer's bytes, handed out in frames of at most [`ANSWER_FRAME_BYTES`], holding the
/// request's reservation until the last frame is taken (or the answer is dropped unsent).
#[derive(Debug)]
pub struct HeldBody {
    data: Bytes,
    reservation: Option<Reservation>,
}

impl HeldBody {
    /// `data`, with `reservation` grown to cover it.
    pub fn new(data: Bytes, mut reservation: Reservation) -> Self {
        reservation.cover(data.len() as u64);
        Self {
            data,
            reservation: Some(reservation),
        }
    }
}

impl http_body::Body for HeldBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.data.is_empty() {
            self.reservation = None;
            return Poll::Ready(None);
        }
        let n = self.data.len().min(ANSWER_FRAME_BYTES);
        let frame = self.data.split_to(n);
        if self.data.is_empty() {
            self.reservation = None;
        }
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.len() as u64)
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
    async fn an_answer_holds_its_bytes_until_its_last_frame_is_taken() {
        use http_body_util::BodyExt;
        let budget = BodyBudget::new(1 << 20);
        let r = budget.reserve(1_000, Duration::ZERO).await.unwrap();
        let mut body = HeldBody::new(Bytes::from(vec![7u8; 40_000]), r);
        assert_eq!(
            budget.in_use(),
            40_000,
            "the answer is larger than its request"
        );
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first.len(), ANSWER_FRAME_BYTES);
        assert_eq!(budget.in_use(), 40_000, "held while frames remain");
        let mut rest = first.len();
        while let Some(frame) = body.frame().await {
            rest += frame.unwrap().into_data().unwrap().len();
        }
        assert_eq!(rest, 40_000);
        assert_eq!(budget.in_use(), 0, "released with the last frame");
        // An answer dropped unsent releases its bytes too.
        let r = budget.reserve(10, Duration::ZERO).await.unwrap();
        drop(HeldBody::new(Bytes::from_static(b"x"), r));
        assert_eq!(budget.in_use(), 0);
    }

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
