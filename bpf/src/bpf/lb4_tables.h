/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The Service tables both load balancers read: socket_lb.bpf.c (cgroup hooks) and
 * nodeport.bpf.c (tc). One declaration, so the two objects can never disagree about a map
 * they share through the same pin (whichever loads first creates it). The layouts are
 * mirrored by `bpf/src/maps.rs` (#[repr(C)], explicit padding); change both together.
 * Addresses and ports are in network byte order.
 */
#ifndef ENI_LB4_TABLES_H
#define ENI_LB4_TABLES_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define BACKEND_ACTIVE 1
#define BACKEND_TERMINATING 2

struct svc_key {
	__u32 vip;
	__u16 port;
	__u8 proto;
	__u8 pad;
};

struct svc_val {
	__u32 id;
	__u16 backend_count;      /* slots [0, backend_count) exist */
	__u16 active_count;       /* slots [0, active_count) are ACTIVE, the rest TERMINATING */
	__u32 affinity_timeout_s; /* 0: no session affinity */
	__u32 flags;
};

struct be_key {
	__u32 svc_id;
	__u32 slot;
};

struct be_val {
	__u32 ip;
	__u16 port;
	__u8 state;
	__u8 pad;
};

/*
 * Not preallocated: kernel memory follows the Services actually installed, so the limits can
 * be those of a large cluster (65,536 frontends, 1,048,576 backend slots: 10,000 Services
 * of 10 endpoints each use 10,000 and 100,000).
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct svc_key);
	__type(value, struct svc_val);
} lb4_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1048576);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct be_key);
	__type(value, struct be_val);
} lb4_backends SEC(".maps");

#endif
