//! Admission of plugin calls: at most `limit` run at once (by default one per core).
//!
//! Deadlines are wall-clock (epoch interruption): without a gate, a request burst puts one
//! blocking thread per call on the run queue, and on a busy machine a healthy 0.1 ms call can
//! wait over 100 ms for a core and time out. A call (or a stream's `push`/`finish`) therefore
//! takes a permit first and arms its deadline only once admitted, so the deadline measures the
//! plugin, not the queue in front of it. Waiters are admitted in arrival order (a permit is
//! handed straight to the oldest waiter), so a call cannot starve behind later ones.
//!
//! The gate bounds CPU-bound work only. A guest blocked in the host (a clock subscription,
//! capped at its deadline by `CappedClock`) keeps its permit until it returns or times out.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::Thread;

pub(crate) struct CallGate {
    limit: usize,
    state: Mutex<GateState>,
}

struct GateState {
    free: usize,
    waiters: VecDeque<Arc<Waiter>>,
}

struct Waiter {
    granted: AtomicBool,
    thread: Thread,
}

/// A running call's place; dropping it admits the next waiter.
pub(crate) struct Permit<'a> {
    gate: &'a CallGate,
}

impl CallGate {
    /// `limit` permits (at least one).
    pub(crate) fn new(limit: usize) -> Self {
        let limit = limit.max(1);
        Self { limit, state: Mutex::new(GateState { free: limit, waiters: VecDeque::new() }) }
    }

    /// One permit per core the process may use.
    pub(crate) fn default_limit() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        // The state stays consistent across a panic (no code that can panic runs under the lock).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Blocks until a permit is free (or handed over), in arrival order.
    pub(crate) fn acquire(&self) -> Permit<'_> {
        let mut state = self.lock();
        if state.free > 0 {
            state.free -= 1;
            return Permit { gate: self };
        }
        let waiter = Arc::new(Waiter { granted: AtomicBool::new(false), thread: std::thread::current() });
        state.waiters.push_back(waiter.clone());
        drop(state);
        // `park` may return spuriously; the flag is the handover.
        while !waiter.granted.load(Ordering::Acquire) {
            std::thread::park();
        }
        Permit { gate: self }
    }

    fn release(&self) {
        let mut state = self.lock();
        match state.waiters.pop_front() {
            Some(next) => {
                drop(state);
                // The permit passes to `next` without becoming free in between.
                next.granted.store(true, Ordering::Release);
                next.thread.unpark();
            }
            None => state.free += 1,
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.gate.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    #[test]
    fn never_more_than_the_limit_run_and_everyone_gets_in() {
        let gate = CallGate::new(2);
        let running = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        let done = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..16 {
                s.spawn(|| {
                    for _ in 0..20 {
                        let _permit = gate.acquire();
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_micros(200));
                        running.fetch_sub(1, Ordering::SeqCst);
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        assert_eq!(done.load(Ordering::SeqCst), 16 * 20);
        assert_eq!(peak.load(Ordering::SeqCst), 2);
        // Every permit came back.
        assert_eq!(gate.lock().free, 2);
    }

    #[test]
    fn a_zero_limit_still_admits_one() {
        let gate = CallGate::new(0);
        assert_eq!(gate.limit(), 1);
        drop(gate.acquire());
        drop(gate.acquire());
    }
}
