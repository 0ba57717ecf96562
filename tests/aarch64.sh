#!/usr/bin/env bash
# Cross-builds the agent, the demo and the test binaries for
# aarch64-unknown-linux-gnu and runs them under qemu-user: the agent's unit
# tests, then an aarch64 end-to-end subset (CPU truth, stacks through tokio,
# go tool pprof with build IDs, heap diff, stalls, wall-clock states, the
# doctor, seccomp filters, a current_thread runtime). tests/run.sh calls it
# after the native suite; it can also run alone.
#
# The toolchain comes from Debian's packages and is installed when missing:
#   rustc-web, cargo-web — rustc 1.96 at /usr/bin/rustc, which (unlike the
#       rustup toolchain of the native build) has the arm64 standard library,
#       libstd-rust-web-dev:arm64 (needs `dpkg --add-architecture arm64`);
#   gcc-aarch64-linux-gnu, libc6-dev-arm64-cross — the linker, and the C
#       compiler of jemalloc's build;
#   qemu-user-static — qemu-aarch64-static runs the binaries. Never with
#       `-L /usr/aarch64-linux-gnu`: the arm64 std pulls in the multiarch
#       libc6:arm64, whose ld.so matches its libc; -L mixes the cross
#       package's ld.so with that libc and every pthread_create spins.
#
# Builds go to target/aarch64, so the native build is never invalidated.
# The host's `go` reads the aarch64 profiles; the e2e binary (under qemu)
# starts the demo and its own children through qemu, and filtered children
# through the native `seccomp-exec` helper (qemu refuses a guest's seccomp
# filter).
#
# Release builds (optimized, `debug = "limited"`, as services ship): under
# qemu a debug build symbolizes its 150 MB test binary so slowly (gimli
# unoptimized, then emulated) that go tool pprof gave up waiting for a 1 s
# profile and a heap diff came back unsymbolized. `--debug` builds and runs
# the debug profile instead.
#
# Usage: bash tests/aarch64.sh [--debug]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

target=aarch64-unknown-linux-gnu
target_dir=target/aarch64
profile=release
profile_flag=(--release)
if [ "${1:-}" = "--debug" ]; then
    profile=debug
    profile_flag=()
fi

sysroot_std() {
    [ -x /usr/bin/rustc ] &&
        [ -d "$(/usr/bin/rustc --print sysroot)/lib/rustlib/$target/lib" ]
}
missing=()
sysroot_std || missing+=(rustc-web cargo-web libstd-rust-web-dev:arm64)
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || missing+=(gcc-aarch64-linux-gnu)
[ -f /usr/aarch64-linux-gnu/include/stdio.h ] || missing+=(libc6-dev-arm64-cross)
command -v qemu-aarch64-static >/dev/null 2>&1 || missing+=(qemu-user-static)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "==> installing ${missing[*]}"
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    if ! dpkg --print-foreign-architectures | grep -qx arm64; then
        $sudo dpkg --add-architecture arm64
    fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
qemu=$(command -v qemu-aarch64-static)
echo "==> $(/usr/bin/rustc --version) for $target, $("$qemu" --version | head -1)"

export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
cross=(--target "$target" --target-dir "$target_dir" "${profile_flag[@]}")

# The executable cargo built for the target named $1 (JSON messages on stdin).
executable() {
    grep "\"name\":\"$1\"" | grep -o '"executable":"[^"]*"' | tail -1 | cut -d'"' -f4
}

started=$SECONDS
echo "==> cross build ($profile): agent unit tests, e2e tests, demo"
unit=$(cargo test "${cross[@]}" -p stethoscope --lib --no-run --message-format=json |
    executable stethoscope)
e2e=$(cargo test "${cross[@]}" -p stethoscope-tests --test e2e --no-run --message-format=json |
    executable e2e)
demo=$(cargo build "${cross[@]}" -p stethoscope-examples --bin demo --message-format=json |
    executable demo)
# The native helper that filters the host's system calls for qemu.
unset RUSTC RUSTDOC
helper=$(cargo build -p stethoscope-tests --bin seccomp-exec --message-format=json |
    executable seccomp-exec)
for binary in "$unit" "$e2e" "$demo" "$helper"; do
    [ -x "$binary" ] || { echo "no executable built (got '$binary')" >&2; exit 1; }
done
echo "==> cross build took $((SECONDS - started)) s"

started=$SECONDS
echo "==> aarch64 unit tests under qemu"
"$qemu" "$unit"
echo "==> aarch64 unit tests took $((SECONDS - started)) s"

# The end-to-end subset: what users on Graviton and Ampere rely on. The
# rest of the suite checks code that is the same on every architecture
# (HTTP, encoders, the doctor's rules); it runs natively. The tour's heap
# step runs natively only: its last check (the demo's code first in
# `go tool pprof -top` of the live heap) failed here, the symbolizer's
# debug-info tables for the optimized demo (68 MiB estimated, kept until a
# minute idle) outweighing the 40 MiB leak; the heap test above checks
# snapshots and the diff.
subset=(
    cpu::go_pprof_sees_the_true_split_and_cpu_time_at_99_hz
    cpu::go_pprof_sees_the_true_split_and_cpu_time_at_999_hz
    cpu::each_thread_is_credited_the_cpu_its_own_clock_measured
    cpu::the_demo_service_burns_on_request_and_shows_up_in_the_profile
    cpu::go_pprof_raw_shows_addresses_mapping_build_id_and_inline_chains
    cpu::time_in_libc_memcpy_is_attributed_to_its_caller_not_dropped
    heap::the_diff_ranks_a_known_48_mib_leak_first_and_not_steady_memory
    lag::a_blocking_handler_is_a_stall_with_its_stack
    wall::a_worker_blocked_half_of_each_poll_is_half_waiting_in_that_function
    wall::an_idle_runtime_has_parked_workers_and_wall_and_cpu_share_one_sampler
    tour::the_doctor_step_names_the_blocking_handler_and_its_fix
    sandbox::cpu_profiles_stay_true_when_seccomp_fails_process_vm_readv
    sandbox::cpu_profiles_stay_true_when_seccomp_would_kill_on_process_vm_readv
    sandbox::cpu_profiles_stay_true_when_seccomp_would_kill_on_timer_create
    current_thread::a_current_thread_runtime_is_watched_profiled_and_diagnosed
)
started=$SECONDS
echo "==> aarch64 end-to-end subset under qemu (${#subset[@]} tests)"
# From the package's directory, as `cargo test` runs it; `--nocapture` puts
# the tests' measured lines (split, CPU against the clocks, heap diff) in the log.
(cd tests && STETHOSCOPE_E2E_RUNNER="$qemu" \
    STETHOSCOPE_E2E_DEMO="$demo" \
    STETHOSCOPE_E2E_SECCOMP_EXEC="$helper" \
    "$qemu" "$e2e" --exact --nocapture "${subset[@]}")
echo "==> aarch64 end-to-end subset took $((SECONDS - started)) s"
