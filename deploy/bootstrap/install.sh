#!/usr/bin/env bash
# Installs eni-net on a node without Helm (for node images of managed clusters): the binaries,
# the manager's configuration, a systemd unit that writes the CNI configuration only once the
# manager is ready, and enables and starts it. Idempotent: a second run with the same inputs
# changes nothing. See docs/install.md ("Node bootstrap without Helm").
set -euo pipefail

PROG=install.sh
UNIT_NAME=eni-manager.service
CONFLIST_NAME=10-eni-net.conflist

usage() {
  cat <<'EOF'
Usage:
  install.sh (--from DIR | --tarball PATH) [config options] [--force] [--no-start]
             [--root DIR] [--dry-run]
  install.sh --uninstall [--purge] [--root DIR] [--dry-run]

Sources of the binaries (eni-manager, eni-cni, enictl):
  --from DIR           a directory holding them (or DIR/bin), e.g. target/release
  --tarball PATH       a release tarball (.tar, .tar.gz, ...) holding them anywhere inside

The manager's configuration, /etc/eni-manager/config.yaml, written only if absent (or --force):
  --config FILE        copy this file (docs/configuration.md), or build one from:
  --provider NAME      aliyun | aws                                  (required)
  --cluster-id ID      tags every ENI of the cluster                 (required)
  --subnet ZONE=ID[,ID...]  vSwitch/subnet ids of a zone; repeat per zone (required)
  --region ID          default: from the metadata service
  --security-group ID  security group of created ENIs; repeatable (default: the node's)
  --credentials SRC    Alibaba Cloud: chain | env | file | ram_role (default chain)
  --metrics-address A  default 127.0.0.1:9410 (/metrics, /healthz, /readyz)

The CNI configuration (kept as /etc/eni-manager/cni/10-eni-net.conflist and copied to
/etc/cni/net.d by the unit once the manager is ready), written only if absent (or --force):
  --conflist FILE      use this conflist, or build one from:
  --cni-mode MODE      auto | exclusive | ipvlan | veth (default auto)
  --cni-version V      0.4.0 | 1.0.0 | 1.1.0 (default 1.0.0)
  --host-ports         give eni-cni the portMappings capability: pods' hostPort is served by
                       the manager, which needs services.nodeport in its configuration
                       (docs/services.md, "HostPort"); without it such pods are refused

Other options:
  --force              replace an existing configuration and conflist
  --no-start           install and enable, but do not start (or restart) the service
  --root DIR           install under DIR instead of / (building a node image, tests): no
                       systemctl is run; the unit is enabled by its multi-user.target.wants link
  --skip-config-check  do not run `eni-manager --check-config` on the configuration
  --dry-run            print what would be done, change nothing
  --uninstall          stop and disable the service; remove the unit, the binaries and the
                       conflist; keep /etc/eni-manager and /var/lib/eni-manager
  --purge              with --uninstall: remove /etc/eni-manager and /var/lib/eni-manager too
  -h, --help           this text

Credentials: the unit reads /etc/eni-manager/environment if it exists (create it 0600 with
ALIBABA_CLOUD_ACCESS_KEY_ID=... or AWS_...). On Alibaba Cloud prefer the instance's RAM role
(--credentials ram_role), on AWS the instance profile: then no file is needed.
EOF
}

die() {
  echo "$PROG: $*" >&2
  exit 64
}
say() { echo "$PROG: $*"; }

# ---- arguments -----------------------------------------------------------------------------
FROM="" TARBALL="" CONFIG_FILE="" PROVIDER="" CLUSTER_ID="" REGION="" CREDENTIALS=""
METRICS_ADDRESS="" CONFLIST_FILE="" CNI_MODE="" CNI_VERSION="" HOST_PORTS=0
SUBNETS=() SECURITY_GROUPS=()
FORCE=0 NO_START=0 ROOT="" DRY_RUN=0 UNINSTALL=0 PURGE=0 SKIP_CHECK=0

need_arg() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value (see --help)"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --from) need_arg "$@"; FROM="$2"; shift 2 ;;
    --tarball) need_arg "$@"; TARBALL="$2"; shift 2 ;;
    --config) need_arg "$@"; CONFIG_FILE="$2"; shift 2 ;;
    --provider) need_arg "$@"; PROVIDER="$2"; shift 2 ;;
    --cluster-id) need_arg "$@"; CLUSTER_ID="$2"; shift 2 ;;
    --subnet) need_arg "$@"; SUBNETS+=("$2"); shift 2 ;;
    --region) need_arg "$@"; REGION="$2"; shift 2 ;;
    --security-group) need_arg "$@"; SECURITY_GROUPS+=("$2"); shift 2 ;;
    --credentials) need_arg "$@"; CREDENTIALS="$2"; shift 2 ;;
    --metrics-address) need_arg "$@"; METRICS_ADDRESS="$2"; shift 2 ;;
    --conflist) need_arg "$@"; CONFLIST_FILE="$2"; shift 2 ;;
    --cni-mode) need_arg "$@"; CNI_MODE="$2"; shift 2 ;;
    --cni-version) need_arg "$@"; CNI_VERSION="$2"; shift 2 ;;
    --host-ports) HOST_PORTS=1; shift ;;
    --force) FORCE=1; shift ;;
    --no-start) NO_START=1; shift ;;
    --root) need_arg "$@"; ROOT="$2"; shift 2 ;;
    --skip-config-check) SKIP_CHECK=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    --uninstall) UNINSTALL=1; shift ;;
    --purge) PURGE=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

if [ -n "$ROOT" ]; then
  [ -d "$ROOT" ] || die "--root $ROOT: no such directory"
  ROOT="$(cd "$ROOT" && pwd)"
  [ "$ROOT" = / ] && ROOT=""
fi

# Paths on the node (what the unit and the helper refer to) and where they are written.
BIN_DIR=/usr/local/bin
CNI_BIN_DIR=/opt/cni/bin
CNI_CONF_DIR=/etc/cni/net.d
ETC_DIR=/etc/eni-manager
CONFIG=$ETC_DIR/config.yaml
CONFLIST_SRC=$ETC_DIR/cni/$CONFLIST_NAME
HELPER=/usr/local/lib/eni-net/write-cni-config
UNIT=/etc/systemd/system/$UNIT_NAME
WANTS_LINK=/etc/systemd/system/multi-user.target.wants/$UNIT_NAME
STATE_DIR=/var/lib/eni-manager
r() { printf '%s%s' "$ROOT" "$1"; } # a node path under --root

CHANGED=0
# Runs a command that changes the system, or prints it under --dry-run.
act() {
  if [ "$DRY_RUN" -eq 1 ]; then
    echo "would: $*"
  else
    "$@"
  fi
}

# install_file SRC DEST MODE: writes DEST (a node path) from SRC unless it already has that
# content and mode; atomic (a temporary file beside it, then rename).
install_file() {
  local src="$1" dest mode="$3"
  dest="$(r "$2")"
  if [ -f "$dest" ] && cmp -s "$src" "$dest" \
    && [ "$(stat -c %a "$dest")" = "$mode" ]; then
    say "unchanged $2"
    return 0
  fi
  CHANGED=$((CHANGED + 1))
  if [ "$DRY_RUN" -eq 1 ]; then
    echo "would: install -m $mode $src $dest"
    return 0
  fi
  mkdir -p "$(dirname "$dest")"
  local tmp
  tmp="$(dirname "$dest")/.$(basename "$dest").tmp.$$"
  cp "$src" "$tmp"
  chmod "$mode" "$tmp"
  mv -f "$tmp" "$dest"
  say "installed $2"
}

# install_once SRC DEST MODE: like install_file, but an existing DEST is kept unless --force.
install_once() {
  local dest
  dest="$(r "$2")"
  if [ -e "$dest" ] && [ "$FORCE" -eq 0 ]; then
    if cmp -s "$1" "$dest"; then
      say "unchanged $2"
    else
      say "kept existing $2 (it differs from what this run would write; --force replaces it)"
    fi
    return 0
  fi
  install_file "$@"
}

remove_path() {
  local p
  p="$(r "$1")"
  if [ -e "$p" ] || [ -L "$p" ]; then
    CHANGED=$((CHANGED + 1))
    act rm -rf "$p"
    [ "$DRY_RUN" -eq 1 ] || say "removed $1"
  fi
}

use_systemctl() {
  [ -z "$ROOT" ] || return 1
  command -v systemctl >/dev/null 2>&1 || die "systemctl not found: this script installs a systemd unit (use --root to install into an image)"
  return 0
}

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# ---- uninstall -----------------------------------------------------------------------------
if [ "$UNINSTALL" -eq 1 ]; then
  [ -z "$FROM$TARBALL$CONFIG_FILE" ] || die "--uninstall takes no --from, --tarball or --config"
  if [ -z "$ROOT" ] && [ "$DRY_RUN" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
    die "uninstalling needs root (or --root DIR)"
  fi
  if use_systemctl; then
    if systemctl cat "$UNIT_NAME" >/dev/null 2>&1; then
      act systemctl disable --now "$UNIT_NAME"
    fi
  else
    say "--root given: not running systemctl"
  fi
  remove_path "$WANTS_LINK"
  remove_path "$UNIT"
  remove_path "$HELPER"
  [ "$DRY_RUN" -eq 1 ] || rmdir "$(r /usr/local/lib/eni-net)" 2>/dev/null || true
  remove_path "$CNI_CONF_DIR/$CONFLIST_NAME"
  remove_path "$CNI_BIN_DIR/eni-cni"
  remove_path "$BIN_DIR/eni-manager"
  remove_path "$BIN_DIR/enictl"
  if [ "$PURGE" -eq 1 ]; then
    remove_path "$ETC_DIR"
    remove_path "$STATE_DIR"
  else
    say "kept $ETC_DIR and $STATE_DIR (--purge removes them)"
  fi
  if use_systemctl && [ "$DRY_RUN" -eq 0 ]; then
    systemctl daemon-reload
  fi
  cat <<EOF
$PROG: uninstalled ($CHANGED change(s)).
$PROG: drain the node before uninstalling: pods left on it keep their addresses, but the
  runtime can no longer delete their networks (no eni-cni, no manager).
$PROG: ENIs that this node's manager created are NOT released: they stay attached to the
  instance, tagged eni-net.io/cluster and eni-net.io/node (this instance); reinstalling
  adopts them again. Once detached (the instance terminated, or detached by hand), the
  manager of any other node of the cluster deletes them after gc.orphan_eni_grace_s
  (600 s by default); with no manager left in the cluster, delete them by those tags.
EOF
  exit 0
fi

# ---- install: validate everything first ----------------------------------------------------
[ "$PURGE" -eq 0 ] || die "--purge goes with --uninstall"
[ -n "$FROM" ] || [ -n "$TARBALL" ] || die "give the binaries with --from DIR or --tarball PATH (see --help)"
[ -z "$FROM" ] || [ -z "$TARBALL" ] || die "--from and --tarball exclude each other"
if [ -z "$ROOT" ] && [ "$DRY_RUN" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
  die "installing into / needs root (or --root DIR to install under a directory)"
fi

problems=()
SRC_DIR=""
if [ -n "$TARBALL" ]; then
  if [ ! -f "$TARBALL" ]; then
    problems+=("--tarball $TARBALL: no such file")
  else
    mkdir -p "$TMP/tarball"
    tar -xf "$TARBALL" -C "$TMP/tarball" || problems+=("--tarball $TARBALL: cannot be unpacked")
    SRC_DIR="$TMP/tarball"
  fi
else
  [ -d "$FROM" ] || problems+=("--from $FROM: no such directory")
  SRC_DIR="$FROM"
fi
declare -A BIN=()
if [ -n "$SRC_DIR" ] && [ -d "$SRC_DIR" ]; then
  for b in eni-manager eni-cni enictl; do
    found=""
    for cand in "$SRC_DIR/$b" "$SRC_DIR/bin/$b"; do
      if [ -f "$cand" ]; then found="$cand"; break; fi
    done
    if [ -z "$found" ] && [ -n "$TARBALL" ]; then
      found="$(find "$SRC_DIR" -maxdepth 4 -type f -name "$b" | head -n 1)"
    fi
    if [ -z "$found" ]; then
      problems+=("$b not found in ${TARBALL:-$FROM}")
    else
      BIN[$b]="$found"
    fi
  done
fi

config_flags="$PROVIDER$CLUSTER_ID$REGION$CREDENTIALS$METRICS_ADDRESS${SUBNETS[*]:-}${SECURITY_GROUPS[*]:-}"
id_re='^[A-Za-z0-9][A-Za-z0-9._:/-]*$'
if [ -n "$CONFIG_FILE" ]; then
  [ -z "$config_flags" ] || problems+=("--config excludes --provider, --cluster-id, --subnet, --region, --security-group, --credentials, --metrics-address")
  [ -f "$CONFIG_FILE" ] || problems+=("--config $CONFIG_FILE: no such file")
  cp "$CONFIG_FILE" "$TMP/config.yaml" 2>/dev/null || true
elif [ -n "$config_flags" ] || [ ! -e "$(r "$CONFIG")" ] || [ "$FORCE" -eq 1 ]; then
  case "$PROVIDER" in
    aliyun | aws) ;;
    "") problems+=("--provider is required (aliyun or aws) to write $CONFIG") ;;
    *) problems+=("--provider $PROVIDER: use aliyun or aws") ;;
  esac
  if [ -z "$CLUSTER_ID" ]; then
    problems+=("--cluster-id is required to write $CONFIG")
  elif ! [[ "$CLUSTER_ID" =~ $id_re ]] || [ "${#CLUSTER_ID}" -gt 128 ]; then
    problems+=("--cluster-id $CLUSTER_ID: letters, digits and . _ : / - only, at most 128")
  fi
  [ "${#SUBNETS[@]}" -gt 0 ] || problems+=("--subnet ZONE=ID[,ID...] is required (once per zone) to write $CONFIG")
  for s in "${SUBNETS[@]}"; do
    zone="${s%%=*}" ids="${s#*=}"
    if [ "$zone" = "$s" ] || [ -z "$zone" ] || [ -z "$ids" ]; then
      problems+=("--subnet $s: expected ZONE=ID[,ID...], like cn-hangzhou-h=vsw-aaa,vsw-bbb")
      continue
    fi
    for id in $zone ${ids//,/ }; do
      [[ "$id" =~ $id_re ]] || problems+=("--subnet $s: $id is not a zone or subnet id")
    done
  done
  for sg in "${SECURITY_GROUPS[@]}" "$REGION"; do
    [ -z "$sg" ] || [[ "$sg" =~ $id_re ]] || problems+=("$sg is not a valid id")
  done
  case "$CREDENTIALS" in
    "" | chain | env | file | ram_role) ;;
    *) problems+=("--credentials $CREDENTIALS: use chain, env, file or ram_role") ;;
  esac
  if [ "$PROVIDER" = aws ] && [ -n "$CREDENTIALS" ] && [ "$CREDENTIALS" != chain ]; then
    problems+=("--credentials is for Alibaba Cloud; AWS always uses its default chain")
  fi
  if [ -n "$METRICS_ADDRESS" ] && ! [[ "$METRICS_ADDRESS" =~ ^[0-9.]+:[0-9]+$ ]]; then
    problems+=("--metrics-address $METRICS_ADDRESS: expected IP:PORT, like 127.0.0.1:9410")
  fi
  {
    echo "# The eni-manager configuration (docs/configuration.md), written by deploy/bootstrap/install.sh."
    echo "cloud:"
    echo "  provider: $PROVIDER"
    [ -z "$REGION" ] || echo "  region: $REGION"
    [ -z "$CREDENTIALS" ] || echo "  credentials: $CREDENTIALS"
    echo "cluster:"
    echo "  id: \"$CLUSTER_ID\""
    echo "network:"
    echo "  subnets:"
    for s in "${SUBNETS[@]}"; do
      ids="${s#*=}"
      echo "    ${s%%=*}: [${ids//,/, }]"
    done
    if [ "${#SECURITY_GROUPS[@]}" -gt 0 ]; then
      echo "  security_groups: [$(IFS=,; echo "${SECURITY_GROUPS[*]}" | sed 's/,/, /g')]"
    fi
    echo "daemon:"
    echo "  socket: /run/eni-manager/eni-manager.sock"
    echo "  state_dir: $STATE_DIR"
    echo "  metrics_address: \"${METRICS_ADDRESS:-127.0.0.1:9410}\""
  } >"$TMP/config.yaml"
fi

if [ -n "$CONFLIST_FILE" ]; then
  [ -z "$CNI_MODE$CNI_VERSION" ] || problems+=("--conflist excludes --cni-mode and --cni-version")
  [ "$HOST_PORTS" -eq 0 ] || problems+=("--conflist excludes --host-ports (put \"portMappings\": true in eni-cni's capabilities in the file)")
  [ -f "$CONFLIST_FILE" ] || problems+=("--conflist $CONFLIST_FILE: no such file")
  cp "$CONFLIST_FILE" "$TMP/conflist" 2>/dev/null || true
else
  case "${CNI_MODE:-auto}" in auto | exclusive | ipvlan | veth) ;; *) problems+=("--cni-mode $CNI_MODE: use auto, exclusive, ipvlan or veth") ;; esac
  case "${CNI_VERSION:-1.0.0}" in 0.4.0 | 1.0.0 | 1.1.0) ;; *) problems+=("--cni-version $CNI_VERSION: use 0.4.0, 1.0.0 or 1.1.0") ;; esac
  CAPABILITIES='"exclusiveEni": true'
  [ "$HOST_PORTS" -eq 0 ] || CAPABILITIES="$CAPABILITIES, \"portMappings\": true"
  cat >"$TMP/conflist" <<EOF
{
  "cniVersion": "${CNI_VERSION:-1.0.0}",
  "name": "eni",
  "plugins": [
    {
      "type": "eni-cni",
      "socket": "/run/eni-manager/eni-manager.sock",
      "mode": "${CNI_MODE:-auto}",
      "log_file": "/var/log/eni-cni.log",
      "capabilities": {$CAPABILITIES}
    }
  ]
}
EOF
fi

if [ "${#problems[@]}" -gt 0 ]; then
  echo "$PROG: ${#problems[@]} problem(s), nothing was changed:" >&2
  printf '  - %s\n' "${problems[@]}" >&2
  exit 64
fi

# The manager checks the configuration it would run with (the file that will be in place).
if [ "$SKIP_CHECK" -eq 0 ]; then
  effective="$TMP/config.yaml"
  if [ -e "$(r "$CONFIG")" ] && [ "$FORCE" -eq 0 ]; then effective="$(r "$CONFIG")"; fi
  if [ -f "$effective" ]; then
    if ! out="$("${BIN[eni-manager]}" --config "$effective" --check-config 2>&1 >/dev/null)"; then
      echo "$PROG: the configuration is refused by eni-manager --check-config; nothing was changed:" >&2
      echo "$out" >&2
      exit 64
    fi
  fi
fi

# ---- install: act --------------------------------------------------------------------------
# The helper the unit runs after the manager starts: waits for /readyz, then writes the
# conflist atomically. Until then the runtime has no CNI configuration from us, so the
# kubelet keeps the node NotReady instead of scheduling pods whose ADD would fail.
cat >"$TMP/helper" <<'EOF'
#!/usr/bin/env bash
# Written by deploy/bootstrap/install.sh; run by eni-manager.service (ExecStartPost).
# Waits until eni-manager answers /readyz, then copies the conflist into /etc/cni/net.d.
set -euo pipefail
CONFIG=/etc/eni-manager/config.yaml
SOURCE=/etc/eni-manager/cni/10-eni-net.conflist
DEST_DIR=/etc/cni/net.d
DEST=$DEST_DIR/10-eni-net.conflist
TIMEOUT_S="${ENI_NET_READY_TIMEOUT_S:-240}"
addr="${ENI_MANAGER__DAEMON__METRICS_ADDRESS:-}"
if [ -z "$addr" ]; then
  addr="$(sed -n 's/^[[:space:]]*metrics_address:[[:space:]]*"\{0,1\}\([0-9.]*:[0-9]*\).*/\1/p' "$CONFIG" | head -n 1)"
fi
addr="${addr:-127.0.0.1:9410}"
port="${addr##*:}"
url="http://127.0.0.1:$port/readyz"
ready() {
  if command -v curl >/dev/null 2>&1; then
    curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null
  elif command -v wget >/dev/null 2>&1; then
    wget -q -O /dev/null -T 2 "$url" 2>/dev/null
  else
    # bash's /dev/tcp: send a request, look for a 200 status line.
    exec 3<>"/dev/tcp/127.0.0.1/$port" || return 1
    printf 'GET /readyz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
    local status
    IFS= read -r -t 2 status <&3 || status=""
    exec 3>&-
    [[ "$status" == *" 200 "* ]]
  fi
}
start=$SECONDS
until ready; do
  if [ $((SECONDS - start)) -ge "$TIMEOUT_S" ]; then
    echo "write-cni-config: eni-manager not ready at $url after ${TIMEOUT_S}s; not writing $DEST" >&2
    exit 1
  fi
  sleep 1
done
if [ -f "$DEST" ] && cmp -s "$SOURCE" "$DEST"; then
  echo "write-cni-config: eni-manager ready; $DEST already in place"
  exit 0
fi
mkdir -p "$DEST_DIR"
tmp="$DEST_DIR/.10-eni-net.conflist.tmp.$$"
cp "$SOURCE" "$tmp"
chmod 0644 "$tmp"
mv -f "$tmp" "$DEST"
echo "write-cni-config: eni-manager ready; wrote $DEST"
EOF

cat >"$TMP/unit" <<EOF
# Written by deploy/bootstrap/install.sh. See docs/install.md.
[Unit]
Description=eni-net node daemon: ENI address pool and the CNI's socket
Wants=network-online.target
After=network-online.target
Before=kubelet.service

[Service]
Type=exec
# Optional credentials (ALIBABA_CLOUD_* or AWS_*), and ENI_MANAGER__SECTION__FIELD overrides.
EnvironmentFile=-$ETC_DIR/environment
ExecStart=$BIN_DIR/eni-manager --config $CONFIG
# Readiness gate: the conflist is written only once /readyz answers, so the kubelet does not
# mark the node Ready before pods can get addresses. Start-up counts until it returns.
ExecStartPost=$HELPER
TimeoutStartSec=300
TimeoutStopSec=30
Restart=always
RestartSec=5
# 64: a configuration problem (named in the journal), which a restart cannot fix.
RestartPreventExitStatus=64
# /var/lib/eni-manager: the durable journal (kept when the service stops).
StateDirectory=eni-manager
StateDirectoryMode=0700
# /run/eni-manager: the CNI's socket.
RuntimeDirectory=eni-manager
RuntimeDirectoryMode=0755
RuntimeDirectoryPreserve=restart
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
EOF

before=$CHANGED
install_file "${BIN[eni-manager]}" "$BIN_DIR/eni-manager" 755
install_file "${BIN[enictl]}" "$BIN_DIR/enictl" 755
install_file "${BIN[eni-cni]}" "$CNI_BIN_DIR/eni-cni" 755
if [ -f "$TMP/config.yaml" ]; then
  install_once "$TMP/config.yaml" "$CONFIG" 644
else
  say "unchanged $CONFIG (kept as it is; --force with config options replaces it)"
fi
install_once "$TMP/conflist" "$CONFLIST_SRC" 644
install_file "$TMP/helper" "$HELPER" 755
install_file "$TMP/unit" "$UNIT" 644
# What `systemctl enable` does, done by hand so it also works under --root.
link="$(r "$WANTS_LINK")"
if [ "$(readlink "$link" 2>/dev/null)" != "$UNIT" ]; then
  CHANGED=$((CHANGED + 1))
  act mkdir -p "$(dirname "$link")"
  act ln -sfn "$UNIT" "$link"
  [ "$DRY_RUN" -eq 1 ] || say "enabled $UNIT_NAME ($WANTS_LINK)"
else
  say "unchanged $WANTS_LINK"
fi

if use_systemctl; then
  if [ "$CHANGED" -gt "$before" ]; then
    act systemctl daemon-reload
  fi
  if [ "$NO_START" -eq 1 ]; then
    say "--no-start: not starting $UNIT_NAME"
  elif [ "$CHANGED" -gt "$before" ] && systemctl is-active --quiet "$UNIT_NAME"; then
    # A new binary, configuration or unit: restart. Running pods keep their network; pods
    # created during the restart are retried by the runtime.
    act systemctl restart "$UNIT_NAME"
  else
    act systemctl start "$UNIT_NAME"
  fi
else
  say "--root given: not running systemctl; the unit starts at the next boot of that root"
fi

if [ "$DRY_RUN" -eq 1 ]; then
  say "dry run: $CHANGED change(s) would be made"
else
  say "done: $CHANGED change(s)"
fi
