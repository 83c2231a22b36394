#!/usr/bin/env bash
# The VM test suite: builds the eni-kernel test binaries, the eni-cni binary and eni-cni's
# ipvlan test static, boots one VM with Debian's stock kernel (which has ipvlan) and runs in
# it, in order:
#   1. selftest-ipvlan.sh  - the harness self-test (ip + busybox ping over ipvlan l2 and l3);
#   2. eni_kernel          - the crate's unit tests;
#   3. root_netlink        - its root tests, which must take their "kernel has ipvlan" paths;
#   4. eni_cni_ipvlan      - eni-cni/tests/ipvlan.rs: the real eni-cni binary (put into the VM
#                            at /usr/lib/cni/eni-cni, ENI_CNI_BIN) wires pods in ipvlan mode.
# Then checks the serial log for the lines that prove (3) and (4) really exercised ipvlan.
#
#   integration/vm/tests.sh            (as root, from anywhere)
#
# Environment:
#   ENI_VM_TARGET_DIR   cargo target dir for the static build (default <repo>/target/vm);
#                       kept apart from the normal one so the crt-static RUSTFLAGS never
#                       invalidate its cache.
#   ENI_VM_OUT          where serial.log etc. go (default $ENI_VM_TARGET_DIR/vm-out)
#   ENI_VM_TIMEOUT      hard limit for the VM run in seconds (default 300)
#   ENI_VM_CACHE        kernel cache (default /var/cache/eni-vm)
#   CARGO_BUILD_JOBS    as usual (the build is the slow part of a cold run)
set -euo pipefail
trap 'printf "vm-tests: FAIL: command failed at line %s\n" "$LINENO" >&2' ERR
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
export PATH="$HOME/.cargo/bin:$PATH"
TARGET_DIR="${ENI_VM_TARGET_DIR:-$ROOT/target/vm}"
OUT="${ENI_VM_OUT:-$TARGET_DIR/vm-out}"
TRIPLE=x86_64-unknown-linux-gnu

log() { printf 'vm-tests: %s\n' "$*" >&2; }
die() { printf 'vm-tests: FAIL: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (apt-get, qemu, and the root tests)"
mkdir -p "$OUT"

# ---------------------------------------------------------------- build
# glibc static-pie: no musl target needed; the host toolchain has this target.
log "building eni-kernel tests, eni-cni and its ipvlan test (static, release) into $TARGET_DIR"
rustup target list --installed 2>/dev/null | grep -qx "$TRIPLE" || rustup target add "$TRIPLE" || true
JSON="$OUT/cargo-build.json"
: > "$JSON"; : > "$OUT/cargo-build.err"
# Two runs: `--test ipvlan` would otherwise also apply to eni-kernel. eni-cni's run builds
# its binary too (the test's CARGO_BIN_EXE_eni-cni), static like the test.
for sel in "-p eni-kernel" "-p eni-cni --test ipvlan"; do
  # shellcheck disable=SC2086  # $sel is words on purpose
  ( cd "$ROOT" &&
    RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" CARGO_TARGET_DIR="$TARGET_DIR" \
      cargo test $sel --no-run --release --locked --target "$TRIPLE" \
        --message-format=json-render-diagnostics >> "$JSON" 2>> "$OUT/cargo-build.err" ) ||
    { cat "$OUT/cargo-build.err" >&2; die "cargo build of the static test binaries failed ($sel)"; }
done
CNI_BIN="$TARGET_DIR/$TRIPLE/release/eni-cni"
[ -x "$CNI_BIN" ] || die "cargo did not build $CNI_BIN"
# Where the VM has the plugin; the test finds it through ENI_CNI_BIN (its compiled-in
# CARGO_BIN_EXE_eni-cni names the host's target dir).
VM_CNI_BIN=/usr/lib/cni/eni-cni
# glibc's linker warnings ("Using 'getaddrinfo' in statically linked applications requires
# at runtime the shared libraries ...") are silenced by rustc (lint linker_messages, allow by
# default), so look at the symbols instead: NSS lookups do not work in the VM (no
# /etc/nsswitch.conf, no libnss_*.so). std links getpwuid_r (home_dir) and dlopen anyway;
# those are harmless unless called. Name resolution would not be.

# The test executables: compiler-artifact messages of eni-kernel and eni-cni with
# profile.test and an executable (eni-kernel's unit tests and each file in kernel/tests/;
# eni-cni's tests/ipvlan.rs).
exes() {
  if command -v jq >/dev/null; then
    jq -r 'select(.reason=="compiler-artifact" and .profile.test and .executable != null
                  and (.package_id | test("#eni-(kernel|cni)@|[ /]eni-(kernel|cni)[ @#]"))) | .executable' "$JSON"
  else
    grep '"reason":"compiler-artifact"' "$JSON" | grep '"test":true' | grep -E 'eni-(kernel|cni)' |
      sed -n 's/.*"executable":"\([^"]*\)".*/\1/p'
  fi
}
mapfile -t EXES < <(exes)
[ ${#EXES[@]} -gt 0 ] || die "cargo reported no test executables (see $JSON)"
UNIT="" ROOTT="" CNIT=""
for e in "${EXES[@]}"; do
  case "$(basename "$e")" in
    eni_kernel-*) UNIT="$e" ;;
    root_netlink-*) ROOTT="$e" ;;
    ipvlan-*) CNIT="$e" ;;
    *) log "note: extra test binary $(basename "$e") is not run in the VM" ;;
  esac
done
[ -n "$UNIT" ] && [ -n "$ROOTT" ] && [ -n "$CNIT" ] ||
  die "missing eni_kernel, root_netlink or (eni-cni) ipvlan in: ${EXES[*]}"
if command -v readelf >/dev/null; then
  for e in "${EXES[@]}" "$CNI_BIN"; do
    nss="$(readelf -Ws "$e" | awk '{print $8}' |
           grep -xE 'getaddrinfo|gethostbyname2?(_r)?|getnameinfo|getpwnam(_r)?|getgrnam(_r)?' |
           sort -u | tr '\n' ' ' || true)"
    [ -z "$nss" ] || log "WARNING: $(basename "$e") links glibc NSS functions ($nss): they fail in the VM"
  done
fi

# ---------------------------------------------------------------- run
# --show-output: libtest prints what passing tests wrote, which the checks below read.
set +e
bash "$HERE/run-in-vm.sh" --quiet --timeout "${ENI_VM_TIMEOUT:-300}" \
  --file "$CNI_BIN:$VM_CNI_BIN" --env "ENI_CNI_BIN=$VM_CNI_BIN" "$OUT" -- \
  "$HERE/selftest-ipvlan.sh" \
  "eni_kernel=$UNIT --test-threads=2" \
  "root_netlink=$ROOTT --test-threads=2 --show-output" \
  "eni_cni_ipvlan=$CNIT --test-threads=2 --show-output"
rc=$?
set -e
LOG="$OUT/serial.log"
grep -E '^@@VM|^test result:|^test .* \.\.\. |^selftest-ipvlan:|^ipvlan-cni:|SKIPPED|panicked' "$LOG" >&2 || true
[ "$rc" -eq 0 ] || die "tests in the VM failed (exit $rc); full console: $LOG"

# ---------------------------------------------------------------- checks
# The ipvlan test passes on both kinds of kernel; here it must have taken the "supported"
# path, and the probe must have seen ipvlan.
need() { grep -qF -- "$1" "$LOG" || die "serial log lacks: $1 ($2); see $LOG"; }
need "test ipvlan_is_reported_unsupported_when_the_kernel_lacks_it ... ok" "ipvlan test result"
need "kernel supports ipvlan: true" "ipvlan test must take its success path in the VM"
need "test kernel_support_probe ... ok" "probe test result"
need "ipvlan: true, dummy: true" "probe must see ipvlan (and dummy) in the VM kernel"
need "selftest-ipvlan: PASS" "harness self-test"
# eni-cni's ipvlan mode, through the real binary (these lines are printed only on success).
need "test ipvlan_mode_add_traffic_check_del ... ok" "eni-cni ipvlan test result"
need "ipvlan-cni: ipvlan mode OK" "eni-cni ipvlan test must run, not skip, in the VM"
need "test mode_auto_picks_ipvlan_where_the_kernel_has_it_else_veth ... ok" "eni-cni auto test result"
need "ipvlan-cni: mode auto chose ipvlan" "mode auto must pick ipvlan in the VM"
# A skip line may share a console line with libtest's output: look anywhere in the line.
if grep -q 'SKIPPED' "$LOG"; then die "a test skipped inside the VM: $(grep 'SKIPPED' "$LOG" | head -n3)"; fi
log "OK: ipvlan exercised in the VM ($(grep -m1 '^@@VMINFO kernel=' "$LOG" | cut -d' ' -f2))"
