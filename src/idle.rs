//! Closes a webhook connection (HTTP/1.1 or HTTP/2) on which no request has been in flight for
//! the idle timeout. HTTP/2 pings and window updates do not count as activity, so a client that
//! only keeps a connection alive, or never reads its answers, is cut as well. Also caps the
//! connections open at once (`--max-connections`): each holds one permit for its life.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum_server::accept::Accept;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Requests in flight on one connection, and when the last one ended.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    last: Mutex<Instant>,
}

impl Activity {
    fn touch(&self) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    /// When the connection becomes idle for `timeout`, if nothing happens before.
    fn idle_at(&self, timeout: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let last = *self.last.lock().unwrap_or_else(|e| e.into_inner());
        Some(last + timeout)
    }
}

/// Wraps an acceptor: each connection is closed after `timeout` without a request in flight.
#[derive(Debug, Clone)]
pub struct IdleAcceptor<A> {
    inner: A,
    timeout: Duration,
    open: Option<(Arc<Semaphore>, Duration)>,
}

impl<A> IdleAcceptor<A> {
    /// Connections accepted by `inner`, closed after `timeout` idle.
    pub fn new(inner: A, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            open: None,
        }
    }

    /// At most `max` connections open at once; a further one waits up to `wait` for another to
    /// close (before its TLS handshake, holding only its socket), then is closed.
    pub fn with_max_connections(mut self, max: usize, wait: Duration) -> Self {
        self.open = Some((Arc::new(Semaphore::new(max)), wait));
        self
    }
}

impl<A, I, S> Accept<I, S> for IdleAcceptor<A>
where
    A: Accept<I, S>,
    A::Future: Send + 'static,
{
    type Stream = IdleStream<A::Stream>;
    type Service = IdleService<A::Service>;
    type Future = Pin<Box<dyn Future<Output = io::Result<(Self::Stream, Self::Service)>> + Send>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let accepted = self.inner.accept(stream, service);
        let timeout = self.timeout;
        let open = self.open.clone();
        Box::pin(async move {
            let permit = match open {
                None => None,
                Some((permits, wait)) => {
                    match tokio::time::timeout(wait, permits.acquire_owned()).await {
                        Ok(Ok(permit)) => Some(permit),
                        _ => {
                            tracing::warn!(
                                "too many webhook connections open (--max-connections); closing a new one"
                            );
                            return Err(io::Error::other("too many connections"));
                        }
                    }
                }
            };
            let (stream, service) = accepted.await?;
            let activity = Arc::new(Activity {
                in_flight: AtomicUsize::new(0),
                last: Mutex::new(Instant::now()),
            });
            let stream = IdleStream {
                inner: stream,
                activity: activity.clone(),
                timeout,
                sleep: Box::pin(tokio::time::sleep(timeout)),
                _open: permit,
            };
            Ok((
                stream,
                IdleService {
                    inner: service,
                    activity,
                },
            ))
        })
    }
}

/// A connection's byte stream; reads end (EOF) once the connection has been idle too long.
#[derive(Debug)]
pub struct IdleStream<T> {
    inner: T,
    activity: Arc<Activity>,
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
    /// The connection's place under `--max-connections`, given back when it closes.
    _open: Option<OwnedSemaphorePermit>,
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleStream<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            // While a request is in flight, check again one timeout from now.
            let at = this
                .activity
                .idle_at(this.timeout)
                .unwrap_or_else(|| Instant::now() + this.timeout);
            if this.sleep.deadline() != at {
                this.sleep.as_mut().reset(at);
            }
            if this.sleep.as_mut().poll(cx).is_pending() {
                break;
            }
            if this
                .activity
                .idle_at(this.timeout)
                .is_some_and(|at| at <= Instant::now())
            {
                // End of stream: the HTTP server closes the connection.
                return Poll::Ready(Ok(()));
            }
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleStream<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A connection's service; counts the requests in flight on it.
#[derive(Debug, Clone)]
pub struct IdleService<S> {
    inner: S,
    activity: Arc<Activity>,
}

/// Marks a request finished when dropped (answered, or abandoned).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<S, R> tower_service::Service<R> for IdleService<S>
where
    S: tower_service::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        self.activity.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight(self.activity.clone());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let out = fut.await;
            drop(guard);
            out
        })
    }
}
