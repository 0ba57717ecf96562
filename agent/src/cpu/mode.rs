//! The `state` label of wall-clock samples, and telling parked tokio
//! workers from blocked ones.

use crate::profile::scheduler::{classify, ThreadState};
use crate::profile::Profile;

/// What a wall-clock sample found its thread doing; the `state` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SampleState {
    /// On a CPU, or ready to run.
    Running,
    /// Asleep or blocked.
    Waiting,
}

impl SampleState {
    /// The code a sample carries through the ring (0: no state, CPU mode).
    #[cfg_attr(not(all(feature = "cpu", native_unwind)), allow(dead_code))]
    pub(crate) fn code(self) -> u8 {
        match self {
            SampleState::Running => 1,
            SampleState::Waiting => 2,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<SampleState> {
        match code {
            1 => Some(SampleState::Running),
            2 => Some(SampleState::Waiting),
            _ => None,
        }
    }

    /// The `state` label's value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SampleState::Running => "running",
            SampleState::Waiting => "waiting",
        }
    }
}

/// Relabels `state=waiting` samples of threads idle in a tokio scheduler as
/// `state=parked`. A sample qualifies when its stack is parked in the
/// scheduler (see [`classify`]) and it carries no other label: a labelled
/// future or guard was running, so the thread was inside a poll, not idle.
/// Needs symbolized frames; an unsymbolized profile keeps `waiting`.
pub(crate) fn mark_parked(profile: &mut Profile) {
    let parked: Vec<usize> = profile
        .samples
        .iter()
        .enumerate()
        .filter(|(_, s)| s.labels.len() == 1 && s.labels.get("state") == Some("waiting"))
        .filter(|(_, s)| {
            let frames: Vec<&str> = profile.frames_root_first(s).map(|f| &*f.function).collect();
            classify(&frames) == ThreadState::Parked
        })
        .map(|(i, _)| i)
        .collect();
    for i in parked {
        let sample = &mut profile.samples[i];
        sample.labels = sample.labels.with("state", "parked");
    }
}

#[cfg(all(test, feature = "cpu", native_unwind))]
mod tests {
    use crate::mode::{ProfileMode, WallThreads};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::cpu::tests::spin_in_a_named_function;
    use crate::cpu::{exclusive_sampler, sampler, CpuProfiler, ProfileRequest};
    use crate::Error;

    #[inline(never)]
    fn sleep_for_the_wall_test(stop: &AtomicBool) -> Duration {
        let mut slept = Duration::ZERO;
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            std::thread::sleep(Duration::from_millis(20));
            slept += started.elapsed();
            // A sleep cut short by the signal would return early.
            assert!(started.elapsed() >= Duration::from_millis(20));
        }
        slept
    }

    /// State label → samples, over samples on thread `thread`.
    fn states_on(profile: &crate::profile::Profile, thread: &str) -> Vec<(String, i64)> {
        let mut states: Vec<(String, i64)> = Vec::new();
        for sample in profile
            .samples
            .iter()
            .filter(|s| s.thread.as_deref() == Some(thread))
        {
            let state = sample.labels.get("state").unwrap_or("none").to_owned();
            match states.iter_mut().find(|(s, _)| *s == state) {
                Some(row) => row.1 += sample.values[0],
                None => states.push((state, sample.values[0])),
            }
        }
        states
    }

    fn count(states: &[(String, i64)], state: &str) -> i64 {
        states.iter().find(|(s, _)| s == state).map_or(0, |r| r.1)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wall_mode_samples_running_waiting_and_parked_threads() {
        let _sampler = exclusive_sampler().await;
        let stop = Arc::new(AtomicBool::new(false));
        let spawn = |name: &str, work: fn(&AtomicBool)| {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || work(&stop))
                .unwrap()
        };
        let spinner = spawn("wall-spinner", |stop| {
            spin_in_a_named_function(stop);
        });
        let sleeper = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("wall-sleeper".into())
                .spawn(move || sleep_for_the_wall_test(&stop))
                .unwrap()
        };
        let idle = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("wall-idle-rt")
            .enable_all()
            .build()
            .unwrap();
        // A CPU profile meanwhile is refused, and says what runs.
        let profiler = CpuProfiler::global();
        let wall = ProfileRequest::new(Duration::from_secs(2))
            .hz(50)
            .mode(ProfileMode::Wall(WallThreads::All));
        let running = tokio::spawn({
            let profiler = profiler.clone();
            async move { profiler.profile(wall).await }
        });
        while profiler.status().running_mode.is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let refused = profiler
            .profile(ProfileRequest::new(Duration::from_secs(1)).hz(50))
            .await;
        match refused {
            Err(error @ Error::ProfilerBusy { .. }) => {
                assert!(error.to_string().contains("mode=wall&hz=50"), "{error}");
            }
            other => panic!("a CPU request during a wall profile: {other:?}"),
        }
        let raw = running.await.unwrap().unwrap();
        stop.store(true, Ordering::Relaxed);
        spinner.join().unwrap();
        let slept = sleeper.join().unwrap();
        assert!(slept >= Duration::from_secs(1), "{slept:?}");
        idle.shutdown_background();

        assert_eq!(raw.mode(), ProfileMode::Wall(WallThreads::All));
        let profile = raw.to_profile();
        assert_eq!(profile.sample_types[1].kind, "wall");
        // Each thread is sampled at hz whether it runs or sleeps: ~100 each.
        let spinning = states_on(&profile, "wall-spinner");
        let sleeping = states_on(&profile, "wall-sleeper");
        for (name, states) in [("spinner", &spinning), ("sleeper", &sleeping)] {
            let total: i64 = states.iter().map(|r| r.1).sum();
            assert!((60..=110).contains(&total), "{name}: {states:?}");
        }
        let total = |s: &[(String, i64)]| s.iter().map(|r| r.1).sum::<i64>() as f64;
        assert!(
            count(&spinning, "running") as f64 >= 0.9 * total(&spinning),
            "{spinning:?}"
        );
        assert!(
            count(&sleeping, "waiting") as f64 >= 0.9 * total(&sleeping),
            "{sleeping:?}"
        );
        // Idle tokio workers are parked, not waiting in a poll.
        let idle = states_on(&profile, "wall-idle-rt");
        eprintln!(
            "spinner {spinning:?}, sleeper {sleeping:?}, idle runtime {idle:?}; {:?}",
            profile.comments
        );
        assert!(
            count(&idle, "parked") as f64 >= 0.9 * total(&idle),
            "{idle:?}"
        );
        assert!(total(&idle) >= 100.0, "{idle:?}");
        // Stacks are right for blocked threads too.
        let in_sleep: i64 = profile
            .samples
            .iter()
            .filter(|s| s.thread.as_deref() == Some("wall-sleeper"))
            .filter(|s| {
                profile
                    .frames_root_first(s)
                    .any(|f| f.function.ends_with("sleep_for_the_wall_test"))
            })
            .map(|s| s.values[0])
            .sum();
        assert!(in_sleep as f64 >= 0.9 * total(&sleeping));

        let deadline = Instant::now() + Duration::from_secs(5);
        while profiler.status().running_mode.is_some() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(profiler.status().running_mode, None);
        assert!(
            sampler::wall_signal_ignored(),
            "the wall-clock signal is left ignored, not SIG_DFL"
        );
    }

    #[test]
    fn states_and_modes_have_stable_names() {
        for state in [SampleState::Running, SampleState::Waiting] {
            assert_eq!(SampleState::from_code(state.code()), Some(state));
        }
        assert_eq!(SampleState::from_code(0), None);
        assert_eq!(ProfileMode::Cpu.query(), "mode=cpu");
        assert_eq!(
            ProfileMode::Wall(WallThreads::All).to_string(),
            "wall-clock (threads=all)"
        );
    }
}
