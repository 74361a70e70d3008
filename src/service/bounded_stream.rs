//! Server streams whose consumer must keep up: a bounded buffer between the producing task and
//! the client, and a stall limit. When the buffer stays full longer than the limit the stream
//! ends with RESOURCE_EXHAUSTED saying where to resume, so a slow client costs the server a
//! fixed amount of memory and no task waits on it forever.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::Status;

/// The producing side.
pub struct Sender<T> {
    tx: mpsc::Sender<Result<T, Status>>,
    stalled: Arc<AtomicBool>,
    stall: Duration,
}

/// Why a send did not go through; either way the producer stops.
#[derive(Debug, PartialEq, Eq)]
pub enum Stop {
    /// The client went away.
    Gone,
    /// The client did not read for the stall limit; the stream now ends with an error.
    TooSlow,
}

impl<T> Sender<T> {
    /// Queues one message, waiting at most the stall limit for room.
    pub async fn send(&self, item: Result<T, Status>) -> Result<(), Stop> {
        match tokio::time::timeout(self.stall, self.tx.send(item)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Stop::Gone),
            Err(_) => {
                // Set before the sender is dropped: the receiver wakes on the close and must
                // already see why.
                self.stalled.store(true, Ordering::Release);
                Err(Stop::TooSlow)
            }
        }
    }

    /// Completes when the client has gone.
    pub async fn closed(&self) {
        self.tx.closed().await;
    }
}

/// The side handed to tonic.
pub struct Receiver<T> {
    rx: mpsc::Receiver<Result<T, Status>>,
    stalled: Arc<AtomicBool>,
    /// Position of the last message the client was given.
    progress: fn(&T) -> Option<u64>,
    last: Option<u64>,
    /// The RESOURCE_EXHAUSTED message, given the last position delivered.
    explain: Box<dyn Fn(Option<u64>) -> String + Send>,
    ended: bool,
}

/// A stream with `buffer` slots whose consumer may stall at most `stall`. `progress` names a
/// message's resume position; `explain` words the error from the last position delivered.
pub fn channel<T>(
    buffer: usize,
    stall: Duration,
    progress: fn(&T) -> Option<u64>,
    explain: impl Fn(Option<u64>) -> String + Send + 'static,
) -> (Sender<T>, Receiver<T>) {
    let (tx, rx) = mpsc::channel(buffer.max(1));
    let stalled = Arc::new(AtomicBool::new(false));
    (
        Sender {
            tx,
            stalled: stalled.clone(),
            stall,
        },
        Receiver {
            rx,
            stalled,
            progress,
            last: None,
            explain: Box::new(explain),
            ended: false,
        },
    )
}

impl<T> Stream for Receiver<T> {
    type Item = Result<T, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        if this.stalled.load(Ordering::Acquire) {
            // What is still buffered is dropped: the client resumes from what it was given.
            this.ended = true;
            this.rx.close();
            return Poll::Ready(Some(Err(Status::resource_exhausted((this.explain)(
                this.last,
            )))));
        }
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(item))) => {
                if let Some(p) = (this.progress)(&item) {
                    this.last = Some(p);
                }
                Poll::Ready(Some(Ok(item)))
            }
            Poll::Ready(None) if this.stalled.load(Ordering::Acquire) => {
                this.ended = true;
                Poll::Ready(Some(Err(Status::resource_exhausted((this.explain)(
                    this.last,
                )))))
            }
            other => other,
        }
    }
}
