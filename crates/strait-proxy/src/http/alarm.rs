//! A deadline timer for the per-request waits (a connection's idle wait, a route's timeout)
//! that costs no atomic operation when nothing changed.
//!
//! Polling a tokio `Sleep` registers the task's waker in the timer entry on every poll: two
//! compare-and-swaps, a waker clone and the old waker's drop, four locked instructions, about
//! 20 ns each on the bench machine. Moving it (`Sleep::reset`) clones the runtime handle and
//! drops the old one, two more. An [`Alarm`] polls its `Sleep` only when the waker asking is
//! not the one the entry holds (tokio keeps a registered waker until the timer fires, and a
//! reset keeps it too); otherwise it reads whether the entry fired. It moves its `Sleep` only
//! when the new deadline is earlier, or when it fired before the deadline now asked for: a busy
//! connection moves it once per timeout period, not once per request.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::time::{Instant, Sleep};

/// A timer kept from one wait to the next.
#[derive(Debug)]
pub(crate) struct Alarm {
    sleep: Pin<Box<Sleep>>,
    /// The waker the timer entry holds, from the last poll that registered it; `None` when
    /// it may hold none (never polled, fired, or moved after firing).
    registered: Option<Waker>,
}

impl Alarm {
    /// An alarm for `at`.
    pub(crate) fn new(at: Instant) -> Self {
        Alarm {
            sleep: Box::pin(tokio::time::sleep_until(at)),
            registered: None,
        }
    }

    /// Makes the alarm ring no later than `at`: moved only if `at` is earlier than its
    /// deadline, or if it already fired. A later `at` is left to [`Alarm::poll_until`], which
    /// moves the alarm when it fires early.
    pub(crate) fn arm(&mut self, at: Instant) {
        if self.sleep.deadline() > at || self.sleep.is_elapsed() {
            self.move_to(at);
        }
    }

    /// Ready once `at` passed. An earlier deadline firing (see [`Alarm::arm`]) moves the
    /// alarm to `at` and waits on.
    pub(crate) fn poll_until(&mut self, at: Instant, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let fired = match &self.registered {
                // The entry holds this task's waker: it wakes the task when it fires.
                Some(waker) if waker.will_wake(cx.waker()) => self.sleep.is_elapsed(),
                _ => {
                    let fired = self.sleep.as_mut().poll(cx).is_ready();
                    self.registered = (!fired).then(|| cx.waker().clone());
                    fired
                }
            };
            if !fired {
                return Poll::Pending;
            }
            if self.sleep.deadline() >= at {
                return Poll::Ready(());
            }
            self.move_to(at);
        }
    }

    fn move_to(&mut self, at: Instant) {
        // A fired entry gave its waker to the wake; one that did not fire keeps it, but the
        // next poll registering again costs less than knowing which.
        if self.sleep.is_elapsed() {
            self.registered = None;
        }
        self.sleep.as_mut().reset(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::time::Duration;

    fn later(ms: u64) -> Instant {
        Instant::now() + Duration::from_millis(ms)
    }

    #[tokio::test]
    async fn rings_at_its_deadline_polled_once_or_many_times() {
        let at = later(50);
        let mut alarm = Alarm::new(at);
        // The first poll registers; the ones after it only look.
        for _ in 0..3 {
            assert!(poll_fn(|cx| Poll::Ready(alarm.poll_until(at, cx)))
                .await
                .is_pending());
        }
        poll_fn(|cx| alarm.poll_until(at, cx)).await;
        assert!(Instant::now() >= at);
    }

    #[tokio::test]
    async fn a_later_deadline_is_kept_to_when_the_earlier_one_fires() {
        let first = later(10);
        let mut alarm = Alarm::new(first);
        // Registered for the first wait, then asked for a later deadline without moving.
        assert!(poll_fn(|cx| Poll::Ready(alarm.poll_until(first, cx)))
            .await
            .is_pending());
        let second = later(100);
        alarm.arm(second);
        poll_fn(|cx| alarm.poll_until(second, cx)).await;
        assert!(
            Instant::now() >= second,
            "rang early, at the first deadline"
        );
    }

    #[tokio::test]
    async fn an_earlier_deadline_moves_it() {
        let mut alarm = Alarm::new(later(1_000));
        let soon = later(10);
        alarm.arm(soon);
        poll_fn(|cx| alarm.poll_until(soon, cx)).await;
        let now = Instant::now();
        assert!(now >= soon && now < soon + Duration::from_millis(500));
    }

    #[tokio::test]
    async fn a_fired_alarm_kept_idle_rings_again_for_the_next_wait() {
        let first = later(10);
        let mut alarm = Alarm::new(first);
        assert!(poll_fn(|cx| Poll::Ready(alarm.poll_until(first, cx)))
            .await
            .is_pending());
        // It fires while nobody waits on it; the fire took the registered waker.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let next = later(20);
        alarm.arm(next);
        let rang = tokio::time::timeout(
            Duration::from_millis(200),
            poll_fn(|cx| alarm.poll_until(next, cx)),
        )
        .await;
        assert!(rang.is_ok(), "the alarm did not ring for the second wait");
        assert!(Instant::now() >= next);
    }

    #[tokio::test]
    async fn another_task_polling_it_is_woken() {
        let at = later(30);
        let mut alarm = Alarm::new(at);
        assert!(poll_fn(|cx| Poll::Ready(alarm.poll_until(at, cx)))
            .await
            .is_pending());
        // A second task (another waker) takes the alarm over: it must register its own.
        let rang = tokio::spawn(async move {
            poll_fn(|cx| alarm.poll_until(at, cx)).await;
            Instant::now()
        })
        .await
        .unwrap_or(at - Duration::from_millis(1));
        assert!(rang >= at);
    }
}
