#!/bin/sh
# /init of the test VM (busybox sh). Packed by run-in-vm.sh; reads /etc/modules.order,
# /etc/tests ("NAME COMMAND [ARGS...]" per line), /etc/harness.conf and /etc/test-env.
# Every line the host parses starts with "@@VM". iproute2 is called as /sbin/ip: busybox sh
# runs its own applet for a bare "ip" (programs that search PATH, such as Rust's
# Command::new("ip"), do find /sbin/ip first).
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
export HOME=/root TMPDIR=/tmp RUST_BACKTRACE=1

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/null >/dev/console 2>&1
mkdir -p /dev/pts /dev/shm /sys/fs/bpf /sys/fs/cgroup /run/netns /root /tmp
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
echo /sbin/modprobe > /proc/sys/kernel/modprobe 2>/dev/null

echo   # the firmware leaves escape codes on the console's current line
echo "@@VMINFO kernel=$(uname -r) cpus=$(nproc) mem_kb=$(sed -n 's/^MemTotal: *\([0-9]*\).*/\1/p' /proc/meminfo)"
while read -r ko params; do
  [ -n "$ko" ] || continue
  if ! out=$(insmod "$ko" $params 2>&1); then
    case "$out" in
      *"File exists"*) ;;
      *) echo "@@VMINFO insmod-failed $ko: $out" ;;
    esac
  fi
done < /etc/modules.order
echo "@@VMINFO modules=$(cut -d' ' -f1 /proc/modules | sort | tr '\n' ' ')"

/sbin/ip link set lo up
# The only NIC is eth0 on an isolated qemu hub: list links to show there is nothing else.
echo "@@VMINFO links=$(/sbin/ip -o link show | sed 's/^[0-9]*: \([^:@]*\).*/\1/' | tr '\n' ' ')"

VMTEST_TIMEOUT=0
[ -f /etc/harness.conf ] && . /etc/harness.conf
[ -f /etc/test-env ] && . /etc/test-env

while read -r name cmd; do
  [ -n "$name" ] || continue
  echo "@@VMTEST-BEGIN name=$name@@"
  t0=$(cut -d' ' -f1 /proc/uptime)
  if [ "$VMTEST_TIMEOUT" -gt 0 ]; then
    ( cd /tmp && exec timeout -s KILL "$VMTEST_TIMEOUT" $cmd ) </dev/null
  else
    ( cd /tmp && exec $cmd ) </dev/null
  fi
  rc=$?
  t1=$(cut -d' ' -f1 /proc/uptime)
  # Leftovers from one test must not leak into the next one.
  for ns in $(ls /run/netns 2>/dev/null); do
    echo "@@VMINFO test $name left netns $ns behind; deleting"
    /sbin/ip netns del "$ns" 2>/dev/null
  done
  echo "@@VMTEST name=$name exit=$rc@@ start=$t0 end=$t1"
done < /etc/tests

echo "@@VMTEST-DONE uptime=$(cut -d' ' -f1 /proc/uptime)@@"
sync
poweroff -f
# Not reached; if it were, init exiting panics the kernel and panic=-1 + -no-reboot stop qemu.
sleep 5
