// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// Socket-level Service load balancing (IPv4) for cgroup v2 socket hooks.
//
// connect4  : TCP and UDP connect() to a ClusterIP:port is rewritten to a backend.
// sendmsg4  : unconnected UDP sendto() gets the same translation, per message.
// recvmsg4  : UDP replies from a backend are shown as coming from the ClusterIP:port.
// getpeername4: getpeername() on a translated socket returns the ClusterIP:port.
// connect6, sendmsg6, recvmsg6, getpeername6: the same for AF_INET6 sockets that use the
//   IPv4-mapped form (::ffff:ClusterIP) of an IPv4 Service.
//
// The map layouts are mirrored by `bpf/src/maps.rs` (#[repr(C)], explicit padding);
// change both together. Every address and port is in network byte order.

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "lb4_tables.h"

#define AF_INET 2
#define AF_INET6 10

#define NSEC_PER_SEC 1000000000ULL

struct aff_key {
	__u64 netns_cookie;
	__u32 svc_id;
	__u32 pad;
};

struct aff_val {
	__u64 last_used_ns;
	__u32 ip;
	__u16 port;
	__u16 slot;
};

struct rev_key {
	__u64 cookie;
	__u32 backend_ip;
	__u16 backend_port;
	__u16 pad;
};

/* rev_nat's value is the service key the socket was translated from. */

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct aff_key);
	__type(value, struct aff_val);
} lb4_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 131072);
	__type(key, struct rev_key);
	__type(value, struct svc_key);
} lb4_rev_nat SEC(".maps");

/*
 * Looks up vip:port/proto and picks a backend. Returns 1 with *out filled when translated,
 * 0 when it is not a service address (the call goes on untouched), -1 to refuse the call.
 */
static __always_inline int pick(struct bpf_sock_addr *ctx, __u32 vip, __u16 port, __u32 proto,
				struct be_val *out)
{
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 0;

	struct svc_key sk = {};
	sk.vip = vip;
	sk.port = port;
	sk.proto = (__u8)proto;

	struct svc_val *svcp = bpf_map_lookup_elem(&lb4_services, &sk);
	if (!svcp)
		return 0;
	struct svc_val svc = *svcp;
	if (svc.active_count == 0)
		return -1; /* a Service without ready endpoints refuses, like kube-proxy's REJECT */

	__u64 now = bpf_ktime_get_ns();
	struct be_key bk = {};
	bk.svc_id = svc.id;
	struct be_val be = {};
	__u32 slot = 0;
	int found = 0;

	struct aff_key ak = {};
	if (svc.affinity_timeout_s) {
		ak.netns_cookie = bpf_get_netns_cookie(ctx);
		ak.svc_id = svc.id;
		struct aff_val *av = bpf_map_lookup_elem(&lb4_affinity, &ak);
		if (av && now - av->last_used_ns <= (__u64)svc.affinity_timeout_s * NSEC_PER_SEC &&
		    av->slot < svc.active_count) {
			bk.slot = av->slot;
			struct be_val *b = bpf_map_lookup_elem(&lb4_backends, &bk);
			/* The slot must still hold the same, still active backend. */
			if (b && b->state == BACKEND_ACTIVE && b->ip == av->ip && b->port == av->port) {
				be = *b;
				slot = av->slot;
				found = 1;
			}
		}
	}

	if (!found) {
		slot = bpf_get_prandom_u32() % svc.active_count;
		bk.slot = slot;
		struct be_val *b = bpf_map_lookup_elem(&lb4_backends, &bk);
		if (!b)
			return 0; /* cannot happen: slots are written before the count */
		be = *b;
	}

	if (svc.affinity_timeout_s) {
		struct aff_val nv = {};
		nv.last_used_ns = now;
		nv.ip = be.ip;
		nv.port = be.port;
		nv.slot = (__u16)slot;
		bpf_map_update_elem(&lb4_affinity, &ak, &nv, BPF_ANY);
	}

	struct rev_key rk = {};
	rk.cookie = bpf_get_socket_cookie(ctx);
	rk.backend_ip = be.ip;
	rk.backend_port = be.port;
	bpf_map_update_elem(&lb4_rev_nat, &rk, &sk, BPF_ANY);

	*out = be;
	return 1;
}

/* Returns 1 to let the call go on (translated or not), 0 to refuse it (EPERM). */
static __always_inline int translate(struct bpf_sock_addr *ctx)
{
	if (ctx->user_family != AF_INET)
		return 1;
	struct be_val be = {};
	int r = pick(ctx, ctx->user_ip4, (__u16)ctx->user_port, ctx->protocol, &be);
	if (r < 0)
		return 0;
	if (r > 0) {
		ctx->user_ip4 = be.ip;
		ctx->user_port = be.port;
	}
	return 1;
}

/*
 * An AF_INET6 socket reaching an IPv4 Service through its IPv4-mapped address
 * (::ffff:a.b.c.d, what dual-stack runtimes such as the JVM do by default): the same IPv4
 * tables, the backend written back as a mapped address. Native IPv6 Services are not
 * programmed (see docs/services.md); other IPv6 addresses pass untouched.
 */
static __always_inline int v4_mapped(struct bpf_sock_addr *ctx)
{
	return ctx->user_ip6[0] == 0 && ctx->user_ip6[1] == 0 &&
	       ctx->user_ip6[2] == bpf_htonl(0x0000ffff);
}

static __always_inline int translate6(struct bpf_sock_addr *ctx)
{
	if (ctx->user_family != AF_INET6 || !v4_mapped(ctx))
		return 1;
	struct be_val be = {};
	int r = pick(ctx, ctx->user_ip6[3], (__u16)ctx->user_port, ctx->protocol, &be);
	if (r < 0)
		return 0;
	if (r > 0) {
		ctx->user_ip6[3] = be.ip;
		ctx->user_port = be.port;
	}
	return 1;
}

SEC("cgroup/connect4")
int sock4_connect(struct bpf_sock_addr *ctx)
{
	return translate(ctx);
}

SEC("cgroup/sendmsg4")
int sock4_sendmsg(struct bpf_sock_addr *ctx)
{
	return translate(ctx);
}

/*
 * Shared by the recvmsg and getpeername hooks: the service address that the socket's
 * backend ip:port was translated from, or NULL.
 */
static __always_inline struct svc_key *reverse_lookup(struct bpf_sock_addr *ctx, __u32 ip,
						      __u16 port, int drop_stale)
{
	struct rev_key rk = {};
	rk.cookie = bpf_get_socket_cookie(ctx);
	rk.backend_ip = ip;
	rk.backend_port = port;
	struct svc_key *orig = bpf_map_lookup_elem(&lb4_rev_nat, &rk);
	if (!orig)
		return NULL;
	if (drop_stale && !bpf_map_lookup_elem(&lb4_services, orig)) {
		/* The service is gone: forget the translation, show the real source. */
		bpf_map_delete_elem(&lb4_rev_nat, &rk);
		return NULL;
	}
	return orig;
}

/* Shows the service address instead of the backend's. */
static __always_inline void reverse(struct bpf_sock_addr *ctx, int drop_stale)
{
	if (ctx->user_family != AF_INET)
		return;
	struct svc_key *orig =
		reverse_lookup(ctx, ctx->user_ip4, (__u16)ctx->user_port, drop_stale);
	if (!orig)
		return;
	struct svc_key sk = *orig;
	ctx->user_ip4 = sk.vip;
	ctx->user_port = sk.port;
}

static __always_inline void reverse6(struct bpf_sock_addr *ctx, int drop_stale)
{
	if (ctx->user_family != AF_INET6 || !v4_mapped(ctx))
		return;
	struct svc_key *orig =
		reverse_lookup(ctx, ctx->user_ip6[3], (__u16)ctx->user_port, drop_stale);
	if (!orig)
		return;
	struct svc_key sk = *orig;
	ctx->user_ip6[3] = sk.vip;
	ctx->user_port = sk.port;
}

SEC("cgroup/recvmsg4")
int sock4_recvmsg(struct bpf_sock_addr *ctx)
{
	reverse(ctx, 1);
	return 1;
}

SEC("cgroup/getpeername4")
int sock4_getpeername(struct bpf_sock_addr *ctx)
{
	reverse(ctx, 0);
	return 1;
}

SEC("cgroup/connect6")
int sock6_connect(struct bpf_sock_addr *ctx)
{
	return translate6(ctx);
}

SEC("cgroup/sendmsg6")
int sock6_sendmsg(struct bpf_sock_addr *ctx)
{
	return translate6(ctx);
}

SEC("cgroup/recvmsg6")
int sock6_recvmsg(struct bpf_sock_addr *ctx)
{
	reverse6(ctx, 1);
	return 1;
}

SEC("cgroup/getpeername6")
int sock6_getpeername(struct bpf_sock_addr *ctx)
{
	reverse6(ctx, 0);
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
