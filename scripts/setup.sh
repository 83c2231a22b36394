#!/usr/bin/env bash
# Installs what the build and the tests need on a fresh Debian 12 machine (run as root).
# Idempotent: it installs only what is missing, so it is cheap to run every time.
set -euo pipefail

APT_PACKAGES=(
  iproute2        # ip: network namespaces, veth, bridges (hypervisor and datapath tests)
  iputils-ping    # ping across test namespaces
  procps          # sysctl, ps
  tcpdump         # on-the-wire address checks in bpf/tests/masq_root.rs
  python3-pip     # for moto_server
  python3-yaml    # deploy/bootstrap/test.sh parses the YAML it writes
  ca-certificates
  curl
  containernetworking-plugins  # reference CNI plugins: chaining tests, the benchmarks' macvlan + host-local baseline
  iptables        # the benchmarks' kube-proxy-style baseline (rules only inside a namespace of their own)
  qemu-system-x86 # the IPVLAN tests boot Debian's kernel in a VM (integration/vm)
  busybox-static  # the VM's shell
  kmod            # depmod/modprobe to pick the VM's modules
  cpio            # the VM's initramfs
  clang llvm libbpf-dev linux-libc-dev  # bpf/build.rs: clang -target bpf, <bpf/bpf_helpers.h>, <linux/bpf.h>
)

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: installing packages needs root; run this script with sudo" >&2
    exit 1
  fi
}

# `--demo`: only what the demo (scripts/demo.sh) needs: no VM packages, no moto_server.
DEMO=0
[ "${1:-}" = "--demo" ] && DEMO=1
if [ "$DEMO" -eq 1 ]; then
  keep=()
  for p in "${APT_PACKAGES[@]}"; do
    case "$p" in qemu-system-x86|busybox-static|kmod|cpio|python3-pip|python3-yaml|iptables) ;; *) keep+=("$p") ;; esac
  done
  APT_PACKAGES=("${keep[@]}")
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  need_root
  echo "setup: apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Rust toolchain with rustfmt and clippy.
if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "setup: no Rust toolchain found (cargo); install rustup's stable toolchain first" >&2
    exit 1
  fi
fi
if command -v rustup >/dev/null 2>&1; then
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi

if [ "$DEMO" -eq 1 ]; then
  echo "setup: ok (demo)"
  exit 0
fi

# moto_server: the EC2 emulator the AWS tests start themselves.
if ! command -v moto_server >/dev/null 2>&1; then
  echo "setup: pip install moto[server]"
  python3 -m pip install --quiet 'moto[server,ec2]>=5,<6' 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages 'moto[server,ec2]>=5,<6'
fi
command -v moto_server >/dev/null 2>&1 || {
  echo "setup: moto_server is still not on PATH after installing it" >&2
  exit 1
}
echo "setup: ok"
