#!/bin/sh
# Init container: installs the eni-cni binary on the node, atomically (copy beside it,
# then rename), so a runtime that execs the plugin at that moment runs the old binary or
# the new one, never half of one. Optionally removes this chart's conflist, so the node
# stays NotReady until this pod's manager is ready (cni.removeConfigOnStart).
set -eu
: "${CNI_BINARY:?}" "${HOST_BIN_DIR:?}" "${HOST_CONF_DIR:?}" "${CONFLIST_NAME:?}"
if [ ! -x "$CNI_BINARY" ]; then
  echo "install-cni: $CNI_BINARY is not in the image (image.cniBinaryPath)" >&2
  exit 1
fi
tmp="$HOST_BIN_DIR/.eni-cni.tmp.$$"
cp "$CNI_BINARY" "$tmp"
chmod 0755 "$tmp"
mv -f "$tmp" "$HOST_BIN_DIR/eni-cni"
echo "install-cni: installed $HOST_BIN_DIR/eni-cni"
if [ "${REMOVE_CONFIG_ON_START:-false}" = "true" ] && [ -e "$HOST_CONF_DIR/$CONFLIST_NAME" ]; then
  rm -f "$HOST_CONF_DIR/$CONFLIST_NAME"
  echo "install-cni: removed $HOST_CONF_DIR/$CONFLIST_NAME until the manager is ready"
fi
