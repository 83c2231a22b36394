#!/bin/sh
# Harness self-test, run inside the VM with busybox sh: proves the VM kernel has ipvlan with
# nothing of ours involved. Two namespaces, each holding an ipvlan slave of one veth parent
# (in a third namespace), ping each other: first in mode l2, then in mode l3. Everything
# lives in namespaces created here, and is deleted at the end.
set -e
# busybox sh would run its own "ip" applet; we want iproute2's.
ip() { /sbin/ip "$@"; }
fail() { echo "selftest-ipvlan: FAIL: $*"; exit 1; }

for ns in ivst-par ivst-a ivst-b; do ip netns add "$ns"; done
cleanup() { for ns in ivst-par ivst-a ivst-b; do ip netns del "$ns" 2>/dev/null; done; }
trap cleanup EXIT

P="ip -n ivst-par"
$P link add par0 type veth peer name par1
$P link set par0 up
$P link set par1 up

for mode in l2 l3; do
  $P link add iva link par0 type ipvlan mode "$mode" || fail "ip link add type ipvlan mode $mode"
  $P link add ivb link par0 type ipvlan mode "$mode"
  $P link set iva netns ivst-a
  $P link set ivb netns ivst-b
  ip -n ivst-a addr add 10.99.0.1/24 dev iva
  ip -n ivst-b addr add 10.99.0.2/24 dev ivb
  ip -n ivst-a link set iva up
  ip -n ivst-b link set ivb up
  ip -n ivst-a -d link show iva | grep -q "ipvlan.*mode $mode" || fail "iva is not ipvlan $mode"
  ip netns exec ivst-a ping -c 2 -W 2 10.99.0.2 || fail "ping a->b over ipvlan $mode"
  ip netns exec ivst-b ping -c 1 -W 2 10.99.0.1 || fail "ping b->a over ipvlan $mode"
  echo "selftest-ipvlan: ipvlan $mode OK"
  ip -n ivst-a link del iva
  ip -n ivst-b link del ivb
done
echo "selftest-ipvlan: PASS"
