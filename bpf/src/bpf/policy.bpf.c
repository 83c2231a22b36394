// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// NetworkPolicy (IPv4) and anti-spoofing for one pod, at tc on the pod's link.
//
// pol_to_pod  : packets going to the pod (the pod's ingress).
// pol_from_pod: packets coming from the pod (the pod's egress).
// On the host side of a veth, pol_from_pod is attached at tc ingress and pol_to_pod at tc
// egress; on a link inside the pod (ipvlan, exclusive ENI) the other way round.
//
// The loader sets POD_IP (network byte order) per attachment, so one program instance
// serves one pod. A packet is decided by:
//   1. the pod's entry in pol_pods (no entry: everything dropped, the pod is closed);
//   2. anti-spoofing: from the pod only with its own source address, to it only with its
//      own destination address;
//   3. conntrack (pol_ct, LRU): a packet of a known flow passes in both directions, after
//      the flow is re-checked against the current rules whenever the pod's rules changed
//      (rev), so a changed policy cuts what it no longer allows and keeps the rest;
//   4. otherwise the rules: an LPM lookup of (pod, direction, active slot, peer address)
//      in pol_rules, then a scan of the entry's port ranges.
// Per-pod counters in pol_stats. ARP passes; IPv6 passes only where the direction is open.
//
// The map layouts are mirrored by `bpf/src/maps.rs` (#[repr(C)], explicit padding);
// change both together. Addresses are in network byte order, ports in host byte order.

#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define DIR_INGRESS 0
#define DIR_EGRESS 1

#define POD_F_INGRESS 1 /* ingress is isolated: only the rules allow */
#define POD_F_EGRESS 2  /* egress is isolated */

#define MAX_PORT_RANGES 16
#define RULE_PREFIX_BASE 64 /* bits of pod_ip + dir + slot + pad before the peer */

#define NSEC_PER_SEC 1000000000ULL
#define CT_TCP_TIMEOUT (21600ULL * NSEC_PER_SEC)
#define CT_TCP_CLOSING_TIMEOUT (10ULL * NSEC_PER_SEC)
#define CT_UDP_TIMEOUT (60ULL * NSEC_PER_SEC)
#define CT_OTHER_TIMEOUT (30ULL * NSEC_PER_SEC)

#define IP_OFFSET_MASK 0x1fff
#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

struct pol_pod_val {
	__u32 rev;   /* changes on every rules write: flows are re-checked */
	__u8 slot;   /* active rules slot, 0 or 1 */
	__u8 flags;  /* POD_F_* */
	__u16 pad;
};

struct pol_rule_key {
	__u32 prefixlen; /* RULE_PREFIX_BASE + CIDR length */
	__u32 pod_ip;
	__u8 dir;
	__u8 slot;
	__u16 pad;
	__u32 peer;
};

struct pol_port_range {
	__u16 start;
	__u16 end;
	__u8 proto;
	__u8 pad[3];
};

struct pol_rule_val {
	__u8 any;   /* every protocol and port */
	__u8 count; /* ranges[0, count) are used */
	__u16 pad;
	struct pol_port_range ranges[MAX_PORT_RANGES];
};

struct pol_ct_key {
	__u32 pod_ip;
	__u32 peer_ip;
	__u16 pod_port;
	__u16 peer_port;
	__u8 proto;
	__u8 pad[3];
};

struct pol_ct_val {
	__u64 last_seen_ns;
	__u32 rev;     /* pol_pod_val.rev when the flow was last checked */
	__u8 origin;   /* DIR_* of the flow's first packet */
	__u8 closing;  /* TCP FIN or RST seen */
	__u16 pad;
};

struct pol_stats {
	__u64 new_ingress;     /* flows to the pod allowed */
	__u64 new_egress;      /* flows from the pod allowed */
	__u64 drop_ingress;    /* packets to the pod denied by policy */
	__u64 drop_egress;     /* packets from the pod denied by policy */
	__u64 drop_spoofed;    /* wrong source (from) or destination (to) address */
	__u64 drop_other;      /* malformed, or IPv6 where the direction is isolated */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct pol_pod_val);
} pol_pods SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct pol_rule_key);
	__type(value, struct pol_rule_val);
} pol_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 131072);
	__type(key, struct pol_ct_key);
	__type(value, struct pol_ct_val);
} pol_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct pol_stats);
} pol_stats SEC(".maps");

/* Set by the loader for each attachment. */
const volatile __u32 POD_IP = 0;

static __always_inline void count(__u64 *field)
{
	__sync_fetch_and_add(field, 1);
}

static __always_inline int rules_allow(const struct pol_pod_val *pod, __u32 pod_ip, __u8 dir, __u32 peer,
				       __u8 proto, __u16 port)
{
	__u8 flag = dir == DIR_INGRESS ? POD_F_INGRESS : POD_F_EGRESS;
	if (!(pod->flags & flag))
		return 1;
	struct pol_rule_key key = {
		.prefixlen = RULE_PREFIX_BASE + 32,
		.pod_ip = pod_ip,
		.dir = dir,
		.slot = pod->slot,
		.peer = peer,
	};
	struct pol_rule_val *v = bpf_map_lookup_elem(&pol_rules, &key);
	if (!v)
		return 0;
	if (v->any)
		return 1;
	__u8 n = v->count;
	for (int i = 0; i < MAX_PORT_RANGES; i++) {
		if (i >= n)
			break;
		struct pol_port_range *r = &v->ranges[i];
		if (r->proto == proto && port >= r->start && port <= r->end)
			return 1;
	}
	return 0;
}

static __always_inline __u64 ct_timeout(__u8 proto, __u8 closing)
{
	if (proto == IPPROTO_TCP)
		return closing ? CT_TCP_CLOSING_TIMEOUT : CT_TCP_TIMEOUT;
	if (proto == IPPROTO_UDP)
		return CT_UDP_TIMEOUT;
	return CT_OTHER_TIMEOUT;
}

static __always_inline int handle(struct __sk_buff *skb, __u8 dir)
{
	struct pol_pod_val pod;
	__u32 pod_ip = POD_IP;
	struct pol_pod_val *pp = bpf_map_lookup_elem(&pol_pods, &pod_ip);
	struct pol_stats *st = bpf_map_lookup_elem(&pol_stats, &pod_ip);

	if (skb->protocol == bpf_htons(ETH_P_ARP))
		return TC_ACT_UNSPEC;
	if (!pp)
		return TC_ACT_SHOT; /* rules not written yet, or the pod is gone: closed */
	pod = *pp;

	if (skb->protocol != bpf_htons(ETH_P_IP)) {
		__u8 flag = dir == DIR_INGRESS ? POD_F_INGRESS : POD_F_EGRESS;
		if (!(pod.flags & flag))
			return TC_ACT_UNSPEC;
		if (st)
			count(&st->drop_other);
		return TC_ACT_SHOT;
	}

	struct iphdr ip;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0 || ip.version != 4 ||
	    ip.ihl < 5) {
		if (st)
			count(&st->drop_other);
		return TC_ACT_SHOT;
	}

	/* Anti-spoofing. */
	if ((dir == DIR_EGRESS && ip.saddr != pod_ip) ||
	    (dir == DIR_INGRESS && ip.daddr != pod_ip)) {
		if (st)
			count(&st->drop_spoofed);
		return TC_ACT_SHOT;
	}

	__u16 sport = 0, dport = 0;
	__u8 tcp_flags = 0;
	__u32 l4 = ETH_HLEN + ip.ihl * 4;
	int first_fragment = (bpf_ntohs(ip.frag_off) & IP_OFFSET_MASK) == 0;
	if (first_fragment && (ip.protocol == IPPROTO_TCP || ip.protocol == IPPROTO_UDP ||
			       ip.protocol == IPPROTO_SCTP)) {
		__u16 ports[2];
		if (bpf_skb_load_bytes(skb, l4, ports, sizeof(ports)) < 0) {
			if (st)
				count(&st->drop_other);
			return TC_ACT_SHOT;
		}
		sport = bpf_ntohs(ports[0]);
		dport = bpf_ntohs(ports[1]);
		if (ip.protocol == IPPROTO_TCP &&
		    bpf_skb_load_bytes(skb, l4 + 13, &tcp_flags, 1) < 0)
			tcp_flags = 0;
	}

	__u32 peer = dir == DIR_EGRESS ? ip.daddr : ip.saddr;
	struct pol_ct_key ck = {
		.pod_ip = pod_ip,
		.peer_ip = peer,
		.pod_port = dir == DIR_EGRESS ? sport : dport,
		.peer_port = dir == DIR_EGRESS ? dport : sport,
		.proto = ip.protocol,
	};
	__u8 closing = (tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST)) != 0;
	__u64 now = bpf_ktime_get_ns();

	/* A bare SYN never belongs to a flow the other side started: it is checked as new. */
	int syn = ck.proto == IPPROTO_TCP &&
		  (tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
	struct pol_ct_val *ct = bpf_map_lookup_elem(&pol_ct, &ck);
	if (ct && now - ct->last_seen_ns < ct_timeout(ck.proto, ct->closing) &&
	    !(syn && ct->origin != dir)) {
		if (ct->rev != pod.rev) {
			/* The rules changed: is the flow still allowed where it started? */
			__u8 origin = ct->origin;
			__u16 port = origin == DIR_INGRESS ? ck.pod_port : ck.peer_port;
			if (!rules_allow(&pod, pod_ip, origin, peer, ck.proto, port)) {
				bpf_map_delete_elem(&pol_ct, &ck);
				if (st)
					count(dir == DIR_INGRESS ? &st->drop_ingress
								 : &st->drop_egress);
				return TC_ACT_SHOT;
			}
			ct->rev = pod.rev;
		}
		ct->last_seen_ns = now;
		if (closing)
			ct->closing = 1;
		return TC_ACT_UNSPEC;
	}

	/* A new flow (or one whose entry timed out), started by this packet. */
	__u16 port = dir == DIR_INGRESS ? ck.pod_port : ck.peer_port;
	if (!rules_allow(&pod, pod_ip, dir, peer, ck.proto, port)) {
		if (ct)
			bpf_map_delete_elem(&pol_ct, &ck);
		if (st)
			count(dir == DIR_INGRESS ? &st->drop_ingress : &st->drop_egress);
		return TC_ACT_SHOT;
	}
	/*
	 * Only a packet that can start a flow creates an entry: any UDP/other packet, but for
	 * TCP only a SYN. A mid-stream TCP packet without an entry (a flow cut by a policy
	 * change, or evicted) passes if the rules allow it in its own direction and records
	 * nothing: otherwise an ACK from the pod's open side would re-open, as a "reply", the
	 * direction the policy just cut.
	 */
	if (ck.proto == IPPROTO_TCP && !syn)
		return TC_ACT_UNSPEC;
	struct pol_ct_val nv = {
		.last_seen_ns = now,
		.rev = pod.rev,
		.origin = dir,
		.closing = closing,
	};
	bpf_map_update_elem(&pol_ct, &ck, &nv, BPF_ANY);
	if (st)
		count(dir == DIR_INGRESS ? &st->new_ingress : &st->new_egress);
	return TC_ACT_UNSPEC;
}

SEC("classifier")
int pol_to_pod(struct __sk_buff *skb)
{
	return handle(skb, DIR_INGRESS);
}

SEC("classifier")
int pol_from_pod(struct __sk_buff *skb)
{
	return handle(skb, DIR_EGRESS);
}

char _license[] SEC("license") = "Dual BSD/GPL";
