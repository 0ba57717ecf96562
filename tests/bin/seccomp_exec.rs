//! `seccomp-exec SYSCALL eperm|kill -- PROGRAM [ARGS…]`: runs PROGRAM under
//! a seccomp filter on SYSCALL (this machine's number for it).
//!
//! The aarch64 end-to-end tests run under qemu-user, which refuses a
//! guest's `PR_SET_SECCOMP` so that the guest cannot forbid the system
//! calls qemu itself needs; they start their filtered children through this
//! native helper instead, which filters the host system calls qemu makes
//! for the guest.

use std::os::unix::process::CommandExt;

use stethoscope_tests::seccomp::{install, syscall_number, Action};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: seccomp-exec SYSCALL eperm|kill -- PROGRAM [ARGS…]";
    let (Some(name), Some(action), Some("--"), Some(program)) = (
        args.first(),
        args.get(1).and_then(|a| Action::parse(a)),
        args.get(2).map(String::as_str),
        args.get(3),
    ) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let Some(number) = syscall_number(name) else {
        eprintln!("seccomp-exec: unknown system call {name:?}\n{usage}");
        std::process::exit(2);
    };
    if let Err(error) = install(number, action) {
        eprintln!("seccomp-exec: cannot install the filter: {error}");
        std::process::exit(1);
    }
    let error = std::process::Command::new(program).args(&args[4..]).exec();
    eprintln!("seccomp-exec: cannot run {program}: {error}");
    std::process::exit(127);
}
