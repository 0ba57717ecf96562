//! Profiles kept on the agent after they were taken (`POST
//! /debug/profiles`), so that one window renders in every format: the
//! dashboard shows a profile's flame graph and offers its pprof, folded and
//! text forms of the same samples, not of another window.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::Profile;

/// Most profiles kept; the oldest goes first.
pub(crate) const MAX_KEPT_PROFILES: usize = 4;

/// Most memory the kept profiles may hold, estimated
/// ([`Profile::approx_bytes`]); the oldest go first. One profile larger than
/// this alone is still kept (the newest always is).
pub(crate) const MAX_KEPT_BYTES: usize = 32 << 20;

/// What a kept profile is, without its samples.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct KeptInfo {
    /// Its id, unique for the agent's lifetime.
    pub(crate) id: u64,
    /// Where it renders: `GET {url}?format=svg|pprof|folded|text|json`.
    pub(crate) url: String,
    /// `cpu` or `wall`.
    pub(crate) mode: &'static str,
    /// Samples per second asked for.
    pub(crate) hz: u32,
    /// When the window started (RFC 3339).
    #[serde(serialize_with = "crate::report::time")]
    pub(crate) started_at: SystemTime,
    /// How long it ran.
    #[serde(rename = "duration_ms", serialize_with = "crate::report::ms")]
    pub(crate) duration: Duration,
    /// Samples taken.
    pub(crate) samples: u64,
    /// Memory it holds, estimated.
    pub(crate) memory_bytes: usize,
}

#[derive(Debug)]
struct Kept {
    info: KeptInfo,
    profile: Arc<Profile>,
}

#[derive(Debug, Default)]
struct Shelf {
    next_id: u64,
    kept: VecDeque<Kept>,
}

/// The kept profiles, newest last, bounded in count and memory.
#[derive(Debug)]
pub(crate) struct ProfileShelf {
    shelf: Mutex<Shelf>,
    max_profiles: usize,
    max_bytes: usize,
}

impl Default for ProfileShelf {
    fn default() -> Self {
        ProfileShelf::with_bounds(MAX_KEPT_PROFILES, MAX_KEPT_BYTES)
    }
}

/// What [`ProfileShelf::keep`] is told about a profile besides its samples.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeptFacts {
    pub(crate) mode: &'static str,
    pub(crate) hz: u32,
    pub(crate) samples: u64,
}

impl ProfileShelf {
    /// A shelf for at most `max_profiles` holding at most `max_bytes`.
    pub(crate) fn with_bounds(max_profiles: usize, max_bytes: usize) -> Self {
        ProfileShelf {
            shelf: Mutex::default(),
            max_profiles: max_profiles.max(1),
            max_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shelf> {
        self.shelf.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `profile`, dropping the oldest ones over the bounds.
    pub(crate) fn keep(&self, profile: Profile, facts: KeptFacts) -> KeptInfo {
        let memory_bytes = profile.approx_bytes();
        let mut shelf = self.lock();
        shelf.next_id += 1;
        let id = shelf.next_id;
        let info = KeptInfo {
            id,
            url: format!("/debug/profiles/{id}"),
            mode: facts.mode,
            hz: facts.hz,
            started_at: profile.started_at,
            duration: profile.duration,
            samples: facts.samples,
            memory_bytes,
        };
        shelf.kept.push_back(Kept {
            info: info.clone(),
            profile: Arc::new(profile),
        });
        let mut total: usize = shelf.kept.iter().map(|k| k.info.memory_bytes).sum();
        while shelf.kept.len() > 1
            && (shelf.kept.len() > self.max_profiles || total > self.max_bytes)
        {
            if let Some(old) = shelf.kept.pop_front() {
                total = total.saturating_sub(old.info.memory_bytes);
            }
        }
        info
    }

    /// A kept profile, by id.
    pub(crate) fn get(&self, id: u64) -> Option<(KeptInfo, Arc<Profile>)> {
        self.lock()
            .kept
            .iter()
            .find(|k| k.info.id == id)
            .map(|k| (k.info.clone(), Arc::clone(&k.profile)))
    }

    /// Every kept profile, oldest first.
    pub(crate) fn list(&self) -> Vec<KeptInfo> {
        self.lock().kept.iter().map(|k| k.info.clone()).collect()
    }

    /// Memory the kept profiles hold, estimated.
    #[cfg_attr(not(feature = "doctor"), allow(dead_code))]
    pub(crate) fn memory_bytes(&self) -> usize {
        self.lock().kept.iter().map(|k| k.info.memory_bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::build::tests::named_profile;

    fn facts() -> KeptFacts {
        KeptFacts {
            mode: "cpu",
            hz: 99,
            samples: 3,
        }
    }

    #[test]
    fn keeps_the_newest_within_count_and_ids_never_repeat() {
        let shelf = ProfileShelf::default();
        let ids: Vec<u64> = (0..MAX_KEPT_PROFILES + 2)
            .map(|_| {
                shelf
                    .keep(named_profile(&[(&["main", "work"], 10)]), facts())
                    .id
            })
            .collect();
        assert_eq!(ids, (1..=6).collect::<Vec<_>>());
        let kept: Vec<u64> = shelf.list().iter().map(|k| k.id).collect();
        assert_eq!(kept, vec![3, 4, 5, 6]);
        assert!(shelf.get(1).is_none());
        let (info, profile) = shelf.get(6).unwrap();
        assert_eq!(info.url, "/debug/profiles/6");
        assert_eq!(profile.samples.len(), 1);
        assert_eq!(
            shelf.memory_bytes(),
            shelf.list().iter().map(|k| k.memory_bytes).sum::<usize>()
        );
        assert!(shelf.memory_bytes() > 0);
    }

    #[test]
    fn memory_bound_drops_the_oldest_but_keeps_the_newest() {
        let profile = named_profile(&[(&["main", "work"], 10), (&["main", "idle"], 5)]);
        let each = profile.approx_bytes();
        assert!(each > 0);
        // Room for two and a half: the third pushes the first out.
        let shelf = ProfileShelf::with_bounds(10, each * 5 / 2);
        for _ in 0..3 {
            shelf.keep(profile.clone(), facts());
        }
        let kept: Vec<u64> = shelf.list().iter().map(|k| k.id).collect();
        assert_eq!(kept, vec![2, 3]);
        assert!(shelf.memory_bytes() <= each * 5 / 2);
        // One larger than the whole bound is still kept, alone.
        let tiny = ProfileShelf::with_bounds(10, each / 2);
        tiny.keep(profile.clone(), facts());
        tiny.keep(profile, facts());
        let kept: Vec<u64> = tiny.list().iter().map(|k| k.id).collect();
        assert_eq!(kept, vec![2]);
    }
}
