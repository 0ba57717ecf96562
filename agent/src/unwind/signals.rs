//! Installing the agent's signal handlers: never over another owner's
//! handler, and never leaving a signal at `SIG_DFL` afterwards (a late
//! signal would then kill the host). Shared by the SIGPROF sampler, the
//! wall-clock sampler and the stuck-worker capture.
#![allow(unsafe_code)]

use std::io;

/// Why a handler was not installed.
#[derive(Debug)]
pub(crate) enum InstallError {
    /// Another handler owns the signal.
    Taken,
    /// `sigaction` failed.
    Os(io::Error),
}

/// Whether `signal` is free for `handler`: its disposition is the default,
/// ignored, or already `handler`.
pub(crate) fn is_free(signal: libc::c_int, handler: usize) -> Result<bool, io::Error> {
    // SAFETY: a zeroed sigaction is a valid out-parameter; querying the
    // disposition changes nothing.
    let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
    if unsafe { libc::sigaction(signal, std::ptr::null(), &mut current) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let installed = current.sa_sigaction;
    Ok(installed == libc::SIG_DFL || installed == libc::SIG_IGN || installed == handler)
}

/// Installs `handler` (an `extern "C" fn(c_int, *mut siginfo_t, *mut
/// c_void)` whose body is async-signal-safe) for `signal` with
/// `SA_SIGINFO | SA_RESTART`, blocking the agent's other signals while it
/// runs, unless another handler owns the signal.
pub(crate) fn install(signal: libc::c_int, handler: usize) -> Result<(), InstallError> {
    if !is_free(signal, handler).map_err(InstallError::Os)? {
        return Err(InstallError::Taken);
    }
    // SAFETY: installing an SA_SIGINFO handler whose body the caller
    // vouches is async-signal-safe; SA_RESTART keeps the host's interrupted
    // syscalls transparent where the kernel allows it; the mask only names
    // valid signals.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        for blocked in super::other_signals(signal) {
            libc::sigaddset(&mut action.sa_mask, blocked);
        }
        if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
            return Err(InstallError::Os(io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Leaves `signal` ignored: the handler must not outlive its state, and
/// `SIG_DFL` would terminate the process on a late signal.
pub(crate) fn ignore(signal: libc::c_int) {
    // SAFETY: setting a disposition to SIG_IGN has no preconditions.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = libc::SIG_IGN;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(signal, &action, std::ptr::null_mut());
    }
}

/// Whether `signal` is currently ignored, as the kernel (or an emulator
/// such as qemu-user, which keeps the guest's dispositions itself and whose
/// `/proc/self/status` shows its own) answers `sigaction`.
#[cfg(test)]
pub(crate) fn is_ignored(signal: libc::c_int) -> bool {
    // SAFETY: a zeroed sigaction is a valid out-parameter; querying the
    // disposition changes nothing.
    let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
    if unsafe { libc::sigaction(signal, std::ptr::null(), &mut current) } != 0 {
        return false;
    }
    current.sa_sigaction == libc::SIG_IGN
}
