//! Scratch space for code that must not allocate or block (a signal
//! handler, an allocation hook): a fixed set of slots, each claimed by one
//! user at a time with one atomic compare-and-swap. When every slot is
//! busy the claim fails and the caller does without (drops a sample, or
//! defers to another unwinder) rather than wait.
#![allow(unsafe_code)]

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, Ordering};

/// Slots of `T`, each held by at most one [`Claim`].
pub(crate) struct Slots<T> {
    slots: Box<[Slot<T>]>,
}

struct Slot<T> {
    busy: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: a slot's value is only reached through the `Claim` that won its
// `busy` flag (or through `&mut self`), so no two threads touch it at once.
unsafe impl<T: Send> Sync for Slots<T> {}

impl<T> Slots<T> {
    /// Slots holding `values`. Allocates: call it before any handler can
    /// run.
    pub(crate) fn new(values: impl IntoIterator<Item = T>) -> Self {
        Slots {
            slots: values
                .into_iter()
                .map(|value| Slot {
                    busy: AtomicBool::new(false),
                    value: UnsafeCell::new(value),
                })
                .collect(),
        }
    }

    /// A free slot, or `None` when all are busy. Async-signal-safe.
    pub(crate) fn claim(&self) -> Option<Claim<'_, T>> {
        self.slots
            .iter()
            .find(|slot| {
                slot.busy
                    .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            })
            .map(|slot| Claim { slot })
    }
}

/// A slot won by one user; released on drop.
pub(crate) struct Claim<'a, T> {
    slot: &'a Slot<T>,
}

impl<T> std::ops::Deref for Claim<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: this claim won `busy`; the value is ours until drop.
        unsafe { &*self.slot.value.get() }
    }
}

impl<T> std::ops::DerefMut for Claim<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as above, and `&mut self` makes this the only reference.
        unsafe { &mut *self.slot.value.get() }
    }
}

impl<T> Drop for Claim<'_, T> {
    fn drop(&mut self) {
        self.slot.busy.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_slot_has_one_holder_at_a_time() {
        let slots = Slots::new([1u32, 2]);
        let mut a = slots.claim().unwrap();
        let b = slots.claim().unwrap();
        assert!(slots.claim().is_none(), "both busy");
        *a += 10;
        drop(b);
        let c = slots.claim().unwrap();
        assert_eq!(*c, 2);
        drop((a, c));
        let (x, y) = (slots.claim().unwrap(), slots.claim().unwrap());
        assert_eq!((*x, *y), (11, 2), "values survive release");
    }
}
