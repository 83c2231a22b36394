#!/usr/bin/env bash
# The one-command demo (README): installs what it needs (Debian 12), builds, then `eni-demo`
# runs the whole system on this machine and narrates it: an emulated Alibaba Cloud
# (mock-cloud) whose two instances are network namespaces, an eni-manager on each, pods as
# network namespaces wired by the real eni-cni binary, a Service through the eBPF socket load
# balancer, a NetworkPolicy from YAML enforced in eBPF. It removes everything it made when it
# ends (also on failure). Root only.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "demo: it creates network namespaces and loads eBPF programs; run it as root: sudo scripts/demo.sh" >&2
  exit 1
fi
bash scripts/setup.sh --demo >&2
export PATH="$HOME/.cargo/bin:$PATH"
echo "demo: building (cargo build --bins; a few minutes the first time)" >&2
cargo build --locked --bins --quiet
exec "${CARGO_TARGET_DIR:-target}/debug/eni-demo"
