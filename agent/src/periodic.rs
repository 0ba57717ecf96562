//! Threads that do a piece of work at a fixed interval until told to stop:
//! the agent's own clock, so periodic sampling never runs on the host's
//! runtime and never wakes the debug server.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// A stop flag a periodic thread sleeps on.
#[derive(Debug, Default)]
struct Stop {
    stopped: Mutex<bool>,
    wake: Condvar,
}

impl Stop {
    /// Sleeps until `deadline`; `true` if told to stop meanwhile.
    fn wait_until(&self, deadline: Instant) -> bool {
        let mut stopped = self.stopped.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if *stopped {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            stopped = self
                .wake
                .wait_timeout(stopped, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// Stops its thread when dropped (without waiting for it).
#[derive(Debug)]
pub(crate) struct StopOnDrop(Arc<Stop>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        *self
            .0
            .stopped
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        self.0.wake.notify_all();
    }
}

/// Runs `work` every `interval` on a thread named `name`, first after one
/// interval. A late round does not make the next ones run in a burst.
pub(crate) fn spawn_every(
    name: &str,
    interval: Duration,
    mut work: impl FnMut() + Send + 'static,
) -> std::io::Result<StopOnDrop> {
    let stop = Arc::new(Stop::default());
    let waiting = Arc::clone(&stop);
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            // A fifth of the interval: long enough that the wake-up rides on
            // another thread's timer (the stall watchdog's) most of the time.
            relax_timer_slack(interval / 5);
            let mut next = Instant::now() + interval;
            while !waiting.wait_until(next) {
                work();
                next += interval;
                let now = Instant::now();
                if next < now {
                    next = now + interval;
                }
            }
        })?;
    Ok(StopOnDrop(stop))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn runs_until_dropped() {
        let rounds = Arc::new(AtomicU32::new(0));
        let counted = Arc::clone(&rounds);
        let guard = spawn_every("periodic-test", Duration::from_millis(5), move || {
            counted.fetch_add(1, Ordering::Relaxed);
        })
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while rounds.load(Ordering::Relaxed) < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(guard);
        std::thread::sleep(Duration::from_millis(50));
        let after = rounds.load(Ordering::Relaxed);
        assert!(after >= 3);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(rounds.load(Ordering::Relaxed), after, "stopped");
    }
}

/// Lets the kernel delay the calling thread's timed wake-ups by up to
/// `slack` so it can serve them together with other timers that are due
/// (one interrupt instead of several): the agent's periodic threads do not
/// need their wake-ups to the microsecond, and on a VM each separate
/// wake-up costs tens of microseconds.
pub(crate) fn relax_timer_slack(slack: Duration) {
    #[cfg(target_os = "linux")]
    {
        let nanos = libc::c_ulong::try_from(slack.as_nanos()).unwrap_or(libc::c_ulong::MAX);
        #[allow(unsafe_code)]
        // SAFETY: PR_SET_TIMERSLACK takes a plain integer and only changes
        // the calling thread's timer slack; it cannot fail in a way that
        // matters (the old slack stays).
        unsafe {
            libc::prctl(libc::PR_SET_TIMERSLACK, nanos, 0, 0, 0);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = slack;
}

/// Why [`Alarm::sleep_until`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// The deadline passed.
    Deadline,
    /// The alarm rang: work has just arrived.
    Rung,
    /// The thread was told to stop.
    Stopped,
}

/// Wakes an agent thread that sleeps long while the host is idle, from the
/// host's own threads when work arrives: the RED layer rings it at the
/// start of every request. While the thread is awake a ring is one relaxed
/// atomic load; only the first ring after the thread went dormant unparks
/// it (one futex wake). No lock is ever taken.
#[derive(Debug, Default)]
pub(crate) struct Alarm {
    dormant: AtomicBool,
    thread: OnceLock<std::thread::Thread>,
}

impl Alarm {
    /// Makes the calling thread the one this alarm wakes.
    pub(crate) fn attach_current_thread(&self) {
        let _ = self.thread.set(std::thread::current());
    }

    /// Wakes the attached thread if it sleeps dormant.
    #[inline]
    pub(crate) fn ring(&self) {
        if self.dormant.load(Ordering::Relaxed) && self.dormant.swap(false, Ordering::AcqRel) {
            self.unpark();
        }
    }

    /// Wakes the attached thread whatever it sleeps for (to stop it).
    pub(crate) fn unpark(&self) {
        if let Some(thread) = self.thread.get() {
            thread.unpark();
        }
    }

    /// Sleeps the attached thread until `deadline`, until `stop` is set, or
    /// — when `dormant` — until the alarm rings.
    pub(crate) fn sleep_until(&self, deadline: Instant, dormant: bool, stop: &AtomicBool) -> Wake {
        self.dormant.store(dormant, Ordering::Release);
        loop {
            if stop.load(Ordering::Acquire) {
                self.dormant.store(false, Ordering::Relaxed);
                return Wake::Stopped;
            }
            if dormant && !self.dormant.load(Ordering::Acquire) {
                return Wake::Rung;
            }
            let now = Instant::now();
            if now >= deadline {
                self.dormant.store(false, Ordering::Relaxed);
                return Wake::Deadline;
            }
            std::thread::park_timeout(deadline - now);
        }
    }
}

#[cfg(test)]
mod alarm_tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_ring_ends_a_dormant_sleep_and_a_stop_ends_any() {
        let alarm = Arc::new(Alarm::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (sleeper_alarm, sleeper_stop) = (Arc::clone(&alarm), Arc::clone(&stop));
        let (woke_tx, woke) = std::sync::mpsc::channel();
        let sleeper = std::thread::spawn(move || {
            sleeper_alarm.attach_current_thread();
            let t = Instant::now();
            let woke = sleeper_alarm.sleep_until(t + Duration::from_secs(30), true, &sleeper_stop);
            let _ = woke_tx.send((woke, t.elapsed()));
            // Not dormant: a ring does not wake it, a stop does.
            sleeper_alarm.sleep_until(
                Instant::now() + Duration::from_secs(30),
                false,
                &sleeper_stop,
            )
        });
        // Ring until the sleeper has gone dormant and woken up.
        let deadline = Instant::now() + Duration::from_secs(10);
        let (woke, slept) = loop {
            alarm.ring();
            if let Ok(answer) = woke.recv_timeout(Duration::from_millis(10)) {
                break answer;
            }
            assert!(Instant::now() < deadline, "the ring never woke the sleeper");
        };
        assert_eq!(woke, Wake::Rung);
        assert!(slept < Duration::from_secs(10));
        alarm.ring();
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            !sleeper.is_finished(),
            "a ring does not end a sleep that is not dormant"
        );
        stop.store(true, Ordering::Release);
        alarm.unpark();
        assert_eq!(sleeper.join().unwrap(), Wake::Stopped);
    }
}
