//! The ingest pool: the threads that turn request bodies into writes.
//!
//! Decoding a body (Arrow, CSV, line protocol) and preparing its write (conversion to the
//! table's types, the split by partition, the WAL payloads) is CPU work of a few hundred
//! microseconds per 10,000-row body. Done on the async workers, it held up every request
//! behind it, a 100 us `count(*)` included; done on the blocking pool, it competed with
//! the queries there as an equal. Here it runs on its own threads at a lower priority
//! (`--ingest-nice`, see `zepto_storage::priority`): the async workers only move bytes, and
//! a query gets a core before the ingest work does.

use std::panic::AssertUnwindSafe;

use crossbeam_channel::{Sender, TrySendError};

use crate::error::{Error, Result};

/// Jobs that may wait for a thread. Each holds a body that was already read (and counted
/// against `--max-body-bytes`), so the queue itself adds no memory; past it a request is
/// answered 503.
const QUEUE: usize = 4096;

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of low-priority threads; they exit when the pool is dropped.
pub(crate) struct IngestPool {
    tx: Sender<Job>,
}

impl std::fmt::Debug for IngestPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestPool")
            .field("waiting", &self.tx.len())
            .finish()
    }
}

impl IngestPool {
    /// Start `threads` threads that lower their priority by `nice`.
    pub(crate) fn start(threads: usize, nice: i32) -> Result<IngestPool> {
        let (tx, rx) = crossbeam_channel::bounded::<Job>(QUEUE);
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("zepto-ingest-{i}"))
                .spawn(move || {
                    zepto_storage::priority::lower_current_thread(nice);
                    for job in rx.iter() {
                        // A panic fails its own request (its answer channel is dropped),
                        // not the thread.
                        let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                    }
                })
                .map_err(|e| Error::io("start an ingest thread", e))?;
        }
        Ok(IngestPool { tx })
    }

    /// Run `f` on an ingest thread and wait for its result.
    pub(crate) async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (done, answer) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            // The request may have gone away meanwhile: nobody to tell.
            let _ = done.send(f());
        });
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(Error::Unavailable {
                    message: format!(
                        "{QUEUE} ingest requests are waiting to be decoded; retry later"
                    ),
                    retry_after: Some(1),
                })
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(Error::Internal("the ingest threads have stopped".into()))
            }
        }
        answer
            .await
            .map_err(|_| Error::Internal("an ingest thread failed on this request".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_at_the_lower_priority_and_a_panic_fails_only_its_request() {
        let pool = IngestPool::start(2, 3).unwrap_or_else(|e| panic!("{e}"));
        let base = zepto_storage::priority::current_thread_nice();
        let nice = pool
            .run(zepto_storage::priority::current_thread_nice)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        if cfg!(target_os = "linux") {
            assert_eq!(nice, (base + 3).min(19));
        }
        let failed = pool.run(|| -> u32 { panic!("boom") }).await;
        assert!(matches!(failed, Err(Error::Internal(_))), "{failed:?}");
        // Both threads still serve.
        for i in 0..4u32 {
            assert_eq!(pool.run(move || i * 2).await.ok(), Some(i * 2));
        }
    }
}
