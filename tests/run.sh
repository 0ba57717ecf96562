#!/usr/bin/env bash
# Runs every check and test of the workspace: formatting, clippy, docs, and
# `cargo test --workspace` (unit tests and end-to-end tests with real clients).
#
# The end-to-end tests drive real clients; this script installs the Debian
# packages that provide them when they are missing:
#   golang-go  — `go tool pprof`, which must read our CPU profiles unmodified
#   prometheus — `promtool check metrics` on /metrics, and a Prometheus server
#                that scrapes the demo (Debian's package ships both binaries;
#                its service is not started here, the tests run their own)
#   graphviz   — `dot`, which `go tool pprof -svg` and the graph view of
#                `go tool pprof -http` need (the README tour's web UI step)
#   chromium, chromium-driver — a real headless browser, driven over
#                WebDriver, that loads the dashboard at /debug, clicks its
#                buttons and takes its screenshots
#
# Then tests/aarch64.sh cross-builds for aarch64 and runs the agent's unit
# tests and an end-to-end subset under qemu-user (it installs its own
# toolchain when missing; see there).
#
# Usage: bash tests/run.sh [extra cargo test arguments]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

missing=()
command -v go >/dev/null 2>&1 || missing+=(golang-go)
{ command -v promtool && command -v prometheus; } >/dev/null 2>&1 || missing+=(prometheus)
command -v dot >/dev/null 2>&1 || missing+=(graphviz)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "==> installing ${missing[*]}"
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
echo "==> $(go version)"
echo "==> $(prometheus --version 2>&1 | head -1)"
echo "==> $(/usr/bin/chromium --version 2>/dev/null | head -1)"

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy (all targets, all features, warnings denied)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

# The demo with task dumps (/debug/tasks): tokio_unstable and the taskdump
# feature, in a target directory of its own so the default build stays
# untouched; the e2e test hung::the_task_dump_… runs it.
echo "==> cargo build: the demo with task dumps (--cfg tokio_unstable, feature taskdump)"
RUSTFLAGS="--cfg tokio_unstable" CARGO_TARGET_DIR=target/taskdump \
    cargo build --quiet -p stethoscope-examples --bin demo --features taskdump
export STETHOSCOPE_TASKDUMP_DEMO="$PWD/target/taskdump/debug/demo"

echo "==> cargo test --workspace"
cargo test --workspace "$@"

echo "==> cargo test: push over HTTPS (feature push-tls)"
cargo test -p stethoscope --features push-tls --lib push::

echo "==> cargo doc (warnings denied)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

echo "==> aarch64 under qemu (tests/aarch64.sh)"
bash tests/aarch64.sh

echo "==> all checks passed"
