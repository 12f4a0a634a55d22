//! Group commit: many tasks that each need one Redis write share one round trip.
//!
//! Every terminal of the proxy ends with one reply + XACK + XDEL. Sent one by one, each costs a
//! script call, a command frame and a system call on both ends. A [`Batcher`] puts one writer task in front of them: callers
//! queue their item and await its outcome; the writer takes everything queued (up to a limit),
//! writes it in one call, and hands each caller its own outcome.
//!
//! There is no timer and no minimum batch: a lone item is written at once, so latency at low
//! load is unchanged (one channel hop). Under load, items that arrive while a write is in
//! flight wait for it and share the next one, so the batch size follows the load by itself
//! (about the number of callers that become ready during one round trip). A small number of
//! writes may be in flight at once, so the pipe to Redis never runs dry while a batch forms.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

/// An item waiting for the writer, and where to send its outcome.
type Queued<T, R> = (T, oneshot::Sender<R>);

/// The callers' end of a group-commit writer. Cheap to clone; the writer stops when the last
/// clone is dropped.
pub struct Batcher<T, R> {
    queue: mpsc::UnboundedSender<Queued<T, R>>,
}

impl<T, R> Clone for Batcher<T, R> {
    fn clone(&self) -> Self {
        Batcher {
            queue: self.queue.clone(),
        }
    }
}

/// The writer stopped before it reported an outcome (the runtime is shutting down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the batch writer stopped before writing this item")]
pub struct WriterGone;

impl<T: Send + 'static, R: Send + 'static> Batcher<T, R> {
    /// Spawns the writer on the current runtime. `write` gets up to `max_batch` items in
    /// arrival order and must return one outcome per item, in the same order. Up to
    /// `max_in_flight` writes run at once: with a single one, the services idled while it was
    /// in flight (one round trip at a time cannot keep Redis and both cores busy); a few keep
    /// the pipe full while batches still form under load.
    ///
    /// The queue is unbounded on purpose: every caller waits for its own outcome, so the queue
    /// never holds more items than there are callers (e.g. the proxy's terminals), which the
    /// caller already bounds.
    pub fn start<W, Fut>(max_batch: usize, max_in_flight: usize, write: W) -> Self
    where
        W: FnMut(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<R>> + Send + 'static,
    {
        Self::start_weighed(max_batch, usize::MAX, |_| 0, max_in_flight, write)
    }

    /// Like [`Batcher::start`], but a batch also stops before its items' total `weigh`t would
    /// pass `max_weight` (one item alone is always written, whatever it weighs). The proxy
    /// weighs replies by their bytes: a batch is encoded into one command buffer, and eight
    /// 1 MiB replies in one call grew that buffer (and the process's peak memory) by 8 MiB+.
    pub fn start_weighed<W, Fut, G>(
        max_batch: usize,
        max_weight: usize,
        weigh: G,
        max_in_flight: usize,
        mut write: W,
    ) -> Self
    where
        W: FnMut(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<R>> + Send + 'static,
        G: Fn(&T) -> usize + Send + 'static,
    {
        let max_batch = max_batch.max(1);
        let in_flight = Arc::new(Semaphore::new(max_in_flight.max(1)));
        let (queue, mut queued) = mpsc::unbounded_channel::<Queued<T, R>>();
        tokio::spawn(async move {
            // The item that did not fit the previous batch: it opens the next one.
            let mut held: Option<Queued<T, R>> = None;
            loop {
                // Wait for a free write slot first: items keep queuing meanwhile.
                let Ok(slot) = in_flight.clone().acquire_owned().await else {
                    return; // never closed
                };
                let first = match held.take() {
                    Some(item) => item,
                    None => match queued.recv().await {
                        Some(item) => item,
                        None => return, // every caller's end is gone
                    },
                };
                let mut weight = weigh(&first.0);
                let mut batch = Vec::with_capacity(max_batch.min(64));
                batch.push(first);
                while batch.len() < max_batch {
                    let Ok(item) = queued.try_recv() else { break };
                    let more = weigh(&item.0);
                    if weight.saturating_add(more) > max_weight {
                        held = Some(item);
                        break;
                    }
                    weight += more;
                    batch.push(item);
                }
                let (items, senders): (Vec<T>, Vec<_>) = batch.into_iter().unzip();
                let written = write(items);
                tokio::spawn(async move {
                    let outcomes = written.await;
                    drop(slot);
                    for (sender, outcome) in senders.into_iter().zip(outcomes) {
                        let _ = sender.send(outcome); // the caller may have given up
                    }
                });
            }
        });
        Batcher { queue }
    }

    /// Queues `item` and waits for its outcome.
    pub async fn submit(&self, item: T) -> Result<R, WriterGone> {
        let (sender, outcome) = oneshot::channel();
        self.queue.send((item, sender)).map_err(|_| WriterGone)?;
        outcome.await.map_err(|_| WriterGone)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[tokio::test]
    async fn a_lone_item_is_written_at_once_and_gets_its_own_outcome() {
        let batcher = Batcher::start(8, 1, |items: Vec<u32>| async move {
            items.into_iter().map(|n| n * 10).collect::<Vec<_>>()
        });
        assert_eq!(batcher.submit(4).await, Ok(40));
        assert_eq!(batcher.submit(5).await, Ok(50));
    }

    /// Batches written so far, in order.
    type Written = Arc<Mutex<Vec<Vec<u32>>>>;

    /// A writer that records each batch and holds every write until `gate` opens, so items
    /// queue up behind the first write.
    fn held_writer(
        written: Written,
        gate: tokio::sync::watch::Receiver<bool>,
    ) -> impl FnMut(Vec<u32>) -> std::pin::Pin<Box<dyn Future<Output = Vec<u32>> + Send>> + Send + 'static
    {
        move |items: Vec<u32>| {
            written
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(items.clone());
            let mut gate = gate.clone();
            Box::pin(async move {
                let _ = gate.wait_for(|open| *open).await;
                items
            })
        }
    }

    /// Submits 0 and waits until its write has started (and blocks), then submits `rest` one
    /// at a time (so they queue in that order), opens the gate and checks every outcome.
    /// Returns the batches written.
    async fn submit_behind_a_held_write(
        batcher: Batcher<u32, u32>,
        written: Written,
        release: tokio::sync::watch::Sender<bool>,
        rest: &[u32],
    ) -> Vec<Vec<u32>> {
        let batches = || written.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let first = tokio::spawn({
            let batcher = batcher.clone();
            async move { batcher.submit(0).await }
        });
        while batches().is_empty() {
            tokio::task::yield_now().await;
        }
        let mut tasks = Vec::new();
        for &n in rest {
            let batcher = batcher.clone();
            tasks.push((n, tokio::spawn(async move { batcher.submit(n).await })));
            for _ in 0..5 {
                tokio::task::yield_now().await;
            }
        }
        let _ = release.send(true);
        assert_eq!(first.await.ok(), Some(Ok(0)));
        for (n, task) in tasks {
            assert_eq!(
                task.await.ok(),
                Some(Ok(n)),
                "each caller gets its own outcome"
            );
        }
        batches()
    }

    #[tokio::test]
    async fn items_queued_during_a_write_share_the_next_one_up_to_the_limit() {
        let written = Written::default();
        let (release, gate) = tokio::sync::watch::channel(false);
        let batcher = Batcher::start(3, 1, held_writer(written.clone(), gate));
        let batches = submit_behind_a_held_write(batcher, written, release, &[1, 2, 3, 4, 5]).await;
        let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        assert_eq!(
            sizes,
            vec![1, 3, 2],
            "one alone, then full batches of at most 3"
        );
    }

    #[tokio::test]
    async fn a_batch_stops_before_its_weight_passes_the_limit_but_a_heavy_item_goes_alone() {
        let written = Written::default();
        let (release, gate) = tokio::sync::watch::channel(false);
        // Each item weighs its value; at most 10 per batch.
        let batcher = Batcher::start_weighed(
            8,
            10,
            |n: &u32| *n as usize,
            1,
            held_writer(written.clone(), gate),
        );
        let batches =
            submit_behind_a_held_write(batcher, written, release, &[8, 3, 4, 20, 1]).await;
        assert_eq!(
            batches,
            vec![vec![0], vec![8], vec![3, 4], vec![20], vec![1]],
            "8 + 3 would pass 10; 20 alone passes it and is still written"
        );
    }

    #[tokio::test]
    async fn up_to_max_in_flight_writes_run_at_once() {
        let (release, gate) = tokio::sync::watch::channel(false);
        let started = Arc::new(Mutex::new(0));
        let count = started.clone();
        let batcher = Batcher::start(8, 2, move |items: Vec<u32>| {
            *count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
            let mut gate = gate.clone();
            async move {
                let _ = gate.wait_for(|open| *open).await;
                items
            }
        });
        let writes = || *started.lock().unwrap_or_else(|p| p.into_inner());
        let mut tasks = Vec::new();
        for (n, writes_after) in [(0, 1), (1, 2), (2, 2)] {
            let batcher = batcher.clone();
            tasks.push(tokio::spawn(async move { batcher.submit(n).await }));
            for _ in 0..20 {
                tokio::task::yield_now().await;
            }
            // Two writes run although neither finished; the third item waits for a slot.
            assert_eq!(writes(), writes_after, "after item {n}");
        }
        let _ = release.send(true);
        for (n, task) in (0..3).zip(tasks) {
            assert_eq!(task.await.ok(), Some(Ok(n)));
        }
        assert_eq!(writes(), 3);
    }

    #[tokio::test]
    async fn a_writer_that_answers_too_few_outcomes_fails_the_rest_not_hangs() {
        let batcher = Batcher::start(8, 1, |_items: Vec<u32>| async { Vec::<u32>::new() });
        assert_eq!(batcher.submit(1).await, Err(WriterGone));
    }
}
