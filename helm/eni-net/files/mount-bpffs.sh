#!/bin/sh
# Init container (services.enabled): makes sure the node has a bpf filesystem at $BPFFS, so
# the manager's pinned maps and links live on the node, not in this pod, and outlive a
# restart or an upgrade of the manager. If the last mount at $BPFFS (in the mount table,
# /proc/mounts) is already a bpffs, nothing is done; else one is mounted there. The hostPath
# volume is mounted with Bidirectional propagation, so the new mount appears on the node and,
# through the manager's own mount, in the manager container.
set -eu
: "${BPFFS:?}"
mounts="${PROC_MOUNTS:-/proc/mounts}"
# The type of the mount that is visible at $BPFFS: the last one listed for that mount point.
fstype_at() {
  found=""
  while read -r _dev mnt fstype _rest; do
    if [ "$mnt" = "$BPFFS" ]; then
      found="$fstype"
    fi
  done <"$mounts"
  echo "$found"
}
current="$(fstype_at)"
if [ "$current" = "bpf" ]; then
  echo "mount-bpffs: $BPFFS is already a bpf filesystem"
  exit 0
fi
echo "mount-bpffs: $BPFFS is not a bpf filesystem (${current:-no mount of its own}); mounting one"
if ! mount -t bpf bpf "$BPFFS"; then
  echo "mount-bpffs: mount -t bpf bpf $BPFFS failed: the container must be privileged and the node's kernel needs CONFIG_BPF_SYSCALL" >&2
  exit 1
fi
current="$(fstype_at)"
if [ "$current" != "bpf" ]; then
  echo "mount-bpffs: mounted, but $mounts shows ${current:-nothing} at $BPFFS, not bpf" >&2
  exit 1
fi
echo "mount-bpffs: mounted a bpf filesystem at $BPFFS (shared with the node)"
