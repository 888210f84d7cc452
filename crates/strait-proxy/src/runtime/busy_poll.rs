//! Busy polling (`busy_poll` in the config): a worker that runs out of work checks its sockets
//! again for a while before it lets its thread sleep.
//!
//! A sleeping thread's core may halt. On a virtual machine whose kernel and host do not poll
//! before they deschedule a halted virtual CPU (`guest_halt_poll_ns`, `halt_poll_ns`), waking it
//! again takes tens of microseconds, which every request that finds the worker asleep waits
//! for (one connection sending one request at a time, measured: 164 µs a round trip through
//! the proxy, 47 µs with the worker polling). A worker that keeps polling for a short window
//! after its last work does not halt between requests closer together than the window.
//!
//! This is HAProxy's `busy-polling`, bounded so that an idle worker still sleeps: the window
//! starts again at each piece of work, and a worker that saw none for the whole window parks
//! as before.
//!
//! tokio has no hook into its poller, so the window is made of what it offers. Just before a
//! runtime parks its thread, its `on_thread_park` hook runs [`before_park`]. Within the window
//! that wakes the worker's [`spinner`] task, and a runtime with a task to run polls its driver
//! without blocking (`epoll_wait` with a zero timeout) instead of parking, runs what became
//! ready, and comes back to the hook once it has run out again.
//!
//! Work is what the worker's tasks (its listeners, its connections, their upstream connections)
//! do: they are spawned through [`spawn`], which counts their polls, and a round in which
//! the count moved did work. A round in which only the spinner ran did none.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::Shared;

thread_local! {
    /// This thread's spinner, once its worker has started one.
    static SPINNER: RefCell<Option<Waker>> = const { RefCell::new(None) };
    /// Polls of this thread's [`spawn`]ed tasks, ever.
    static POLLS: Cell<u64> = const { Cell::new(0) };
    /// `POLLS` when the hook last ran.
    static POLLS_SEEN: Cell<u64> = const { Cell::new(0) };
    /// When this thread's current stretch without work began; `None` when it is not spinning.
    static IDLE_SINCE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// A runtime builder's `on_thread_park` hook for threads that may run workers of `shared`.
/// On a thread without a spinner (the control thread of a proxy with several workers) it does
/// nothing.
pub(crate) fn hook(shared: &Arc<Shared>) -> impl Fn() + Send + Sync + 'static {
    let shared = Arc::clone(shared);
    move || {
        let window = shared.busy_poll();
        if !window.is_zero() {
            before_park(window);
        }
    }
}

/// Wakes this thread's spinner, so that the runtime polls instead of parking, while the thread
/// is within `window` of its last work. Returns whether it did.
pub(crate) fn before_park(window: Duration) -> bool {
    if SPINNER.with_borrow(Option::is_none) {
        return false;
    }
    let now = Instant::now();
    let polls = POLLS.get();
    let worked = POLLS_SEEN.replace(polls) != polls;
    let idle_since = match (IDLE_SINCE.get(), worked) {
        (Some(since), false) => since,
        // Woken from a sleep by something of the runtime's own (a timer no task of the worker
        // waited for): nothing to poll for.
        (None, false) => return false,
        // Work ran since the last round, or woke the thread.
        (_, true) => now,
    };
    if now.saturating_duration_since(idle_since) >= window {
        IDLE_SINCE.set(None);
        return false;
    }
    IDLE_SINCE.set(Some(idle_since));
    // Woken from outside its set, the spinner is only queued: nothing borrows the slot again
    // before this returns.
    SPINNER.with_borrow(|s| s.as_ref().map(Waker::wake_by_ref));
    true
}

/// Polls of this thread's [`spawn`]ed tasks so far: how much work the thread has done (see
/// [`super::Trim`]).
pub(crate) fn polls() -> u64 {
    POLLS.get()
}

/// Spawns a worker task on the worker's `LocalSet`, its polls counted as work (see the
/// module's documentation). Every task that serves traffic is spawned here.
pub(crate) fn spawn<F>(task: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    tokio::task::spawn_local(counted(task))
}

/// `task`, its polls counted as work.
fn counted<F: Future>(task: F) -> Counted<F> {
    Counted { task }
}

pin_project_lite::pin_project! {
    /// See [`spawn`]. A struct rather than an `async fn`: an `async fn` keeps its argument
    /// beside what it awaits, and a connection's future (about 800 bytes while it waits for a
    /// request) was held twice, per idle keep-alive connection.
    pub(crate) struct Counted<F> {
        #[pin]
        task: F,
    }
}

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        POLLS.set(POLLS.get().wrapping_add(1));
        self.project().task.poll(cx)
    }
}

/// The task [`before_park`] wakes. Polled, it leaves its waker where the hook finds it.
/// Spawned on each worker's `LocalSet`; it ends when the set is dropped.
pub(crate) fn spinner() -> impl Future<Output = ()> {
    Spinner
}

struct Spinner;

impl Future for Spinner {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        SPINNER.with_borrow_mut(|slot| match slot {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => *slot = Some(cx.waker().clone()),
        });
        Poll::Pending
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        // The thread may run another worker later (tests, `strait demo`): it starts clean. At
        // thread exit the slots may be gone already.
        let _ = SPINNER.try_with(|s| s.borrow_mut().take());
        let _ = IDLE_SINCE.try_with(|c| c.set(None));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;
    use tokio::task::LocalSet;

    /// What the hook decided and when: `true` for a round polled, `false` for a park.
    type Decisions = Mutex<Vec<(Instant, bool)>>;

    /// Runs `body` on a worker-like runtime (current thread, a `LocalSet`, the spinner) whose
    /// park hook uses `window`, and returns what the hook decided. The body is a counted task
    /// of the set, as a worker's connections are.
    fn run<F: Future<Output = ()> + 'static>(window: Duration, body: F) -> Arc<Decisions> {
        let decisions = Arc::new(Decisions::default());
        let seen = Arc::clone(&decisions);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_park(move || {
                let spun = before_park(window);
                seen.lock()
                    .expect("not poisoned")
                    .push((Instant::now(), spun));
            })
            .build()
            .expect("a runtime");
        LocalSet::new().block_on(&runtime, async {
            tokio::task::spawn_local(spinner());
            spawn(body).await.expect("the body ran");
        });
        decisions
    }

    fn parks(d: &Decisions) -> Vec<Instant> {
        let d = d.lock().expect("not poisoned");
        d.iter()
            .filter(|(_, spun)| !spun)
            .map(|(at, _)| *at)
            .collect()
    }

    fn rounds(d: &Decisions) -> Vec<Instant> {
        let d = d.lock().expect("not poisoned");
        d.iter()
            .filter(|(_, spun)| *spun)
            .map(|(at, _)| *at)
            .collect()
    }

    #[test]
    fn counting_adds_nothing_to_a_task() {
        let task = async {
            let held = [7u8; 800];
            tokio::task::yield_now().await;
            held.iter().map(|&b| u32::from(b)).sum::<u32>()
        };
        let size = std::mem::size_of_val(&task);
        assert_eq!(std::mem::size_of_val(&counted(task)), size);
    }

    #[test]
    fn without_a_window_the_worker_parks_at_once() {
        // `hook` does not even call `before_park` for a zero window; the function agrees.
        let d = run(Duration::ZERO, async {
            tokio::time::sleep(Duration::from_millis(20)).await;
        });
        assert!(rounds(&d).is_empty());
        assert!(!parks(&d).is_empty());
    }

    #[test]
    fn an_idle_worker_polls_for_the_window_then_sleeps() {
        let window = Duration::from_millis(15);
        let start = Instant::now();
        let d = run(window, async {
            tokio::time::sleep(Duration::from_millis(200)).await;
        });
        // It polled round after round (thousands of rounds in 15 ms), then parked, and slept
        // until its timer: the runtime may wake early for its own timer wheel, which is no
        // work, and parks again at once.
        let (rounds, parks) = (rounds(&d), parks(&d));
        assert!(rounds.len() > 100, "only {} rounds polled", rounds.len());
        let slept_at = parks[0].duration_since(start);
        assert!(
            slept_at >= window && slept_at < Duration::from_millis(150),
            "parked after {slept_at:?}"
        );
        assert!(
            rounds.iter().all(|&r| r < parks[0]),
            "polled again after it slept: parks at {parks:?}"
        );
    }

    #[test]
    fn work_within_the_window_keeps_the_worker_polling() {
        // A message every 2 ms from another thread, for 40 ms, with a 30 ms window: the worker
        // never parks while they come, and parks once after the last.
        let window = Duration::from_millis(30);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
        let sender = std::thread::spawn(move || {
            for i in 0..20 {
                std::thread::sleep(Duration::from_millis(2));
                if tx.send(i).is_err() {
                    return;
                }
            }
        });
        let received = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&received);
        let last = Arc::new(Mutex::new(None));
        let last_seen = Arc::clone(&last);
        let d = run(window, async move {
            while rx.recv().await.is_some() {
                count.fetch_add(1, Ordering::Relaxed);
                *last_seen.lock().expect("not poisoned") = Some(Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(60)).await;
        });
        sender.join().expect("the sender ran");
        assert_eq!(
            received.load(Ordering::Relaxed),
            20,
            "every message arrived"
        );
        let last = last
            .lock()
            .expect("not poisoned")
            .expect("messages arrived");
        let parks = parks(&d);
        assert!(
            parks.iter().all(|&at| at >= last + window),
            "parked while messages came: {parks:?}, last message at {last:?}"
        );
        assert!(!parks.is_empty(), "never parked");
    }
}
