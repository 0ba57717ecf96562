//! A real seccomp filter, as a container runtime or systemd installs one:
//! `prctl(PR_SET_NO_NEW_PRIVS)`, then a four-instruction BPF program — load
//! the system call number, compare it with one, return the action for it
//! or allow everything else — installed with `seccomp(2)` for every thread
//! of the process (`SECCOMP_FILTER_FLAG_TSYNC`; `prctl(PR_SET_SECCOMP)`
//! would filter only the calling thread, and a test process already has
//! several).
#![allow(unsafe_code)]

use std::io;

/// What the filter does to the one system call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Fail it with `EPERM` (Docker's and Kubernetes' default action).
    Eperm,
    /// Kill the process (`SECCOMP_RET_KILL_PROCESS`: systemd's
    /// `SystemCallFilter=` without `SystemCallErrorNumber=`).
    Kill,
}

impl Action {
    /// `eperm` or `kill`.
    pub fn parse(text: &str) -> Option<Action> {
        match text {
            "eperm" => Some(Action::Eperm),
            "kill" => Some(Action::Kill),
            _ => None,
        }
    }

    /// The name [`Action::parse`] reads.
    pub fn name(self) -> &'static str {
        match self {
            Action::Eperm => "eperm",
            Action::Kill => "kill",
        }
    }

    fn ret(self) -> u32 {
        match self {
            Action::Eperm => libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
            Action::Kill => libc::SECCOMP_RET_KILL_PROCESS,
        }
    }
}

/// This build's number of the system calls tests filter, by name.
pub fn syscall_number(name: &str) -> Option<i64> {
    match name {
        "process_vm_readv" => Some(libc::SYS_process_vm_readv),
        "timer_create" => Some(libc::SYS_timer_create),
        _ => None,
    }
}

/// Filters system call `number` with `action` in every thread of this
/// process and in every process it starts.
pub fn install(number: i64, action: Action) -> io::Result<()> {
    let nr = u32::try_from(number).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let program = [
        // A = seccomp_data.nr (offset 0)
        libc::sock_filter {
            code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
            jt: 0,
            jf: 0,
            k: 0,
        },
        // if A == nr goto action else goto allow
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: nr,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: action.ret(),
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        },
    ];
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: prctl with integer arguments; no_new_privs is what lets an
    // unprivileged process install a filter.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: seccomp(SECCOMP_SET_MODE_FILTER) with a valid program that
    // outlives the call (the kernel copies it).
    let installed = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_TSYNC,
            &fprog as *const libc::sock_fprog,
        )
    };
    if installed != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// This process's seccomp mode from `/proc/self/status` (0 none, 1
/// strict, 2 filter).
pub fn mode() -> Option<u32> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))?
        .trim()
        .parse()
        .ok()
}
