// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// Per-packet Service load balancing (IPv4) for traffic a socket hook cannot see: NodePort,
// externalIPs and LoadBalancer ingress IPs arriving on the node's links. tc programs,
// attached with clsact (direct action) on the node's links:
//
// np4_ingress: a packet to a frontend listed in np4_frontends is DNATed to a backend picked
//   from the socket LB's own lb4_services/lb4_backends (the same tables, the same slots).
//   - the backend is reached through a node link (another node): externalTrafficPolicy
//     Cluster SNATs the client to that link's node address (np4_links) and a port from
//     [SNAT_PORT_MIN, SNAT_PORT_MAX]; the packet is forwarded with bpf_fib_lookup +
//     bpf_redirect (the stack would drop it: its source is now a local address);
//   - the backend is behind this node (a pod link, or the node itself): DNAT only, the
//     packet goes back to the stack, which routes it; the reply passes a node link's egress
//     on its way back to the client and np4_egress restores the frontend as its source;
//   - externalTrafficPolicy Local: only backends behind this node are picked (never SNAT);
//     with none the packet is dropped.
//   Replies of SNATed flows arrive here too and are translated back and redirected.
// np4_egress: source of replies from backends behind this node -> the frontend. Other
//   packets continue to the next filter (TC_ACT_UNSPEC): masq.bpf.c's egress program is
//   attached after this one on a shared link and must see them, but not these replies.
//
// Address/port rewriting with checksum fixes comes from nat4.h (shared with masq.bpf.c).
//
// State: np4_ct (LRU) holds one forward entry (client -> frontend, how to translate) and
// one reply entry (backend -> client or node, how to translate back) per flow.
//
// The map layouts are mirrored by `bpf/src/maps.rs` (#[repr(C)], explicit padding);
// change both together. lb4_services and lb4_backends (and their types) come from
// lb4_tables.h, shared with socket_lb.bpf.c: both objects use the same pinned maps.
// Addresses and ports are in network byte order.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "lb4_tables.h"
#include "nat4.h"

#define AF_INET 2


#define NSEC_PER_SEC 1000000000ULL

/* np4_frontends value flags */
#define FE_F_LOCAL 1 /* externalTrafficPolicy: Local */

/* np4_ct value flags */
#define CT_F_FORWARD 1 /* client -> frontend */
#define CT_F_REPLY 2   /* backend -> client (or node) */
#define CT_F_SNAT 4    /* the client was SNATed to a node address */

#define SNAT_PORT_MIN 61000
#define SNAT_PORT_MAX 65535
#define SNAT_TRIES 16
#define LOCAL_SCAN 32 /* backends looked at to find one behind this node */

#define CT_TIMEOUT_TCP_NS (21600ULL * NSEC_PER_SEC)
#define CT_TIMEOUT_UDP_NS (300ULL * NSEC_PER_SEC)

#define IP_OFF ETH_HLEN
#define IP_CSUM_OFF (ETH_HLEN + offsetof(struct iphdr, check))
#define IP_TTL_OFF (ETH_HLEN + offsetof(struct iphdr, ttl))

#ifndef offsetof
#define offsetof(t, m) __builtin_offsetof(t, m)
#endif

struct fe_val {
	__u32 flags;
};

struct link_key {
	__u32 ifindex;
};

struct link_val {
	__u32 node_ip;
	__u32 flags;
};

struct ct_key {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 pad[3];
};

struct ct_val {
	__u32 saddr; /* the packet's new addresses and ports */
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 flags;
	__u8 pad[3];
	__u32 svc_id; /* forward entries: where the backend was picked from */
	__u32 slot;
	__u64 last_seen_ns;
};

struct np_aff_key {
	__u32 client_ip;
	__u32 svc_id;
};

struct np_aff_val {
	__u64 last_used_ns;
	__u32 ip;
	__u16 port;
	__u16 slot;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct svc_key);
	__type(value, struct fe_val);
} np4_frontends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct link_key);
	__type(value, struct link_val);
} np4_links SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct ct_key);
	__type(value, struct ct_val);
} np4_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct np_aff_key);
	__type(value, struct np_aff_val);
} np4_affinity SEC(".maps");

/* What one packet is, after parsing. */
struct pkt {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 tcp_flags; /* byte 13 of the TCP header */
	__u16 tot_len;
	__u32 l4_off;
	__u32 l4_csum_off;
};

#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10

/* Returns 0 on success; non-zero: not an IPv4 TCP/UDP first fragment we handle. */
static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return -1;
	struct iphdr ip;
	if (bpf_skb_load_bytes(skb, IP_OFF, &ip, sizeof(ip)))
		return -1;
	if (ip.version != 4 || ip.ihl < 5)
		return -1;
	/* Fragments: only unfragmented packets carry both ports. */
	if (ip.frag_off & bpf_htons(0x3fff))
		return -1;
	p->proto = ip.protocol;
	p->saddr = ip.saddr;
	p->daddr = ip.daddr;
	p->tot_len = bpf_ntohs(ip.tot_len);
	p->l4_off = IP_OFF + ip.ihl * 4;
	__u16 ports[2];
	if (bpf_skb_load_bytes(skb, p->l4_off, ports, sizeof(ports)))
		return -1;
	p->sport = ports[0];
	p->dport = ports[1];
	p->tcp_flags = 0;
	if (ip.protocol == IPPROTO_TCP) {
		p->l4_csum_off = p->l4_off + offsetof(struct tcphdr, check);
		if (bpf_skb_load_bytes(skb, p->l4_off + 13, &p->tcp_flags, 1))
			return -1;
	} else if (ip.protocol == IPPROTO_UDP) {
		p->l4_csum_off = p->l4_off + offsetof(struct udphdr, check);
	} else {
		return -1;
	}
	return 0;
}

/* Rewrites the addresses and ports of the packet, fixing both checksums (nat4.h). */
static __always_inline int rewrite(struct __sk_buff *skb, const struct pkt *p, __u32 saddr,
				   __u32 daddr, __u16 sport, __u16 dport)
{
	if (nat4_set_addr(skb, NAT4_IP_SRC_OFF, p->saddr, saddr, p->l4_csum_off, p->proto) ||
	    nat4_set_addr(skb, NAT4_IP_DST_OFF, p->daddr, daddr, p->l4_csum_off, p->proto) ||
	    nat4_set_port(skb, p->l4_off, p->sport, sport, p->l4_csum_off, p->proto) ||
	    nat4_set_port(skb, p->l4_off + 2, p->dport, dport, p->l4_csum_off, p->proto))
		return -1;
	return 0;
}

/*
 * Route lookup for a packet from `saddr` to `daddr` entering on `ifindex`. Returns the
 * bpf_fib_lookup result; `fib` holds the output link (and MACs on success).
 */
static __always_inline int route(struct __sk_buff *skb, struct bpf_fib_lookup *fib, __u32 saddr,
				 __u32 daddr, __u8 proto, __u16 tot_len)
{
	__builtin_memset(fib, 0, sizeof(*fib));
	fib->family = AF_INET;
	fib->l4_protocol = proto;
	/*
	 * tot_len stays 0 on purpose: then the helper checks the MTU with is_skb_forwardable(),
	 * which accepts GRO/GSO packets; a tot_len of an aggregated packet would be "too big".
	 */
	(void)tot_len;
	fib->ipv4_src = saddr;
	fib->ipv4_dst = daddr;
	fib->ifindex = skb->ingress_ifindex ? skb->ingress_ifindex : skb->ifindex;
	return bpf_fib_lookup(skb, fib, sizeof(*fib), 0);
}

/* A backend is remote when the route to it leaves through a node link. */
static __always_inline int is_remote(struct __sk_buff *skb, __u32 client, __u32 backend,
				     __u8 proto, __u16 tot_len, __u32 *out_ifindex)
{
	struct bpf_fib_lookup fib;
	int rc = route(skb, &fib, client, backend, proto, tot_len);
	*out_ifindex = 0;
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return 0; /* local address, or nothing better known: the stack decides */
	struct link_key lk = { .ifindex = fib.ifindex };
	if (!bpf_map_lookup_elem(&np4_links, &lk))
		return 0;
	*out_ifindex = fib.ifindex;
	return 1;
}

/*
 * Forwards a packet whose addresses were rewritten: route lookup, TTL, MACs, redirect.
 * Used when the new source is a node address (the stack would drop it as a martian).
 */
static __always_inline int forward(struct __sk_buff *skb, __u32 saddr, __u32 daddr, __u8 proto,
				   __u16 tot_len)
{
	struct bpf_fib_lookup fib;
	int rc = route(skb, &fib, saddr, daddr, proto, tot_len);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return TC_ACT_SHOT;

	__u8 ttl;
	if (bpf_skb_load_bytes(skb, IP_TTL_OFF, &ttl, 1))
		return TC_ACT_SHOT;
	if (ttl <= 1)
		return TC_ACT_SHOT;
	/* ttl and protocol share one 16-bit word of the header checksum. */
	__u16 old_word = bpf_htons(((__u16)ttl << 8) | proto);
	__u16 new_word = bpf_htons(((__u16)(ttl - 1) << 8) | proto);
	ttl--;
	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_word, new_word, 2))
		return TC_ACT_SHOT;
	if (bpf_skb_store_bytes(skb, IP_TTL_OFF, &ttl, 1, 0))
		return TC_ACT_SHOT;

	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return bpf_redirect_neigh(fib.ifindex, NULL, 0, 0);
	if (bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_dest), fib.dmac, ETH_ALEN, 0))
		return TC_ACT_SHOT;
	if (bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_source), fib.smac, ETH_ALEN, 0))
		return TC_ACT_SHOT;
	return bpf_redirect(fib.ifindex, 0);
}

static __always_inline int apply_ct(struct __sk_buff *skb, const struct pkt *p, struct ct_val *ct,
				    int at_ingress)
{
	__u64 now = bpf_ktime_get_ns();
	if (now - ct->last_seen_ns > NSEC_PER_SEC)
		ct->last_seen_ns = now;
	__u32 saddr = ct->saddr, daddr = ct->daddr;
	__u16 sport = ct->sport, dport = ct->dport;
	__u8 flags = ct->flags;
	if (rewrite(skb, p, saddr, daddr, sport, dport))
		return TC_ACT_SHOT;
	/* At ingress, a packet whose source became a node address must not meet the stack. */
	if (at_ingress && (flags & CT_F_SNAT))
		return forward(skb, saddr, daddr, p->proto, p->tot_len);
	return TC_ACT_OK;
}

/*
 * Whether the backend a forward entry points to still sits in its slot. Only asked for UDP:
 * a UDP flow whose backend was removed moves to a live one with its next packet. A TCP
 * connection is never moved (the new backend could only reset it), and a backend that
 * became terminating may change slots while its connections go on.
 */
static __always_inline int backend_gone(const struct ct_val *ct)
{
	struct be_key bk = { .svc_id = ct->svc_id, .slot = ct->slot };
	struct be_val *b = bpf_map_lookup_elem(&lb4_backends, &bk);
	return !b || b->ip != ct->daddr || b->port != ct->dport;
}

static __always_inline int expired(const struct pkt *p, const struct ct_val *ct, __u64 now)
{
	__u64 limit = p->proto == IPPROTO_TCP ? CT_TIMEOUT_TCP_NS : CT_TIMEOUT_UDP_NS;
	return now - ct->last_seen_ns > limit;
}

/* Picks a backend slot of `svc` (active range); `local_only`: behind this node. */
static __always_inline int pick(struct __sk_buff *skb, const struct pkt *p,
				const struct svc_val *svc, int local_only, struct be_val *out,
				__u32 *remote_ifindex, __u32 *slot_out)
{
	struct be_key bk = { .svc_id = svc->id };
	__u64 now = bpf_ktime_get_ns();
	struct np_aff_key ak = { .client_ip = p->saddr, .svc_id = svc->id };

	if (svc->affinity_timeout_s) {
		struct np_aff_val *av = bpf_map_lookup_elem(&np4_affinity, &ak);
		if (av && now - av->last_used_ns <= (__u64)svc->affinity_timeout_s * NSEC_PER_SEC &&
		    av->slot < svc->active_count) {
			bk.slot = av->slot;
			struct be_val *b = bpf_map_lookup_elem(&lb4_backends, &bk);
			if (b && b->state == BACKEND_ACTIVE && b->ip == av->ip &&
			    b->port == av->port) {
				int remote = is_remote(skb, p->saddr, b->ip, p->proto, p->tot_len,
						       remote_ifindex);
				if (!(local_only && remote)) {
					*out = *b;
					*slot_out = bk.slot;
					av->last_used_ns = now;
					return 0;
				}
			}
		}
	}

	__u32 count = svc->active_count;
	__u32 start = bpf_get_prandom_u32() % count;
	int found = 0;
	for (__u32 i = 0; i < LOCAL_SCAN; i++) {
		if (i >= count)
			break;
		__u32 slot = start + i;
		if (slot >= count)
			slot -= count;
		bk.slot = slot;
		struct be_val *b = bpf_map_lookup_elem(&lb4_backends, &bk);
		if (!b)
			continue;
		int remote =
			is_remote(skb, p->saddr, b->ip, p->proto, p->tot_len, remote_ifindex);
		if (local_only && remote)
			continue;
		*out = *b;
		found = 1;
		break;
	}
	if (!found)
		return -1;
	*slot_out = bk.slot;

	if (svc->affinity_timeout_s) {
		struct np_aff_val nv = {
			.last_used_ns = now,
			.ip = out->ip,
			.port = out->port,
			.slot = (__u16)bk.slot,
		};
		bpf_map_update_elem(&np4_affinity, &ak, &nv, BPF_ANY);
	}
	return 0;
}

/* A new flow to a frontend. */
static __always_inline int new_flow(struct __sk_buff *skb, const struct pkt *p,
				    const struct fe_val *fe)
{
	struct svc_key sk = { .vip = p->daddr, .port = p->dport, .proto = p->proto };
	struct svc_val *svcp = bpf_map_lookup_elem(&lb4_services, &sk);
	if (!svcp || svcp->active_count == 0)
		return TC_ACT_SHOT; /* no ready endpoint: dropped (kube-proxy rejects) */
	struct svc_val svc = *svcp;
	int local_only = fe->flags & FE_F_LOCAL;

	struct be_val be = {};
	__u32 out_ifindex = 0, slot = 0;
	if (pick(skb, p, &svc, local_only, &be, &out_ifindex, &slot))
		return TC_ACT_SHOT; /* Local policy and no backend behind this node */

	__u64 now = bpf_ktime_get_ns();
	struct ct_key fk = {
		.saddr = p->saddr,
		.daddr = p->daddr,
		.sport = p->sport,
		.dport = p->dport,
		.proto = p->proto,
	};
	struct ct_val fv = {
		.saddr = p->saddr,
		.daddr = be.ip,
		.sport = p->sport,
		.dport = be.port,
		.flags = CT_F_FORWARD,
		.svc_id = svc.id,
		.slot = slot,
		.last_seen_ns = now,
	};
	struct ct_key rk = {
		.saddr = be.ip,
		.daddr = p->saddr,
		.sport = be.port,
		.dport = p->sport,
		.proto = p->proto,
	};
	struct ct_val rv = {
		.saddr = p->daddr,
		.daddr = p->saddr,
		.sport = p->dport,
		.dport = p->sport,
		.flags = CT_F_REPLY,
		.last_seen_ns = now,
	};

	if (out_ifindex && !local_only) {
		/* Remote backend, Cluster policy: SNAT to the node address of the output link. */
		struct link_key lk = { .ifindex = out_ifindex };
		struct link_val *lv = bpf_map_lookup_elem(&np4_links, &lk);
		if (!lv || !lv->node_ip)
			return TC_ACT_SHOT;
		__u32 node_ip = lv->node_ip;
		rk.daddr = node_ip;
		int claimed = 0;
		for (int t = 0; t < SNAT_TRIES; t++) {
			__u16 port = SNAT_PORT_MIN +
				     bpf_get_prandom_u32() % (SNAT_PORT_MAX - SNAT_PORT_MIN + 1);
			rk.dport = bpf_htons(port);
			rv.flags = CT_F_REPLY | CT_F_SNAT;
			if (bpf_map_update_elem(&np4_ct, &rk, &rv, BPF_NOEXIST) == 0) {
				claimed = 1;
				break;
			}
		}
		if (!claimed)
			return TC_ACT_SHOT; /* SNAT ports to this backend exhausted */
		fv.saddr = node_ip;
		fv.sport = rk.dport;
		fv.flags = CT_F_FORWARD | CT_F_SNAT;
	} else {
		bpf_map_update_elem(&np4_ct, &rk, &rv, BPF_ANY);
	}
	bpf_map_update_elem(&np4_ct, &fk, &fv, BPF_ANY);

	if (rewrite(skb, p, fv.saddr, fv.daddr, fv.sport, fv.dport))
		return TC_ACT_SHOT;
	if (fv.flags & CT_F_SNAT)
		return forward(skb, fv.saddr, fv.daddr, p->proto, p->tot_len);
	return TC_ACT_OK; /* behind this node: the stack routes it */
}

SEC("classifier")
int np4_ingress(struct __sk_buff *skb)
{
	struct pkt p = {};
	if (parse(skb, &p))
		return TC_ACT_OK;

	struct ct_key k = {
		.saddr = p.saddr,
		.daddr = p.daddr,
		.sport = p.sport,
		.dport = p.dport,
		.proto = p.proto,
	};
	struct ct_val *ct = bpf_map_lookup_elem(&np4_ct, &k);
	if (ct) {
		__u64 now = bpf_ktime_get_ns();
		int fresh_syn = p.proto == IPPROTO_TCP && (p.tcp_flags & TCP_FLAG_SYN) &&
				!(p.tcp_flags & TCP_FLAG_ACK);
		/*
		 * A forward entry is re-decided for a new TCP connection, after idling, and for
		 * UDP when its backend left the service.
		 */
		if ((ct->flags & CT_F_REPLY) ||
		    !(fresh_syn || expired(&p, ct, now) ||
		      (p.proto == IPPROTO_UDP && backend_gone(ct))))
			return apply_ct(skb, &p, ct, 1);
	}

	struct svc_key fk = { .vip = p.daddr, .port = p.dport, .proto = p.proto };
	struct fe_val *fe = bpf_map_lookup_elem(&np4_frontends, &fk);
	if (!fe)
		return TC_ACT_OK;
	struct fe_val fev = *fe;
	return new_flow(skb, &p, &fev);
}

SEC("classifier")
int np4_egress(struct __sk_buff *skb)
{
	struct pkt p = {};
	if (parse(skb, &p))
		return TC_ACT_UNSPEC;
	struct ct_key k = {
		.saddr = p.saddr,
		.daddr = p.daddr,
		.sport = p.sport,
		.dport = p.dport,
		.proto = p.proto,
	};
	struct ct_val *ct = bpf_map_lookup_elem(&np4_ct, &k);
	/*
	 * Replies of flows DNATed to a backend behind this node, on their way out. Anything
	 * else continues to the next filter (TC_ACT_UNSPEC; masq.bpf.c's egress program runs
	 * after this one and must not see these replies, which end the chain here).
	 */
	if (!ct || (ct->flags & (CT_F_REPLY | CT_F_SNAT)) != CT_F_REPLY)
		return TC_ACT_UNSPEC;
	return apply_ct(skb, &p, ct, 0);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
