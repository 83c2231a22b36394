// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// Socket-level Service load balancing (IPv4 and IPv6) for cgroup v2 socket hooks.
//
// connect4  : TCP and UDP connect() to a ClusterIP:port is rewritten to a backend.
// sendmsg4  : unconnected UDP sendto() gets the same translation, per message.
// recvmsg4  : UDP replies from a backend are shown as coming from the ClusterIP:port.
// getpeername4: getpeername() on a translated socket returns the ClusterIP:port.
// connect6, sendmsg6, recvmsg6, getpeername6: the same for AF_INET6 sockets, for both
//   native IPv6 Services (lb6_* tables, 16-byte addresses) and the IPv4-mapped form
//   (::ffff:ClusterIP) of an IPv4 Service (lb4_* tables, the backend written back mapped).
//
// The IPv4 and IPv6 paths are one algorithm: pick() and reverse_lookup() are generated
// for each family by the DEFINE_* macros below (random slot among the active ones,
// ClientIP affinity per client network namespace with a timeout, terminating backends
// never picked, reverse entries per socket cookie). The v4 tables (lb4_tables.h) are shared
// with nodeport.bpf.c; the v6 ones only live here.
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

/* ---- IPv4 per-socket state ---- */

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

/* ---- IPv6 tables: the same shapes with 16-byte addresses ---- */

struct ip6 {
	__u32 w[4];
};

struct svc6_key {
	struct ip6 vip;
	__u16 port;
	__u8 proto;
	__u8 pad;
};

/* Values of lb6_services are struct svc_val; keys of lb6_backends are struct be_key. Service
 * ids come from one id space shared by both families. */
struct be6_val {
	struct ip6 ip;
	__u16 port;
	__u8 state;
	__u8 pad;
};

struct aff6_val {
	__u64 last_used_ns;
	struct ip6 ip;
	__u16 port;
	__u16 slot;
	__u32 pad;
};

struct rev6_key {
	__u64 cookie;
	struct ip6 backend_ip;
	__u16 backend_port;
	__u16 pad;
	__u32 pad2;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct svc6_key);
	__type(value, struct svc_val);
} lb6_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1048576);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct be_key);
	__type(value, struct be6_val);
} lb6_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct aff_key);
	__type(value, struct aff6_val);
} lb6_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 131072);
	__type(key, struct rev6_key);
	__type(value, struct svc6_key);
} lb6_rev_nat SEC(".maps");

#define ADDR4_EQ(a, b) ((a) == (b))

static __always_inline int ip6_eq(const struct ip6 *a, const struct ip6 *b)
{
	return a->w[0] == b->w[0] && a->w[1] == b->w[1] && a->w[2] == b->w[2] &&
	       a->w[3] == b->w[3];
}
#define ADDR6_EQ(a, b) ip6_eq(&(a), &(b))

/*
 * pick<F>(ctx, vip, port, proto, out): looks up vip:port/proto in lb<F>_services and picks a
 * backend. Returns 1 with *out filled when translated, 0 when it is not a service address
 * (the call goes on untouched), -1 to refuse the call. One body for both families.
 */
#define DEFINE_PICK(F, ADDR_T, ADDR_EQ, SVC_KEY_T, BE_VAL_T, AFF_VAL_T, REV_KEY_T)               \
	static __always_inline int pick##F(struct bpf_sock_addr *ctx, ADDR_T vip, __u16 port,   \
					   __u32 proto, BE_VAL_T *out)                          \
	{                                                                                      \
		if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)                              \
			return 0;                                                              \
                                                                                               \
		SVC_KEY_T sk = {};                                                             \
		sk.vip = vip;                                                                  \
		sk.port = port;                                                                \
		sk.proto = (__u8)proto;                                                        \
                                                                                               \
		struct svc_val *svcp = bpf_map_lookup_elem(&lb##F##_services, &sk);            \
		if (!svcp)                                                                     \
			return 0;                                                              \
		struct svc_val svc = *svcp;                                                    \
		/* A Service without ready endpoints refuses, like kube-proxy's REJECT. */     \
		if (svc.active_count == 0)                                                     \
			return -1;                                                             \
                                                                                               \
		__u64 now = bpf_ktime_get_ns();                                                \
		struct be_key bk = {};                                                         \
		bk.svc_id = svc.id;                                                            \
		BE_VAL_T be = {};                                                              \
		__u32 slot = 0;                                                                \
		int found = 0;                                                                 \
                                                                                               \
		struct aff_key ak = {};                                                        \
		if (svc.affinity_timeout_s) {                                                  \
			ak.netns_cookie = bpf_get_netns_cookie(ctx);                           \
			ak.svc_id = svc.id;                                                    \
			AFF_VAL_T *av = bpf_map_lookup_elem(&lb##F##_affinity, &ak);           \
			if (av &&                                                              \
			    now - av->last_used_ns <=                                          \
				    (__u64)svc.affinity_timeout_s * NSEC_PER_SEC &&            \
			    av->slot < svc.active_count) {                                     \
				bk.slot = av->slot;                                            \
				BE_VAL_T *b = bpf_map_lookup_elem(&lb##F##_backends, &bk);     \
				/* The slot must still hold the same, still active backend. */ \
				if (b && b->state == BACKEND_ACTIVE && ADDR_EQ(b->ip, av->ip) && \
				    b->port == av->port) {                                     \
					be = *b;                                               \
					slot = av->slot;                                       \
					found = 1;                                             \
				}                                                              \
			}                                                                      \
		}                                                                              \
                                                                                               \
		if (!found) {                                                                  \
			slot = bpf_get_prandom_u32() % svc.active_count;                       \
			bk.slot = slot;                                                        \
			BE_VAL_T *b = bpf_map_lookup_elem(&lb##F##_backends, &bk);             \
			/* Cannot happen: slots are written before the count. */              \
			if (!b)                                                                \
				return 0;                                                      \
			be = *b;                                                               \
		}                                                                              \
                                                                                               \
		if (svc.affinity_timeout_s) {                                                  \
			AFF_VAL_T nv = {};                                                     \
			nv.last_used_ns = now;                                                 \
			nv.ip = be.ip;                                                         \
			nv.port = be.port;                                                     \
			nv.slot = (__u16)slot;                                                 \
			bpf_map_update_elem(&lb##F##_affinity, &ak, &nv, BPF_ANY);             \
		}                                                                              \
                                                                                               \
		REV_KEY_T rk = {};                                                             \
		rk.cookie = bpf_get_socket_cookie(ctx);                                        \
		rk.backend_ip = be.ip;                                                         \
		rk.backend_port = be.port;                                                     \
		bpf_map_update_elem(&lb##F##_rev_nat, &rk, &sk, BPF_ANY);                      \
                                                                                               \
		*out = be;                                                                     \
		return 1;                                                                      \
	}

/*
 * reverse_lookup<F>(ctx, ip, port, drop_stale): shared by the recvmsg and getpeername hooks:
 * the service address that the socket's backend ip:port was translated from, or NULL.
 */
#define DEFINE_REVERSE_LOOKUP(F, ADDR_T, SVC_KEY_T, REV_KEY_T)                                 \
	static __always_inline SVC_KEY_T *reverse_lookup##F(struct bpf_sock_addr *ctx,         \
							    ADDR_T ip, __u16 port,              \
							    int drop_stale)                     \
	{                                                                                      \
		REV_KEY_T rk = {};                                                             \
		rk.cookie = bpf_get_socket_cookie(ctx);                                        \
		rk.backend_ip = ip;                                                            \
		rk.backend_port = port;                                                        \
		SVC_KEY_T *orig = bpf_map_lookup_elem(&lb##F##_rev_nat, &rk);                  \
		if (!orig)                                                                     \
			return NULL;                                                           \
		if (drop_stale && !bpf_map_lookup_elem(&lb##F##_services, orig)) {            \
			/* The service is gone: forget the translation, show the real source. */ \
			bpf_map_delete_elem(&lb##F##_rev_nat, &rk);                            \
			return NULL;                                                           \
		}                                                                              \
		return orig;                                                                   \
	}

DEFINE_PICK(4, __u32, ADDR4_EQ, struct svc_key, struct be_val, struct aff_val, struct rev_key)
DEFINE_PICK(6, struct ip6, ADDR6_EQ, struct svc6_key, struct be6_val, struct aff6_val,
	    struct rev6_key)
DEFINE_REVERSE_LOOKUP(4, __u32, struct svc_key, struct rev_key)
DEFINE_REVERSE_LOOKUP(6, struct ip6, struct svc6_key, struct rev6_key)

/* Returns 1 to let the call go on (translated or not), 0 to refuse it (EPERM). */
static __always_inline int translate(struct bpf_sock_addr *ctx)
{
	if (ctx->user_family != AF_INET)
		return 1;
	struct be_val be = {};
	int r = pick4(ctx, ctx->user_ip4, (__u16)ctx->user_port, ctx->protocol, &be);
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
 * (::ffff:a.b.c.d, what dual-stack runtimes such as the JVM do by default) uses the IPv4
 * tables, the backend written back as a mapped address. Any other address is looked up in
 * the IPv6 tables (native IPv6 Services).
 */
static __always_inline int v4_mapped(struct bpf_sock_addr *ctx)
{
	return ctx->user_ip6[0] == 0 && ctx->user_ip6[1] == 0 &&
	       ctx->user_ip6[2] == bpf_htonl(0x0000ffff);
}

/* The context's address, one 4-byte load per word (what the verifier allows). */
static __always_inline struct ip6 load_ip6(struct bpf_sock_addr *ctx)
{
	struct ip6 a;
	a.w[0] = ctx->user_ip6[0];
	a.w[1] = ctx->user_ip6[1];
	a.w[2] = ctx->user_ip6[2];
	a.w[3] = ctx->user_ip6[3];
	return a;
}

static __always_inline void store_ip6(struct bpf_sock_addr *ctx, const struct ip6 *a)
{
	ctx->user_ip6[0] = a->w[0];
	ctx->user_ip6[1] = a->w[1];
	ctx->user_ip6[2] = a->w[2];
	ctx->user_ip6[3] = a->w[3];
}

/*
 * Both branches only compute the new address and port; the context is written in one
 * place, after them. (Stores to the same context field in two branches get merged by clang
 * into one store through a computed pointer, which the verifier refuses: "dereference of
 * modified ctx ptr".)
 */
static __always_inline int translate6(struct bpf_sock_addr *ctx)
{
	if (ctx->user_family != AF_INET6)
		return 1;
	struct ip6 addr = load_ip6(ctx);
	__u16 port = 0;
	int r;
	if (v4_mapped(ctx)) {
		struct be_val be = {};
		r = pick4(ctx, addr.w[3], (__u16)ctx->user_port, ctx->protocol, &be);
		addr.w[3] = be.ip;
		port = be.port;
	} else {
		struct be6_val be = {};
		r = pick6(ctx, addr, (__u16)ctx->user_port, ctx->protocol, &be);
		addr = be.ip;
		port = be.port;
	}
	if (r < 0)
		return 0;
	if (r > 0) {
		store_ip6(ctx, &addr);
		ctx->user_port = port;
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

/* Shows the service address instead of the backend's. */
static __always_inline void reverse(struct bpf_sock_addr *ctx, int drop_stale)
{
	if (ctx->user_family != AF_INET)
		return;
	struct svc_key *orig =
		reverse_lookup4(ctx, ctx->user_ip4, (__u16)ctx->user_port, drop_stale);
	if (!orig)
		return;
	struct svc_key sk = *orig;
	ctx->user_ip4 = sk.vip;
	ctx->user_port = sk.port;
}

static __always_inline void reverse6(struct bpf_sock_addr *ctx, int drop_stale)
{
	if (ctx->user_family != AF_INET6)
		return;
	struct ip6 addr = load_ip6(ctx);
	__u16 port;
	if (v4_mapped(ctx)) {
		struct svc_key *orig =
			reverse_lookup4(ctx, addr.w[3], (__u16)ctx->user_port, drop_stale);
		if (!orig)
			return;
		addr.w[3] = orig->vip;
		port = orig->port;
	} else {
		struct svc6_key *orig =
			reverse_lookup6(ctx, addr, (__u16)ctx->user_port, drop_stale);
		if (!orig)
			return;
		addr = orig->vip;
		port = orig->port;
	}
	store_ip6(ctx, &addr);
	ctx->user_port = port;
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
