#!/bin/sh
# The cni-config container: writes the conflist into the node's CNI directory only once the
# manager answers /readyz, so the runtime (and so the kubelet) reports the node's network
# ready only when a pod's ADD can be served. Then it stays, and puts the file back if it
# goes missing or differs from the chart's while the manager is ready. It never removes
# the file: a restarting manager must not flap the node NotReady (see the chart README).
set -eu
: "${READYZ_URL:?}" "${SOURCE:?}" "${HOST_CONF_DIR:?}" "${CONFLIST_NAME:?}"
RECHECK_SECONDS="${RECHECK_SECONDS:-10}"
dest="$HOST_CONF_DIR/$CONFLIST_NAME"
trap 'exit 0' TERM INT
ready() {
  if command -v curl >/dev/null 2>&1; then
    curl -fsS -o /dev/null --max-time 2 "$READYZ_URL" 2>/dev/null
  elif command -v wget >/dev/null 2>&1; then
    wget -q -O /dev/null -T 2 "$READYZ_URL" 2>/dev/null
  else
    echo "cni-config: the image has neither curl nor wget; cannot poll $READYZ_URL" >&2
    exit 1
  fi
}
in_place() {
  [ -f "$dest" ] && cmp -s "$SOURCE" "$dest"
}
write() {
  tmp="$HOST_CONF_DIR/.$CONFLIST_NAME.tmp.$$"
  cp "$SOURCE" "$tmp"
  chmod 0644 "$tmp"
  mv -f "$tmp" "$dest"
}
echo "cni-config: waiting for the manager ($READYZ_URL) before writing $dest"
waited=0
until ready; do
  sleep 2 & wait $!
  waited=$((waited + 2))
  if [ $((waited % 60)) -eq 0 ]; then
    echo "cni-config: the manager is not ready after ${waited}s; see the eni-manager container's log"
  fi
done
if in_place; then
  echo "cni-config: manager ready; $dest is already in place"
else
  write
  echo "cni-config: manager ready; wrote $dest"
fi
while :; do
  sleep "$RECHECK_SECONDS" & wait $!
  if ! in_place && ready; then
    write
    echo "cni-config: $dest was missing or changed; wrote it again"
  fi
done
