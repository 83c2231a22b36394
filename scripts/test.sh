#!/usr/bin/env bash
# The project's test command (README): set-up, format check, lints, build, every test.
# Run as root: the hypervisor and datapath tests create network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"

if [ "$(id -u)" -ne 0 ]; then
  echo "test: WARNING: not root; tests that need network namespaces will report SKIPPED" >&2
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
echo "== cargo build (binaries the black-box tests start)"
cargo build --workspace --bins --locked
echo "== cargo test"
cargo test --workspace --all-features --locked -- --test-threads="${TEST_THREADS:-4}"
if [ "$(id -u)" -eq 0 ]; then
  echo "== the demo (README's first command, without its set-up and build)"
  "${CARGO_TARGET_DIR:-target}/debug/eni-demo"
else
  echo "SKIPPED: the demo needs root (network namespaces, eBPF)" >&2
fi
echo "== Helm chart checks (offline: lint, render, Kubernetes schemas, yamllint)"
bash helm/check.sh
echo "== node bootstrap test (under a temporary --root; no systemctl)"
bash deploy/bootstrap/test.sh
if [ "$(id -u)" -eq 0 ]; then
  echo "== VM tests (IPVLAN on Debian's stock kernel under qemu)"
  bash integration/vm/tests.sh
else
  echo "SKIPPED: VM tests need root (they build an initramfs and boot qemu)" >&2
fi
