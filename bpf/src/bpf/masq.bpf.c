// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// Masquerade (source NAT) of pod traffic leaving the node, with ip-masq-agent semantics:
// a packet leaving through one of the node's uplinks whose source is not that link's own
// address, and whose destination is NOT in the non-masquerade list, leaves with the link's
// address as its source and a source port (TCP, UDP) or echo identifier (ICMP) allocated in
// [MASQ_PORT_MIN, MASQ_PORT_MAX]; replies are translated back to the pod. tc programs,
// attached with clsact (direct action) on the uplinks:
//
// masq4_egress: SNAT. Runs after nodeport.bpf.c's egress program (a higher tc priority
//   number), which ends the chain for the replies of Service flows it translates; those are
//   never masqueraded. Packets it leaves alone continue to the next filter (TC_ACT_UNSPEC).
// masq4_ingress: reverse translation of replies to masqueraded flows, before nodeport's
//   ingress program (a lower priority number). It also notes flows opened from outside
//   straight to a pod address (not the link's), so their replies are not masqueraded.
//
// State: masq4_ct (LRU) holds per flow a forward entry (the pod's tuple -> the translated
// address and port) and a reply entry (the reply's tuple as it arrives -> the pod's address
// and port), or one INBOUND entry for a flow opened from outside. masq4_nonmasq is an LPM
// trie of destinations never masqueraded (the loader writes ip-masq-agent's list, the VPC
// CIDR, and 169.254.0.0/16 unless masqLinkLocal). masq4_links: the uplinks and their
// addresses. masq4_stats: per-CPU counters (MASQ_STAT_*).
//
// Handled: TCP, UDP, ICMP echo request/reply, unfragmented. Other packets from pods to
// destinations outside the list (other protocols, fragments, ICMP errors) leave untranslated
// and are counted as MASQ_STAT_UNSUPPORTED.
//
// The map layouts are mirrored by `bpf/src/maps.rs` (#[repr(C)], explicit padding); change
// both together. Addresses, ports and identifiers are in network byte order.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "nat4.h"

#define NSEC_PER_SEC 1000000000ULL

#define MASQ_PORT_MIN 61000
#define MASQ_PORT_MAX 65535
#define MASQ_TRIES 16

#define CT_TIMEOUT_TCP_NS (21600ULL * NSEC_PER_SEC)
#define CT_TIMEOUT_UDP_NS (300ULL * NSEC_PER_SEC)
#define CT_TIMEOUT_ICMP_NS (30ULL * NSEC_PER_SEC)

/* masq4_ct value flags */
#define MASQ_F_FORWARD 1 /* pod -> outside: translate the source */
#define MASQ_F_REPLY 2	 /* outside -> node address: translate the destination back */
#define MASQ_F_INBOUND 4 /* opened from outside to a pod address: replies keep the pod's */

/* masq4_stats indices */
#define MASQ_STAT_NEW 0		/* flows given a translation */
#define MASQ_STAT_SNAT 1	/* packets translated at egress */
#define MASQ_STAT_REVERSE 2	/* replies translated back at ingress */
#define MASQ_STAT_EXEMPT 3	/* pod packets to a destination in the list (left alone) */
#define MASQ_STAT_NO_PORT 4	/* dropped: no free port for the destination */
#define MASQ_STAT_ERROR 5	/* dropped: the rewrite failed */
#define MASQ_STAT_UNSUPPORTED 6 /* pod packets to outside that cannot be translated */
#define MASQ_STAT_INBOUND 7	/* flows opened from outside to a pod address */
#define MASQ_STAT_MAX 8

/* <linux/icmp.h> pulls in libc headers; the echo header is all that is needed. */
#define ICMP_ECHOREPLY 0
#define ICMP_ECHO 8

struct icmp_echo {
	__u8 type;
	__u8 code;
	__u16 checksum;
	__u16 id;
	__u16 seq;
};

struct masq_link_key {
	__u32 ifindex;
};

struct masq_link_val {
	__u32 addr; /* the link's primary address: what pods are masqueraded to */
	__u32 flags;
};

struct masq_lpm_key {
	__u32 prefixlen;
	__u32 addr;
};

struct masq_ct_key {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 pad[3];
};

struct masq_ct_val {
	__u32 addr; /* forward: the new source; reply: the pod (new destination) */
	__u16 port; /* forward: the new source port; reply: the pod's port */
	__u8 flags;
	__u8 pad;
	__u64 last_seen_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct masq_link_key);
	__type(value, struct masq_link_val);
} masq4_links SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct masq_lpm_key);
	__type(value, __u32);
} masq4_nonmasq SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct masq_ct_key);
	__type(value, struct masq_ct_val);
} masq4_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MASQ_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} masq4_stats SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&masq4_stats, &idx);
	if (v)
		*v += 1; /* per-CPU: no other writer */
}

#define PARSE_OK 0
#define PARSE_NOT_IPV4 1
#define PARSE_UNSUPPORTED 2 /* IPv4, but nothing this program can translate */

struct pkt {
	__u32 saddr;
	__u32 daddr;
	__u16 sport; /* ICMP echo request: the identifier; reply: 0 */
	__u16 dport; /* ICMP echo request: 0; reply: the identifier */
	__u32 sport_off; /* offset of the field carrying sport; 0: none */
	__u32 dport_off;
	__u32 l4_csum_off;
	__u8 proto;
	__u8 tcp_flags;
	__u8 icmp_type;
};

#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10

static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return PARSE_NOT_IPV4;
	struct iphdr ip;
	if (bpf_skb_load_bytes(skb, NAT4_IP_OFF, &ip, sizeof(ip)))
		return PARSE_NOT_IPV4;
	if (ip.version != 4 || ip.ihl < 5)
		return PARSE_NOT_IPV4;
	p->saddr = ip.saddr;
	p->daddr = ip.daddr;
	p->proto = ip.protocol;
	if (ip.frag_off & bpf_htons(0x3fff))
		return PARSE_UNSUPPORTED; /* fragments do not all carry the ports */
	__u32 l4 = NAT4_IP_OFF + ip.ihl * 4;
	if (ip.protocol == IPPROTO_TCP || ip.protocol == IPPROTO_UDP) {
		__u16 ports[2];
		if (bpf_skb_load_bytes(skb, l4, ports, sizeof(ports)))
			return PARSE_UNSUPPORTED;
		p->sport = ports[0];
		p->dport = ports[1];
		p->sport_off = l4;
		p->dport_off = l4 + 2;
		if (ip.protocol == IPPROTO_TCP) {
			p->l4_csum_off = l4 + offsetof(struct tcphdr, check);
			if (bpf_skb_load_bytes(skb, l4 + 13, &p->tcp_flags, 1))
				return PARSE_UNSUPPORTED;
		} else {
			p->l4_csum_off = l4 + offsetof(struct udphdr, check);
		}
		return PARSE_OK;
	}
	if (ip.protocol == IPPROTO_ICMP) {
		struct icmp_echo ic;
		if (bpf_skb_load_bytes(skb, l4, &ic, sizeof(ic)))
			return PARSE_UNSUPPORTED;
		p->icmp_type = ic.type;
		p->l4_csum_off = l4 + offsetof(struct icmp_echo, checksum);
		__u32 id_off = l4 + offsetof(struct icmp_echo, id);
		if (ic.type == ICMP_ECHO) {
			p->sport = ic.id;
			p->sport_off = id_off;
		} else if (ic.type == ICMP_ECHOREPLY) {
			p->dport = ic.id;
			p->dport_off = id_off;
		} else {
			return PARSE_UNSUPPORTED;
		}
		return PARSE_OK;
	}
	return PARSE_UNSUPPORTED;
}

/* The L4 checksum offset to fix on an address change: none for ICMP (no pseudo header). */
static __always_inline __u32 pseudo_csum_off(const struct pkt *p)
{
	return p->proto == IPPROTO_ICMP ? 0 : p->l4_csum_off;
}

static __always_inline __u64 timeout_ns(__u8 proto)
{
	if (proto == IPPROTO_TCP)
		return CT_TIMEOUT_TCP_NS;
	if (proto == IPPROTO_UDP)
		return CT_TIMEOUT_UDP_NS;
	return CT_TIMEOUT_ICMP_NS;
}

static __always_inline int expired(const struct masq_ct_val *v, __u8 proto, __u64 now)
{
	return now - v->last_seen_ns > timeout_ns(proto);
}

static __always_inline int in_list(__u32 addr)
{
	struct masq_lpm_key k = { .prefixlen = 32, .addr = addr };
	return bpf_map_lookup_elem(&masq4_nonmasq, &k) != NULL;
}

/* The tuple a reply to `p`, translated to `addr`:`port`, arrives with. */
static __always_inline void reply_key(struct masq_ct_key *rk, const struct pkt *p, __u32 addr,
				      __u16 port)
{
	rk->saddr = p->daddr;
	rk->daddr = addr;
	rk->sport = p->dport;
	rk->dport = port;
	rk->proto = p->proto;
}

/* Picks a free port for the flow and records both entries. Returns 0 or -1 (none free). */
static __always_inline int allocate(const struct pkt *p, const struct masq_ct_key *fk,
				    __u32 node_ip, __u16 *port_out, __u64 now)
{
	struct masq_ct_key rk = {};
	struct masq_ct_val rv = {
		.addr = p->saddr,
		.port = p->sport,
		.flags = MASQ_F_REPLY,
		.last_seen_ns = now,
	};
	for (int t = 0; t < MASQ_TRIES; t++) {
		__u16 port = MASQ_PORT_MIN +
			     bpf_get_prandom_u32() % (MASQ_PORT_MAX - MASQ_PORT_MIN + 1);
		reply_key(&rk, p, node_ip, bpf_htons(port));
		if (bpf_map_update_elem(&masq4_ct, &rk, &rv, BPF_NOEXIST) == 0) {
			struct masq_ct_val fv = {
				.addr = node_ip,
				.port = rk.dport,
				.flags = MASQ_F_FORWARD,
				.last_seen_ns = now,
			};
			if (bpf_map_update_elem(&masq4_ct, fk, &fv, BPF_ANY)) {
				bpf_map_delete_elem(&masq4_ct, &rk);
				return -1;
			}
			*port_out = rk.dport;
			return 0;
		}
	}
	return -1;
}

SEC("classifier")
int masq4_egress(struct __sk_buff *skb)
{
	struct masq_link_key lk = { .ifindex = skb->ifindex };
	struct masq_link_val *lv = bpf_map_lookup_elem(&masq4_links, &lk);
	if (!lv || !lv->addr)
		return TC_ACT_UNSPEC;
	__u32 node_ip = lv->addr;

	struct pkt p = {};
	int rc = parse(skb, &p);
	if (rc == PARSE_NOT_IPV4 || p.saddr == node_ip)
		return TC_ACT_UNSPEC;
	if (in_list(p.daddr)) {
		count(MASQ_STAT_EXEMPT);
		return TC_ACT_UNSPEC;
	}
	if (rc != PARSE_OK) {
		count(MASQ_STAT_UNSUPPORTED);
		return TC_ACT_UNSPEC;
	}

	struct masq_ct_key fk = {
		.saddr = p.saddr,
		.daddr = p.daddr,
		.sport = p.sport,
		.dport = p.dport,
		.proto = p.proto,
	};
	__u64 now = bpf_ktime_get_ns();
	__u16 port = 0;
	struct masq_ct_val *fv = bpf_map_lookup_elem(&masq4_ct, &fk);
	if (fv && !expired(fv, p.proto, now)) {
		if (fv->flags & MASQ_F_INBOUND) {
			if (now - fv->last_seen_ns > NSEC_PER_SEC)
				fv->last_seen_ns = now;
			return TC_ACT_UNSPEC; /* a reply to a flow opened from outside */
		}
	}
	if (fv && (fv->flags & MASQ_F_FORWARD) && fv->addr == node_ip &&
	    !expired(fv, p.proto, now)) {
		port = fv->port;
		if (now - fv->last_seen_ns > NSEC_PER_SEC) {
			fv->last_seen_ns = now;
			/* Keep (or put back, after an LRU eviction) the reply entry. */
			struct masq_ct_key rk = {};
			reply_key(&rk, &p, node_ip, port);
			struct masq_ct_val rv = {
				.addr = p.saddr,
				.port = p.sport,
				.flags = MASQ_F_REPLY,
				.last_seen_ns = now,
			};
			bpf_map_update_elem(&masq4_ct, &rk, &rv, BPF_ANY);
		}
	} else {
		if (fv && (fv->flags & MASQ_F_FORWARD)) {
			/* Idle too long, or the link's address changed: drop the old reply entry. */
			struct masq_ct_key old = {};
			reply_key(&old, &p, fv->addr, fv->port);
			bpf_map_delete_elem(&masq4_ct, &old);
		}
		if (allocate(&p, &fk, node_ip, &port, now)) {
			count(MASQ_STAT_NO_PORT);
			return TC_ACT_SHOT;
		}
		count(MASQ_STAT_NEW);
	}

	if (nat4_set_addr(skb, NAT4_IP_SRC_OFF, p.saddr, node_ip, pseudo_csum_off(&p), p.proto) ||
	    (p.sport_off &&
	     nat4_set_port(skb, p.sport_off, p.sport, port, p.l4_csum_off, p.proto))) {
		count(MASQ_STAT_ERROR);
		return TC_ACT_SHOT;
	}
	count(MASQ_STAT_SNAT);
	return TC_ACT_OK;
}

SEC("classifier")
int masq4_ingress(struct __sk_buff *skb)
{
	struct masq_link_key lk = { .ifindex = skb->ifindex };
	struct masq_link_val *lv = bpf_map_lookup_elem(&masq4_links, &lk);
	if (!lv || !lv->addr)
		return TC_ACT_UNSPEC;
	__u32 node_ip = lv->addr;

	struct pkt p = {};
	if (parse(skb, &p) != PARSE_OK)
		return TC_ACT_UNSPEC;
	__u64 now = bpf_ktime_get_ns();

	if (p.daddr != node_ip) {
		/*
		 * To some other address (a pod's, routed through the node): note a new flow
		 * from outside the list so the pod's replies keep their source.
		 */
		int opens = (p.proto == IPPROTO_TCP && (p.tcp_flags & TCP_FLAG_SYN) &&
			     !(p.tcp_flags & TCP_FLAG_ACK)) ||
			    p.proto == IPPROTO_UDP ||
			    (p.proto == IPPROTO_ICMP && p.icmp_type == ICMP_ECHO);
		if (!opens || in_list(p.saddr))
			return TC_ACT_UNSPEC;
		/* The tuple the pod's replies leave with. */
		struct masq_ct_key rk = {
			.saddr = p.daddr,
			.daddr = p.saddr,
			.sport = p.dport,
			.dport = p.sport,
			.proto = p.proto,
		};
		struct masq_ct_val *old = bpf_map_lookup_elem(&masq4_ct, &rk);
		if (old && (old->flags & MASQ_F_INBOUND)) {
			if (now - old->last_seen_ns > NSEC_PER_SEC)
				old->last_seen_ns = now;
			return TC_ACT_UNSPEC;
		}
		if (old && !expired(old, p.proto, now))
			return TC_ACT_UNSPEC; /* the pod's own masqueraded flow owns that tuple */
		struct masq_ct_val iv = { .flags = MASQ_F_INBOUND, .last_seen_ns = now };
		bpf_map_update_elem(&masq4_ct, &rk, &iv, BPF_ANY);
		count(MASQ_STAT_INBOUND);
		return TC_ACT_UNSPEC;
	}

	struct masq_ct_key k = {
		.saddr = p.saddr,
		.daddr = p.daddr,
		.sport = p.sport,
		.dport = p.dport,
		.proto = p.proto,
	};
	struct masq_ct_val *rv = bpf_map_lookup_elem(&masq4_ct, &k);
	if (!rv || !(rv->flags & MASQ_F_REPLY) || expired(rv, p.proto, now))
		return TC_ACT_UNSPEC; /* the node's own traffic, or NodePort's */
	if (now - rv->last_seen_ns > NSEC_PER_SEC)
		rv->last_seen_ns = now;
	__u32 pod_ip = rv->addr;
	__u16 pod_port = rv->port;
	if (nat4_set_addr(skb, NAT4_IP_DST_OFF, p.daddr, pod_ip, pseudo_csum_off(&p), p.proto) ||
	    (p.dport_off &&
	     nat4_set_port(skb, p.dport_off, p.dport, pod_port, p.l4_csum_off, p.proto))) {
		count(MASQ_STAT_ERROR);
		return TC_ACT_SHOT;
	}
	count(MASQ_STAT_REVERSE);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
