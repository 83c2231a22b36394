#!/usr/bin/env bash
# Tests deploy/bootstrap/install.sh without touching the system: everything goes under a
# temporary --root (so no systemctl runs), with fake binaries. Needs no root.
# Prints "bootstrap: N passed, M failed" and exits non-zero on failure.
set -uo pipefail
cd "$(dirname "$0")"
INSTALL="$PWD/install.sh"

WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
  [ -z "$SERVER_PID" ] || kill "$SERVER_PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

passed=0 failed=0
ok() { passed=$((passed + 1)); echo "ok   $1"; }
fail() { failed=$((failed + 1)); echo "FAIL $1"; [ -z "${2:-}" ] || echo "$2" | sed 's/^/     /'; }
# expect NAME COMMAND...: the command must succeed.
expect() {
  local name="$1"; shift
  local out
  if out="$("$@" 2>&1)"; then ok "$name"; else fail "$name" "$out"; fi
}

# Fake binaries; the fake manager refuses a configuration that mentions "refuse-me", as the
# real one refuses a bad one with status 64.
BIN="$WORK/bin"
mkdir -p "$BIN"
cat >"$BIN/eni-manager" <<'EOF'
#!/bin/sh
# fake eni-manager v1
if [ "${3:-}" = "--check-config" ] && grep -q refuse-me "$2"; then
  echo "eni-manager: configuration has 1 problem(s): refused" >&2
  exit 64
fi
exit 0
EOF
printf '#!/bin/sh\necho fake eni-cni\n' >"$BIN/eni-cni"
printf '#!/bin/sh\necho fake enictl\n' >"$BIN/enictl"
chmod 0755 "$BIN"/*

ROOT="$WORK/root"
mkdir -p "$ROOT"
FLAGS=(--from "$BIN" --provider aliyun --cluster-id prod-hz-1 --region cn-hangzhou
  --subnet cn-hangzhou-h=vsw-aaa,vsw-bbb --subnet cn-hangzhou-i=vsw-ccc --security-group sg-pods)

# A listing of everything under the root: path, mode, size, mtime, content hash, link target.
snapshot() {
  (cd "$1" && find . -mindepth 1 | sort | while read -r p; do
    if [ -L "$p" ]; then
      echo "$p -> $(readlink "$p")"
    elif [ -f "$p" ]; then
      echo "$p $(stat -c '%a %s %Y' "$p") $(sha256sum <"$p" | cut -d' ' -f1)"
    else
      echo "$p/ $(stat -c '%a' "$p")"
    fi
  done)
}

# ---- first install -------------------------------------------------------------------------
out1="$(bash "$INSTALL" "${FLAGS[@]}" --root "$ROOT" 2>&1)"
rc=$?
if [ $rc -eq 0 ]; then ok "first install succeeds"; else fail "first install succeeds (rc $rc)" "$out1"; fi

check_files() {
  local missing=""
  for f in usr/local/bin/eni-manager usr/local/bin/enictl opt/cni/bin/eni-cni \
    etc/eni-manager/config.yaml etc/eni-manager/cni/10-eni-net.conflist \
    usr/local/lib/eni-net/write-cni-config etc/systemd/system/eni-manager.service; do
    [ -f "$ROOT/$f" ] || missing+=" $f"
  done
  [ -z "$missing" ] || { echo "missing:$missing"; return 1; }
  for f in usr/local/bin/eni-manager usr/local/bin/enictl opt/cni/bin/eni-cni usr/local/lib/eni-net/write-cni-config; do
    [ "$(stat -c %a "$ROOT/$f")" = 755 ] || { echo "$f is not 0755"; return 1; }
  done
  [ "$(readlink "$ROOT/etc/systemd/system/multi-user.target.wants/eni-manager.service")" = /etc/systemd/system/eni-manager.service ] \
    || { echo "not enabled"; return 1; }
}
expect "binaries, config, conflist source, helper, unit and enable link are in place" check_files

check_config() {
  local c="$ROOT/etc/eni-manager/config.yaml"
  grep -q '^  provider: aliyun$' "$c" && grep -q '^  id: "prod-hz-1"$' "$c" \
    && grep -q '^    cn-hangzhou-h: \[vsw-aaa, vsw-bbb\]$' "$c" \
    && grep -q '^    cn-hangzhou-i: \[vsw-ccc\]$' "$c" \
    && grep -q '^  security_groups: \[sg-pods\]$' "$c" \
    && grep -q '^  region: cn-hangzhou$' "$c" \
    && python3 -c 'import sys, yaml; yaml.safe_load(open(sys.argv[1]))' "$c" \
    || { cat "$c"; return 1; }
}
expect "config.yaml is built from the flags and parses as YAML" check_config

check_unit() {
  local u="$ROOT/etc/systemd/system/eni-manager.service"
  for want in '^After=network-online.target$' '^Wants=network-online.target$' '^Restart=always$' \
    '^ExecStart=/usr/local/bin/eni-manager --config /etc/eni-manager/config.yaml$' \
    '^ExecStartPost=/usr/local/lib/eni-net/write-cni-config$' '^StateDirectory=eni-manager$' \
    '^RuntimeDirectory=eni-manager$' '^WantedBy=multi-user.target$'; do
    grep -q "$want" "$u" || { echo "unit lacks $want"; return 1; }
  done
}
expect "the unit: after network-online, Restart=always, state and runtime dirs, readiness gate" check_unit

no_conflist_yet() {
  [ ! -e "$ROOT/etc/cni/net.d/10-eni-net.conflist" ] || { echo "conflist written at install time"; return 1; }
  python3 -m json.tool "$ROOT/etc/eni-manager/cni/10-eni-net.conflist" >/dev/null
}
expect "no conflist in /etc/cni/net.d at install time (the unit writes it once ready)" no_conflist_yet

no_systemctl() { ! grep -q "would: systemctl\|^systemctl" <<<"$out1" && grep -q "not running systemctl" <<<"$out1"; }
expect "--root runs no systemctl and says so" no_systemctl

# ---- idempotency ---------------------------------------------------------------------------
before="$(snapshot "$ROOT")"
sleep 1.1 # a rewrite would show in the mtimes
out2="$(bash "$INSTALL" "${FLAGS[@]}" --root "$ROOT" 2>&1)"
rc=$?
after="$(snapshot "$ROOT")"
if [ $rc -eq 0 ] && [ "$before" = "$after" ] && grep -q "done: 0 change(s)" <<<"$out2"; then
  ok "second install with the same flags changes nothing"
else
  fail "second install with the same flags changes nothing (rc $rc)" "$out2
$(diff <(echo "$before") <(echo "$after"))"
fi

out3="$(bash "$INSTALL" --from "$BIN" --root "$ROOT" 2>&1)"
rc=$?
if [ $rc -eq 0 ] && [ "$before" = "$(snapshot "$ROOT")" ] && grep -q "done: 0 change(s)" <<<"$out3"; then
  ok "install without config flags keeps the existing config, changes nothing"
else
  fail "install without config flags keeps the existing config (rc $rc)" "$out3"
fi

out4="$(bash "$INSTALL" "${FLAGS[@]/prod-hz-1/other-cluster}" --root "$ROOT" 2>&1)"
rc=$?
if [ $rc -eq 0 ] && [ "$before" = "$(snapshot "$ROOT")" ] && grep -q "kept existing /etc/eni-manager/config.yaml" <<<"$out4"; then
  ok "a different config without --force is not written over the existing one"
else
  fail "a different config without --force is not written (rc $rc)" "$out4"
fi

out5="$(bash "$INSTALL" "${FLAGS[@]/prod-hz-1/other-cluster}" --force --dry-run --root "$ROOT" 2>&1)"
rc=$?
if [ $rc -eq 0 ] && [ "$before" = "$(snapshot "$ROOT")" ] && grep -q "would: install -m 644 .*config.yaml" <<<"$out5" \
  && grep -q "dry run: 1 change(s) would be made" <<<"$out5"; then
  ok "--dry-run --force prints the one change it would make and makes none"
else
  fail "--dry-run --force prints what it would do and changes nothing (rc $rc)" "$out5"
fi

out6="$(bash "$INSTALL" "${FLAGS[@]/prod-hz-1/other-cluster}" --force --root "$ROOT" 2>&1)"
if grep -q 'id: "other-cluster"' "$ROOT/etc/eni-manager/config.yaml" && grep -q "done: 1 change(s)" <<<"$out6"; then
  ok "--force replaces the config"
else
  fail "--force replaces the config" "$out6"
fi

# An upgrade: a new manager binary is installed, nothing else changes.
sed -i 's/fake eni-manager v1/fake eni-manager v2/' "$BIN/eni-manager"
out7="$(bash "$INSTALL" --from "$BIN" --root "$ROOT" 2>&1)"
if grep -q "installed /usr/local/bin/eni-manager" <<<"$out7" && grep -q "done: 1 change(s)" <<<"$out7" \
  && grep -q "v2" "$ROOT/usr/local/bin/eni-manager"; then
  ok "a new binary is installed in place (upgrade), nothing else"
else
  fail "a new binary is installed in place" "$out7"
fi

# ---- validation before action --------------------------------------------------------------
FRESH="$WORK/fresh"
mkdir -p "$FRESH"
out8="$(bash "$INSTALL" --from "$BIN" --provider gcp --cluster-id x --root "$FRESH" 2>&1)"
rc=$?
if [ $rc -eq 64 ] && [ -z "$(ls -A "$FRESH")" ] && grep -q "2 problem(s), nothing was changed" <<<"$out8" \
  && grep -q -- "--provider gcp" <<<"$out8" && grep -q -- "--subnet ZONE=ID" <<<"$out8"; then
  ok "bad flags: exit 64 naming every problem, nothing written"
else
  fail "bad flags: exit 64 naming every problem, nothing written (rc $rc)" "$out8"
fi

out9="$(bash "$INSTALL" --from "$BIN" --provider aws --cluster-id refuse-me --subnet us-east-1a=subnet-1 --root "$FRESH" 2>&1)"
rc=$?
if [ $rc -eq 64 ] && [ -z "$(ls -A "$FRESH")" ] && grep -q "refused by eni-manager --check-config" <<<"$out9"; then
  ok "a config the manager refuses: exit 64, nothing written"
else
  fail "a config the manager refuses: exit 64, nothing written (rc $rc)" "$out9"
fi

out10="$(bash "$INSTALL" --from "$WORK/nope" --root "$FRESH" 2>&1)"
rc=$?
if [ $rc -eq 64 ] && grep -q "no such directory" <<<"$out10"; then ok "a missing --from directory is reported"; else fail "a missing --from directory is reported (rc $rc)" "$out10"; fi

# ---- from a release tarball ----------------------------------------------------------------
mkdir -p "$WORK/release/eni-net-0.1.0/bin"
cp "$BIN"/* "$WORK/release/eni-net-0.1.0/bin/"
tar -czf "$WORK/eni-net-0.1.0.tar.gz" -C "$WORK/release" eni-net-0.1.0
TROOT="$WORK/troot"
mkdir -p "$TROOT"
cfg="$WORK/given-config.yaml"
printf 'cloud: {provider: aws}\ncluster: {id: eks-1}\nnetwork: {subnets: {us-east-1a: [subnet-1]}}\n' >"$cfg"
out11="$(bash "$INSTALL" --tarball "$WORK/eni-net-0.1.0.tar.gz" --config "$cfg" --cni-mode veth --root "$TROOT" 2>&1)"
rc=$?
if [ $rc -eq 0 ] && cmp -s "$cfg" "$TROOT/etc/eni-manager/config.yaml" && [ -x "$TROOT/opt/cni/bin/eni-cni" ] \
  && grep -q '"mode": "veth"' "$TROOT/etc/eni-manager/cni/10-eni-net.conflist"; then
  ok "install from a release tarball with a given config file"
else
  fail "install from a release tarball with a given config file (rc $rc)" "$out11"
fi

HROOT="$WORK/hroot"
mkdir -p "$HROOT"
out11b="$(bash "$INSTALL" --tarball "$WORK/eni-net-0.1.0.tar.gz" --config "$cfg" --host-ports --root "$HROOT" 2>&1)"
rc=$?
if [ $rc -eq 0 ] && python3 -c 'import json,sys; c=json.load(open(sys.argv[1]))["plugins"][0]["capabilities"]; sys.exit(0 if c == {"exclusiveEni": True, "portMappings": True} else 1)' \
  "$HROOT/etc/eni-manager/cni/10-eni-net.conflist" \
  && ! grep -q portMappings "$TROOT/etc/eni-manager/cni/10-eni-net.conflist"; then
  ok "--host-ports gives eni-cni the portMappings capability (and only then)"
else
  fail "--host-ports gives eni-cni the portMappings capability (rc $rc)" "$out11b"
fi

# ---- the readiness gate (the unit's ExecStartPost helper) ----------------------------------
# Run the installed helper with its node paths pointed into the root, against a stand-in
# manager: nothing written while /readyz is not 200; written once it is.
HELPER="$WORK/helper"
sed "s#/etc/#$ROOT/etc/#g" "$ROOT/usr/local/lib/eni-net/write-cni-config" >"$HELPER"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
mkdir -p "$WORK/www"
out12="$(ENI_NET_READY_TIMEOUT_S=2 ENI_MANAGER__DAEMON__METRICS_ADDRESS=127.0.0.1:$PORT bash "$HELPER" 2>&1)"
rc=$?
if [ $rc -ne 0 ] && [ ! -e "$ROOT/etc/cni/net.d/10-eni-net.conflist" ] && grep -q "not ready" <<<"$out12"; then
  ok "readiness gate: manager not ready -> fails, no conflist"
else
  fail "readiness gate: manager not ready -> fails, no conflist (rc $rc)" "$out12"
fi
printf 'ready\n' >"$WORK/www/readyz"
python3 -m http.server "$PORT" --bind 127.0.0.1 --directory "$WORK/www" >/dev/null 2>&1 &
SERVER_PID=$!
for _ in $(seq 50); do curl -fs -o /dev/null "http://127.0.0.1:$PORT/readyz" 2>/dev/null && break; sleep 0.1; done
out13="$(ENI_NET_READY_TIMEOUT_S=10 ENI_MANAGER__DAEMON__METRICS_ADDRESS=127.0.0.1:$PORT bash "$HELPER" 2>&1)"
rc=$?
if [ $rc -eq 0 ] && cmp -s "$ROOT/etc/eni-manager/cni/10-eni-net.conflist" "$ROOT/etc/cni/net.d/10-eni-net.conflist"; then
  ok "readiness gate: manager ready -> conflist written"
else
  fail "readiness gate: manager ready -> conflist written (rc $rc)" "$out13"
fi
# Without curl or wget the helper falls back to bash's /dev/tcp.
rm -f "$ROOT/etc/cni/net.d/10-eni-net.conflist"
mkdir -p "$WORK/minpath"
for t in bash cat cmp cp chmod mv mkdir sed head sleep; do ln -sf "$(command -v "$t")" "$WORK/minpath/$t"; done
out14="$(PATH="$WORK/minpath" ENI_NET_READY_TIMEOUT_S=10 ENI_MANAGER__DAEMON__METRICS_ADDRESS=127.0.0.1:$PORT bash "$HELPER" 2>&1)"
rc=$?
if [ $rc -eq 0 ] && [ -f "$ROOT/etc/cni/net.d/10-eni-net.conflist" ]; then
  ok "readiness gate without curl or wget (bash /dev/tcp)"
else
  fail "readiness gate without curl or wget (rc $rc)" "$out14"
fi
kill "$SERVER_PID" 2>/dev/null
SERVER_PID=""

# ---- uninstall -----------------------------------------------------------------------------
mkdir -p "$ROOT/var/lib/eni-manager"
echo journal >"$ROOT/var/lib/eni-manager/journal"
out15="$(bash "$INSTALL" --uninstall --root "$ROOT" 2>&1)"
rc=$?
check_uninstalled() {
  for f in usr/local/bin/eni-manager usr/local/bin/enictl opt/cni/bin/eni-cni \
    usr/local/lib/eni-net/write-cni-config etc/systemd/system/eni-manager.service \
    etc/systemd/system/multi-user.target.wants/eni-manager.service etc/cni/net.d/10-eni-net.conflist; do
    if [ -e "$ROOT/$f" ] || [ -L "$ROOT/$f" ]; then echo "$f still there"; return 1; fi
  done
  [ -f "$ROOT/var/lib/eni-manager/journal" ] || { echo "state removed without --purge"; return 1; }
  [ -f "$ROOT/etc/eni-manager/config.yaml" ] || { echo "config removed without --purge"; return 1; }
  grep -q "orphan_eni_grace_s" <<<"$out15" || { echo "no word about the ENIs left"; return 1; }
}
if [ $rc -eq 0 ]; then expect "--uninstall removes unit, binaries, conflist; keeps config and state; warns about ENIs" check_uninstalled; else fail "--uninstall (rc $rc)" "$out15"; fi

out16="$(bash "$INSTALL" --uninstall --root "$ROOT" 2>&1)"
if grep -q "uninstalled (0 change(s))" <<<"$out16"; then ok "a second --uninstall changes nothing"; else fail "a second --uninstall changes nothing" "$out16"; fi

out17="$(bash "$INSTALL" --uninstall --purge --root "$ROOT" 2>&1)"
if [ ! -e "$ROOT/var/lib/eni-manager" ] && [ ! -e "$ROOT/etc/eni-manager" ]; then
  ok "--uninstall --purge removes the state and config"
else
  fail "--uninstall --purge removes the state and config" "$out17"
fi

echo "bootstrap: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
