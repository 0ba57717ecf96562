//! Sandboxes services run in. A seccomp filter that forbids a system call
//! the agent may use — failing it with `EPERM` (Docker, Kubernetes) or
//! killing the process (systemd's `SystemCallFilter=`) — must leave CPU
//! profiles true and the host alive; `/proc` and cgroup files that are
//! missing or unreadable must be reported as such, not fail the agent.
//!
//! Each case runs in a child process of this test binary with a real
//! filter on the whole process ([`stethoscope_tests::seccomp`]). Under
//! qemu-user, whose guests cannot install one (it refuses
//! `PR_SET_SECCOMP` to keep the system calls it needs), the native
//! `seccomp-exec` helper filters the host's system call before starting
//! qemu: the agent then reads `Seccomp: 2` as it would natively, and a
//! filtered `timer_create` (which qemu passes to the host) fails or kills
//! as it would; qemu answers `process_vm_readv` itself (`ENOSYS`), so
//! there only the `Seccomp:` probe and the pipe copy are exercised.

use std::ffi::OsStr;
use std::time::Duration;

use stethoscope::cpu::CpuProfiler;
use stethoscope_tests::seccomp::{self, Action};

use crate::cpu::{split_and_cpu_time_are_true_at, PER_THREAD_TIMERS};
use crate::support::*;

/// `SYSCALL:ACTION` of the filter a child installs.
const FILTER: &str = "STETHOSCOPE_E2E_SECCOMP";

/// Set by `tests/aarch64.sh`: the native `seccomp-exec` helper.
const HELPER: &str = "STETHOSCOPE_E2E_SECCOMP_EXEC";

/// Runs test `name` in a child under a filter on `syscall`.
fn in_filtered_child(name: &str, syscall: &str, action: Action) {
    let _alone = profiler_lock();
    let spec = format!("{syscall}:{}", action.name());
    let env = [(FILTER, OsStr::new(&spec))];
    let Some(runner) = runner() else {
        // Natively the child installs the filter itself.
        return in_child(name, &env);
    };
    let helper = std::env::var_os(HELPER).unwrap_or_else(|| {
        panic!("{HELPER} must name the native seccomp-exec helper under an emulator (tests/aarch64.sh sets it)")
    });
    let mut command = std::process::Command::new(helper);
    command
        .args([syscall, action.name(), "--"])
        .arg(runner)
        .arg(std::env::current_exe().unwrap());
    run_child(command, name, &env);
}

/// In the child: the filter the parent asked for, in place.
fn filtered() -> (String, Action) {
    let spec = std::env::var(FILTER).expect("the parent names the filter");
    let (syscall, action) = spec.split_once(':').expect("SYSCALL:ACTION");
    let action = Action::parse(action).expect("eperm or kill");
    if runner().is_none() {
        let number = seccomp::syscall_number(syscall).expect("a known system call");
        seccomp::install(number, action).expect("install the seccomp filter");
    }
    assert_eq!(seccomp::mode(), Some(2), "Seccomp: in /proc/self/status");
    (syscall.to_owned(), action)
}

#[test]
fn cpu_profiles_stay_true_when_seccomp_fails_process_vm_readv() {
    if !is_child() {
        return in_filtered_child(
            "sandbox::cpu_profiles_stay_true_when_seccomp_fails_process_vm_readv",
            "process_vm_readv",
            Action::Eperm,
        );
    }
    filtered();
    if runner().is_none() {
        // The filter is real: the call fails.
        let mut byte = [0u8; 1];
        let source = [1u8; 1];
        let local = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let remote = libc::iovec {
            iov_base: source.as_ptr().cast_mut().cast(),
            iov_len: 1,
        };
        // SAFETY: one byte from our own memory into our own buffer.
        #[allow(unsafe_code)]
        let copied = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
        assert_eq!(copied, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EPERM)
        );
    }
    split_and_cpu_time_are_true_at(99, 8, PER_THREAD_TIMERS);
    split_and_cpu_time_are_true_at(999, 6, PER_THREAD_TIMERS);
}

/// With a filter that would kill the process on `process_vm_readv`, the
/// agent must never call it: it reads `Seccomp:` before probing, and
/// copies stacks through a pipe.
#[test]
fn cpu_profiles_stay_true_when_seccomp_would_kill_on_process_vm_readv() {
    if !is_child() {
        return in_filtered_child(
            "sandbox::cpu_profiles_stay_true_when_seccomp_would_kill_on_process_vm_readv",
            "process_vm_readv",
            Action::Kill,
        );
    }
    filtered();
    split_and_cpu_time_are_true_at(99, 8, PER_THREAD_TIMERS);
    split_and_cpu_time_are_true_at(999, 6, PER_THREAD_TIMERS);
}

/// With a filter that would kill the process on `timer_create`, the agent
/// tries its per-thread timers in a child first (which the filter kills),
/// and samples with `ITIMER_PROF`: still the true split and total.
#[test]
fn cpu_profiles_stay_true_when_seccomp_would_kill_on_timer_create() {
    if !is_child() {
        return in_filtered_child(
            "sandbox::cpu_profiles_stay_true_when_seccomp_would_kill_on_timer_create",
            "timer_create",
            Action::Kill,
        );
    }
    filtered();
    split_and_cpu_time_are_true_at(99, 8, "ITIMER_PROF");
    assert!(wait_for_idle_sampler());
    assert_eq!(CpuProfiler::global().status().clock, None);
}

/// A filter failing `timer_create` with `EPERM`: the agent falls back to
/// `ITIMER_PROF` when the call fails.
#[test]
fn cpu_profiles_stay_true_when_seccomp_fails_timer_create() {
    if !is_child() {
        return in_filtered_child(
            "sandbox::cpu_profiles_stay_true_when_seccomp_fails_timer_create",
            "timer_create",
            Action::Eperm,
        );
    }
    filtered();
    split_and_cpu_time_are_true_at(99, 8, "ITIMER_PROF");
}

/// Where the cgroup filesystem cannot be read (`permission denied`: a
/// mode-000 tmpfs over `/sys/fs/cgroup`, without `CAP_DAC_OVERRIDE`) and
/// PSI files are missing (`not present`: an empty tmpfs over
/// `/proc/pressure`), `/health`, `/debug/use`, `/metrics` and the doctor
/// keep answering, and `/debug/use` says why each value is missing.
///
/// The child gets its own mount namespace, which takes `CAP_SYS_ADMIN`
/// (CI runs as root); without it the test says so and checks nothing.
#[test]
fn unreadable_cgroups_and_missing_psi_are_reported_not_fatal() {
    const NAME: &str = "sandbox::unreadable_cgroups_and_missing_psi_are_reported_not_fatal";
    if !is_child() {
        let _alone = profiler_lock();
        if !has_cap_sys_admin() {
            eprintln!("skipped: a mount namespace needs CAP_SYS_ADMIN");
            return;
        }
        let mut command = target_command(std::env::current_exe().unwrap());
        // SAFETY: between fork and exec the closure makes raw system calls
        // only (unshare, mount, prctl) on static C strings.
        #[allow(unsafe_code)]
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(hide_cgroups_and_psi);
        }
        return run_child(command, NAME, &[]);
    }
    let agent = start_agent();
    let addr = agent.local_addr();
    assert_eq!(get(addr, "/health", None).status, 200);
    // Two readings a window apart, so rates have a base.
    let _ = get(addr, "/debug/use?format=json", None);
    std::thread::sleep(Duration::from_millis(1100));
    let reply = get(addr, "/debug/use?format=json", None);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let report = reply.json();
    let row = |name: &str| {
        report["resources"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("no {name} row: {report}"))
    };
    let (cpu, memory) = (row("cpu"), row("memory"));
    eprintln!("measured: cpu source: {}", cpu["source"]);
    eprintln!("measured: memory source: {}", memory["source"]);
    // Process readings still come from /proc/self.
    assert!(memory["used"].as_f64().is_some_and(|b| b > 1e6), "{memory}");
    assert!(
        memory["source"]
            .as_str()
            .is_some_and(|s| s.contains("permission denied")),
        "the memory cgroup is unreadable: {memory}"
    );
    assert!(
        cpu["source"]
            .as_str()
            .is_some_and(|s| s.contains("/proc/pressure/cpu: not present")),
        "PSI is missing: {cpu}"
    );
    let doctor = get(addr, "/debug/doctor", None);
    assert_eq!(doctor.status, 200, "{}", doctor.text());
    assert!(doctor.json()["status"].is_string());
    let metrics = get(addr, "/metrics", None);
    assert_eq!(metrics.status, 200);
    assert!(metrics.text().contains("process_cpu_seconds_total"));
    assert_eq!(get(addr, "/health", None).status, 200);
}

/// Whether this process may make a mount namespace (`CapEff:` bit 21).
fn has_cap_sys_admin() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
            u64::from_str_radix(hex.trim(), 16).ok()
        })
        .is_some_and(|caps| caps & (1 << 21) != 0)
}

/// In the child between fork and exec: a private mount namespace with a
/// mode-000 tmpfs over `/sys/fs/cgroup` and an empty one over
/// `/proc/pressure`, and the capabilities that bypass file permissions
/// dropped from the bounding set (so root after exec has them no more).
fn hide_cgroups_and_psi() -> std::io::Result<()> {
    #[allow(unsafe_code)]
    // SAFETY: raw system calls with static NUL-terminated strings; nothing
    // allocates.
    unsafe {
        let fail = || Err(std::io::Error::last_os_error());
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return fail();
        }
        let none = c"none".as_ptr();
        if libc::mount(
            none,
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return fail();
        }
        let tmpfs = c"tmpfs".as_ptr();
        if libc::mount(
            none,
            c"/sys/fs/cgroup".as_ptr(),
            tmpfs,
            0,
            c"mode=000".as_ptr().cast(),
        ) != 0
        {
            return fail();
        }
        if libc::mount(
            none,
            c"/proc/pressure".as_ptr(),
            tmpfs,
            0,
            c"mode=755".as_ptr().cast(),
        ) != 0
        {
            return fail();
        }
        for capability in [1, 2] {
            // CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
            if libc::prctl(libc::PR_CAPBSET_DROP, capability, 0, 0, 0) != 0 {
                return fail();
            }
        }
    }
    Ok(())
}
