#!/usr/bin/env bash
# Runs test programs inside a throw-away VM that boots Debian's stock kernel (which has
# ipvlan, unlike the build machine's kernel) under qemu with software emulation (TCG).
#
#   run-in-vm.sh [options] <out-dir> -- <test> [<test> ...]
#
# Each <test> is ONE argument of the form  "[NAME=]PATH [ARG ...]"  (split on whitespace, so
# arguments cannot contain spaces). PATH is either a static executable (checked) or a shell
# script ending in .sh (run with busybox sh inside the VM). NAME defaults to PATH's file name
# (minus a cargo "-<hash>" suffix and ".sh"). Tests run one after the other, in order, in
# one boot.
#
# Options:
#   --timeout SECONDS     hard limit for the whole VM run (default 300, env ENI_VM_TIMEOUT)
#   --cache DIR           where the kernel is downloaded/extracted (default /var/cache/eni-vm,
#                         env ENI_VM_CACHE)
#   --modules "a b c"     modules to load (default: see DEFAULT_MODULES, env ENI_VM_MODULES)
#   --test-timeout SECS   kill a single test after SECS (SIGKILL, exit 137); later tests still
#                         run (default 0 = none, env ENI_VM_TEST_TIMEOUT)
#   --env NAME=VALUE      set in every test's environment (repeatable)
#   --file SRC:DEST       also put the host file SRC into the VM at the absolute path DEST
#                         (repeatable), e.g. a program the tests run; executables must be
#                         static, like the tests
#   --quiet               don't stream the serial console to stdout (it is always in the log)
#
# Writes to <out-dir>: serial.log (the whole console), initramfs.cpio.gz, results.txt (one
# "name exit" line per test), qemu.cmd. Prints "N passed, M failed" and exits 0 only if every
# test reported exit 0 (and /init got to its end). Needs root. Never gives the VM any network to the outside: its only NIC sits on an
# isolated qemu hub with no other port.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TIMEOUT="${ENI_VM_TIMEOUT:-300}"
CACHE="${ENI_VM_CACHE:-/var/cache/eni-vm}"
DEFAULT_MODULES="virtio_pci virtio_net ipvlan veth sch_ingress cls_bpf macvlan bridge dummy af_packet"
MODULES="${ENI_VM_MODULES:-$DEFAULT_MODULES}"
QUIET=0
TEST_TIMEOUT="${ENI_VM_TEST_TIMEOUT:-0}"
TEST_ENV=()
FILES=()

log() { printf 'run-in-vm: %s\n' "$*" >&2; }
die() { printf 'run-in-vm: ERROR: %s\n' "$*" >&2; exit 2; }

usage() { sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --timeout) TIMEOUT="$2"; shift 2 ;;
    --cache) CACHE="$2"; shift 2 ;;
    --modules) MODULES="$2"; shift 2 ;;
    --test-timeout) TEST_TIMEOUT="$2"; shift 2 ;;
    --env) TEST_ENV+=("$2"); shift 2 ;;
    --file) FILES+=("$2"); shift 2 ;;
    --quiet) QUIET=1; shift ;;
    -h|--help) usage ;;
    --) die "missing <out-dir> before --" ;;
    -*) die "unknown option $1" ;;
    *) break ;;
  esac
done
[ $# -ge 3 ] && [ "$2" = "--" ] || usage
OUT="$1"; shift 2
TESTS=("$@")
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || die "--timeout wants whole seconds, got $TIMEOUT"
[[ "$TEST_TIMEOUT" =~ ^[0-9]+$ ]] || die "--test-timeout wants whole seconds, got $TEST_TIMEOUT"
[ "$(id -u)" -eq 0 ] || die "must run as root (apt-get, and the tests themselves are root tests)"

# ---------------------------------------------------------------- host requirements
ensure_packages() {
  local missing=()
  command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
  # busybox (dynamic) conflicts with busybox-static; only the static one can live alone in
  # the initramfs.
  if [ ! -x /bin/busybox ] || ldd /bin/busybox >/dev/null 2>&1; then missing+=(busybox-static); fi
  [ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || missing+=(iproute2)
  command -v depmod >/dev/null && command -v modprobe >/dev/null || missing+=(kmod)
  command -v cpio >/dev/null || missing+=(cpio)
  command -v gzip >/dev/null || missing+=(gzip)
  command -v timeout >/dev/null || missing+=(coreutils)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    APT_UPDATED=1
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}
APT_UPDATED=0
ensure_packages
IP_BIN="$(command -v ip || true)"; [ -x /usr/sbin/ip ] && IP_BIN=/usr/sbin/ip
[ -n "$IP_BIN" ] || die "no iproute2 ip"

# ---------------------------------------------------------------- kernel
# The package name linux-image-amd64 depends on, else the newest linux-image-6.1.0-N-amd64.
kernel_package() {
  local p
  p="$(apt-cache depends linux-image-amd64 2>/dev/null |
       sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-amd64\)$/\1/p' | head -n1)"
  if [ -z "$p" ]; then
    p="$(apt-cache pkgnames linux-image-6.1.0- 2>/dev/null |
         grep -E '^linux-image-6\.1\.0-[0-9]+-amd64$' | sort -t- -k4,4n | tail -n1)"
  fi
  printf '%s' "$p"
}

# A kernel already extracted in the cache is reused without asking apt anything (so a
# warm run works offline); ENI_VM_REFRESH=1 asks apt again.
mkdir -p "$CACHE"
exec 9> "$CACHE/.lock"
flock 9                      # one download/extraction at a time; released when we exit
KDIR=""
if [ "${ENI_VM_REFRESH:-0}" != 1 ] && [ -f "$CACHE/current" ]; then
  KDIR="$CACHE/$(cat "$CACHE/current")"
  [ -f "$KDIR/.complete" ] || KDIR=""
fi
if [ -z "$KDIR" ]; then
  PKG="$(kernel_package)"
  if [ -z "$PKG" ] && [ "$APT_UPDATED" = 0 ]; then
    log "no kernel package known to apt; running apt-get update"
    apt-get update -qq; APT_UPDATED=1
    PKG="$(kernel_package)"
  fi
  [ -n "$PKG" ] || die "apt knows no linux-image-amd64 / linux-image-6.1.0-*-amd64"
  KDIR="$CACHE/$PKG"
  if [ ! -f "$KDIR/.complete" ]; then
    mkdir -p "$CACHE/dl"
    log "downloading $PKG"
    # apt-get download as root drops to _apt for the download; let it write here.
    chown _apt "$CACHE/dl" 2>/dev/null || true
    ( cd "$CACHE/dl" && rm -f "${PKG}"_*.deb && apt-get download -q "$PKG" >/dev/null 2>&1 ) ||
      { [ "$APT_UPDATED" = 0 ] && apt-get update -qq && APT_UPDATED=1 &&
        ( cd "$CACHE/dl" && apt-get download -q "$PKG" >/dev/null ); } ||
      die "apt-get download $PKG failed"
    rm -rf "$KDIR"; mkdir -p "$KDIR/root"
    dpkg-deb -x "$CACHE/dl/${PKG}"_*.deb "$KDIR/root"
    rm -f "$CACHE/dl/${PKG}"_*.deb
    KVER="$(ls "$KDIR/root/lib/modules" | head -n1)"
    depmod -b "$KDIR/root" "$KVER"
    printf '%s\n' "$KVER" > "$KDIR/kver"
    touch "$KDIR/.complete"
  fi
  printf '%s\n' "$PKG" > "$CACHE/current"
fi
flock -u 9; exec 9>&-
KVER="$(cat "$KDIR/kver")"
VMLINUZ="$KDIR/root/boot/vmlinuz-$KVER"
[ -f "$VMLINUZ" ] || die "no $VMLINUZ"
log "kernel $KVER ($KDIR)"

# ---------------------------------------------------------------- initramfs
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
STAGE="$(mktemp -d "${TMPDIR:-/tmp}/eni-vm-initrd.XXXXXX")"
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,etc,t,lib/modules/"$KVER"}
mkdir -p "$STAGE/var"; ln -s ../run "$STAGE/var/run"

cp /bin/busybox "$STAGE/bin/busybox"
for applet in $("$STAGE/bin/busybox" --list); do
  case "$applet" in
    busybox|ip|ipaddr|iplink|iproute|iprule|ipneigh|iptunnel) continue ;;  # iproute2's ip wins
  esac
  ln -sf busybox "$STAGE/bin/$applet"
done

# iproute2's ip (the tests call `ip netns exec`) and the shared libraries it needs.
copy_with_libs() {
  local bin="$1" dest="$2" lib
  cp -L "$bin" "$STAGE$dest"
  for lib in $(ldd "$bin" | grep -o '/[^ ]*' | sort -u); do
    mkdir -p "$STAGE$(dirname "$lib")"
    cp -L "$lib" "$STAGE$lib"
  done
}
copy_with_libs "$IP_BIN" /sbin/ip

# Modules: the dependency closure, in load order, uncompressed.
: > "$STAGE/etc/modules.order"
declare -A SEEN=()
# Module parameters: no dummy0 appearing by itself (tests create their own links).
declare -A MODULE_PARAMS=([dummy]="numdummies=0")
for m in $MODULES; do
  if ! deps="$(modprobe -d "$KDIR/root" -S "$KVER" --show-depends "$m" 2>&1)"; then
    log "module $m: not in this kernel ($deps); skipped"
    continue
  fi
  while read -r kind path _; do
    [ "$kind" = insmod ] || continue           # "builtin x" lines need nothing
    [ -n "${SEEN[$path]:-}" ] && continue
    SEEN[$path]=1
    rel="${path#"$KDIR/root"}"
    dst="$STAGE${rel%.xz}"; dst="${dst%.zst}"
    mkdir -p "$(dirname "$dst")"
    case "$path" in
      *.xz) xz -dc "$path" > "$dst" ;;
      *.zst) zstd -qdc "$path" > "$dst" ;;
      *) cp "$path" "$dst" ;;
    esac
    base="$(basename "$dst" .ko)"
    printf '%s %s\n' "${dst#"$STAGE"}" "${MODULE_PARAMS[$base]:-}" >> "$STAGE/etc/modules.order"
  done <<< "$deps"
done
depmod -b "$STAGE" "$KVER" 2>/dev/null || true   # lets busybox modprobe work inside, too

# A program for the VM must not need shared libraries: only ip's are there.
refuse_dynamic() {
  local what="$1" path="$2"
  if ldd "$path" >/dev/null 2>&1 && ! ldd "$path" 2>&1 | grep -q 'statically linked'; then
    die "$what: $path is dynamically linked; it would not start in the VM (no libc there).
  Build it static: RUSTFLAGS='-C target-feature=+crt-static' cargo build --target x86_64-unknown-linux-gnu ...
  ldd says: $(ldd "$path" 2>&1 | head -n3 | tr '\n' ' ')"
  fi
}

# Extra files (--file SRC:DEST).
for f in "${FILES[@]:-}"; do
  [ -n "$f" ] || continue
  [[ "$f" == *:/* ]] || die "--file wants SRC:/ABSOLUTE/DEST, got $f"
  src="${f%%:/*}"; dst="/${f#*:/}"
  [ -f "$src" ] || die "--file: no such file $src"
  if [ -x "$src" ]; then refuse_dynamic "--file" "$src"; fi
  mkdir -p "$STAGE$(dirname "$dst")"
  cp -L "$src" "$STAGE$dst"
done

# Tests.
: > "$STAGE/etc/tests"
NAMES=()
declare -A USED=()
for spec in "${TESTS[@]}"; do
  read -r -a words <<< "$spec"
  [ ${#words[@]} -gt 0 ] || die "empty test spec"
  first="${words[0]}"; args=("${words[@]:1}")
  if [[ "$first" == *=* ]]; then name="${first%%=*}"; path="${first#*=}"
  else path="$first"; name="$(basename "$path")"; name="${name%.sh}"
       [[ "$name" =~ ^(.+)-[0-9a-f]{16}$ ]] && name="${BASH_REMATCH[1]}"; fi
  [[ "$name" =~ ^[A-Za-z0-9_.-]+$ ]] || die "test name '$name' must match [A-Za-z0-9_.-]+"
  if [ -n "${USED[$name]:-}" ]; then n=2; while [ -n "${USED[$name-$n]:-}" ]; do n=$((n+1)); done; name="$name-$n"; fi
  USED[$name]=1
  [ -f "$path" ] || die "test $name: no such file $path"
  if [[ "$path" == *.sh ]]; then
    cp "$path" "$STAGE/t/$name"; runner="sh /t/$name"
  else
    [ -x "$path" ] || die "test $name: $path is not executable"
    refuse_dynamic "test $name" "$path"
    cp "$path" "$STAGE/t/$name"; chmod 755 "$STAGE/t/$name"; runner="/t/$name"
  fi
  # One line per test: name, then the command line (args are plain words).
  printf '%s %s %s\n' "$name" "$runner" "${args[*]:-}" >> "$STAGE/etc/tests"
  NAMES+=("$name")
done
: > "$STAGE/etc/test-env"
printf 'VMTEST_TIMEOUT=%s\n' "$TEST_TIMEOUT" > "$STAGE/etc/harness.conf"
for e in "${TEST_ENV[@]:-}"; do
  [ -n "$e" ] || continue
  [[ "$e" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env wants NAME=VALUE, got $e"
  printf 'export %q\n' "$e" >> "$STAGE/etc/test-env"
done

install -m 755 "$HERE/init.sh" "$STAGE/init"
( cd "$STAGE" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 ) |
  gzip -1 > "$OUT/initramfs.cpio.gz"
log "initramfs $(du -h "$OUT/initramfs.cpio.gz" | cut -f1), ${#NAMES[@]} test(s): ${NAMES[*]}"

# ---------------------------------------------------------------- boot
# No host networking at all: the one NIC is on hub 0, which has no other port.
QEMU=(qemu-system-x86_64 -accel tcg -cpu max -m 1024 -smp 2
      -kernel "$VMLINUZ" -initrd "$OUT/initramfs.cpio.gz"
      -append "console=ttyS0 quiet panic=-1"
      -nographic -no-reboot
      -netdev hubport,id=n0,hubid=0 -device virtio-net-pci,netdev=n0,romfile=)
printf '%q ' "${QEMU[@]}" > "$OUT/qemu.cmd"; echo >> "$OUT/qemu.cmd"
LOG="$OUT/serial.log"
log "booting (timeout ${TIMEOUT}s); console -> $LOG"
start=$(date +%s)
set +e
if [ "$QUIET" = 1 ]; then
  timeout -k 5 "$TIMEOUT" "${QEMU[@]}" < /dev/null > "$LOG" 2>&1
  qrc=$?
else
  timeout -k 5 "$TIMEOUT" "${QEMU[@]}" < /dev/null 2>&1 | tee "$LOG"
  qrc=${PIPESTATUS[0]}
fi
set -e
secs=$(( $(date +%s) - start ))
sed -i 's/\r$//' "$LOG"
if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then log "VM TIMED OUT after ${TIMEOUT}s"; fi
log "VM ran ${secs}s (qemu exit $qrc)"

# ---------------------------------------------------------------- results
pass=0; fail=0
: > "$OUT/results.txt"
for name in "${NAMES[@]}"; do
  line="$(grep -E "^@@VMTEST name=$name exit=[0-9]+@@" "$LOG" | tail -n1 || true)"
  code="$(printf '%s' "$line" | sed -n 's/^@@VMTEST name=[^ ]* exit=\([0-9]*\)@@.*/\1/p')"
  [ -n "$code" ] || code=none
  printf '%s %s\n' "$name" "$code" >> "$OUT/results.txt"
  if [ "$code" = 0 ]; then pass=$((pass+1))
  elif [ "$code" = none ]; then fail=$((fail+1)); log "FAILED: $name (no result: the VM stopped first)"
  else fail=$((fail+1)); log "FAILED: $name (exit $code)"; fi
done
done_ok=1
if ! grep -q '^@@VMTEST-DONE' "$LOG"; then
  log "the VM never reached the end of /init (timeout, panic or crash): see $LOG"
  done_ok=0
fi
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ] && [ "$pass" -eq "${#NAMES[@]}" ] && [ "$done_ok" = 1 ]
