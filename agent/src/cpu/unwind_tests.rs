//! Profiles of threads running the platform code unwinding must get
//! through: the vDSO, and on aarch64 return addresses signed with pointer
//! authentication and leaf functions whose return address is only in `x30`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{exclusive_sampler, CpuProfiler, ProfileRequest};
use crate::profile::Profile;

/// Profiles for 1.5 s at 250 Hz while a thread named `name` runs `work`
/// until told to stop; returns the profile.
async fn profile_thread(name: &str, work: fn(&AtomicBool)) -> Profile {
    let _sampler = exclusive_sampler().await;
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let stop = Arc::clone(&stop);
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || work(&stop))
            .unwrap()
    };
    let raw = CpuProfiler::global()
        .profile(ProfileRequest::new(Duration::from_millis(1500)).hz(250))
        .await
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    thread.join().unwrap();
    raw.to_profile()
}

/// The function names of a sample's stack, leaf first (inlined callees
/// before their callers).
fn names(profile: &Profile, sample: &crate::profile::Sample) -> Vec<String> {
    sample
        .locations
        .iter()
        .flat_map(|&l| profile.locations[l].frames.iter())
        .map(|f| f.function.to_string())
        .collect()
}

#[inline(never)]
fn read_the_clock_in_a_named_function(stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..1000 {
            std::hint::black_box(std::time::Instant::now());
        }
    }
}

/// `clock_gettime` runs in the vDSO (`__vdso_clock_gettime` on x86_64,
/// `__kernel_clock_gettime` on aarch64), an image with no file: its
/// samples are named from its in-memory symbols and unwind to the caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_in_the_vdso_is_named_and_unwinds_to_its_caller() {
    #[allow(unsafe_code)]
    // SAFETY: getauxval has no preconditions.
    let vdso = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) } != 0;
    if !vdso {
        // qemu-user before 8.1 maps none: clock_gettime is a system call.
        eprintln!("no vDSO in this process: nothing to check");
        return;
    }
    let profile = profile_thread("clock-reader", read_the_clock_in_a_named_function).await;
    let on_thread: Vec<_> = profile
        .samples
        .iter()
        .filter(|s| s.thread.as_deref() == Some("clock-reader"))
        .collect();
    let weight =
        |samples: &[&crate::profile::Sample]| samples.iter().map(|s| s.values[0]).sum::<i64>();
    let in_vdso: Vec<_> = on_thread
        .iter()
        .copied()
        .filter(|s| {
            let leaf = &profile.locations[s.locations[0]];
            leaf.mapping
                .is_some_and(|m| profile.mappings[m].file == "[vdso]")
        })
        .collect();
    let total = weight(&on_thread);
    assert!(total >= 50, "{total} samples on the clock reader");
    assert!(
        weight(&in_vdso) * 20 >= total,
        "{} of {total} samples in the vDSO",
        weight(&in_vdso)
    );
    for sample in &in_vdso {
        let names = names(&profile, sample);
        assert!(
            names[0].contains("clock_gettime"),
            "the vDSO leaf is named: {names:?}"
        );
    }
    let through_caller = in_vdso
        .iter()
        .filter(|s| {
            names(&profile, s)
                .iter()
                .any(|f| f.ends_with("read_the_clock_in_a_named_function"))
        })
        .map(|s| s.values[0])
        .sum::<i64>();
    assert!(
        through_caller * 100 >= weight(&in_vdso) * 95,
        "{through_caller} of {} vDSO samples unwound to the caller",
        weight(&in_vdso)
    );
}

#[cfg(target_arch = "aarch64")]
mod signed {
    use super::*;
    use crate::testing::signed::{
        pointer_authentication_active, signed_frame_call, signed_leaf_spin,
    };

    #[inline(never)]
    extern "C" fn call_the_signed_leaf(iterations: u64) {
        // SAFETY: the leaf only counts its argument down.
        #[allow(unsafe_code)]
        unsafe {
            signed_leaf_spin(iterations)
        };
        std::hint::black_box(iterations);
    }

    #[inline(never)]
    fn spin_through_signed_frames(stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            // SAFETY: calls `call_the_signed_leaf` with an iteration count.
            #[allow(unsafe_code)]
            unsafe {
                signed_frame_call(20_000, call_the_signed_leaf)
            };
        }
    }

    /// The leaf's return address is only in `x30`, signed; the frame above
    /// it keeps its own signed return address on the stack and has no frame
    /// record. Every stack must still reach `spin_through_signed_frames`,
    /// and every location must be a plain code address inside a mapping.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn signed_return_addresses_and_lr_only_leaves_unwind_to_their_callers() {
        let pac = pointer_authentication_active();
        let profile = profile_thread("signed", spin_through_signed_frames).await;
        let on_thread: Vec<_> = profile
            .samples
            .iter()
            .filter(|s| s.thread.as_deref() == Some("signed"))
            .collect();
        let total: i64 = on_thread.iter().map(|s| s.values[0]).sum();
        let mut complete = 0i64;
        let mut in_leaf = 0i64;
        let mut leaf_then_caller = 0i64;
        for sample in &on_thread {
            for &l in &sample.locations {
                let location = &profile.locations[l];
                assert!(
                    location.address >> 48 == 0 && location.mapping.is_some(),
                    "location {:#x} keeps authentication bits or lies outside every mapping",
                    location.address
                );
            }
            let names = names(&profile, sample);
            if names
                .iter()
                .any(|f| f.ends_with("spin_through_signed_frames"))
            {
                complete += sample.values[0];
            }
            if names[0].ends_with("signed_leaf_spin") {
                in_leaf += sample.values[0];
                if names
                    .get(1)
                    .is_some_and(|f| f.ends_with("call_the_signed_leaf"))
                    && names
                        .get(2)
                        .is_some_and(|f| f.ends_with("signed_frame_call"))
                {
                    leaf_then_caller += sample.values[0];
                }
            }
        }
        eprintln!(
            "pointer authentication {}: {total} samples, {in_leaf} in the signed leaf \
             ({leaf_then_caller} with its callers in order), {complete} through the signed frame",
            if pac {
                "active"
            } else {
                "not available (hints are no-ops)"
            }
        );
        assert!(total >= 50, "{total} samples on the thread");
        assert!(
            in_leaf * 2 >= total,
            "{in_leaf} of {total} samples in the leaf"
        );
        assert!(
            leaf_then_caller * 100 >= in_leaf * 95,
            "{leaf_then_caller} of {in_leaf} leaf samples unwound through x30 to their callers"
        );
        assert!(
            complete * 100 >= total * 95,
            "{complete} of {total} samples unwound past the signed frame"
        );
    }
}
