/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Address and port rewriting with checksum fixes, shared by the tc programs that translate
 * IPv4 packets: nodeport.bpf.c (Service DNAT/SNAT) and masq.bpf.c (pod masquerade). Every
 * helper writes one field and fixes the IP header checksum and/or the L4 checksum through
 * bpf_l3_csum_replace/bpf_l4_csum_replace, so CHECKSUM_PARTIAL packets stay correct too.
 * Packets start with an Ethernet header (tc on an Ethernet-like link). Values are in network
 * byte order.
 */
#ifndef ENI_NAT4_H
#define ENI_NAT4_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>

#ifndef offsetof
#define offsetof(t, m) __builtin_offsetof(t, m)
#endif

#define NAT4_IP_OFF ETH_HLEN
#define NAT4_IP_CSUM_OFF (ETH_HLEN + offsetof(struct iphdr, check))
#define NAT4_IP_SRC_OFF (ETH_HLEN + offsetof(struct iphdr, saddr))
#define NAT4_IP_DST_OFF (ETH_HLEN + offsetof(struct iphdr, daddr))

/*
 * Flags for the L4 checksum of `proto`: UDP's checksum 0 means "none" and must stay 0
 * (BPF_F_MARK_MANGLED_0); ICMP has no pseudo header, so an address change leaves it alone.
 */
static __always_inline __u64 nat4_l4_flags(__u8 proto)
{
	return proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
}

/*
 * Replaces the IPv4 address at `addr_off` (NAT4_IP_SRC_OFF or NAT4_IP_DST_OFF) `from` ->
 * `to`. `l4_csum_off` is the offset of the TCP/UDP checksum (its pseudo header covers the
 * addresses); 0 for protocols without a pseudo header (ICMP). Returns 0 or -1.
 */
static __always_inline int nat4_set_addr(struct __sk_buff *skb, __u32 addr_off, __u32 from,
					 __u32 to, __u32 l4_csum_off, __u8 proto)
{
	if (from == to)
		return 0;
	if (l4_csum_off &&
	    bpf_l4_csum_replace(skb, l4_csum_off, from, to,
				nat4_l4_flags(proto) | BPF_F_PSEUDO_HDR | sizeof(to)))
		return -1;
	if (bpf_l3_csum_replace(skb, NAT4_IP_CSUM_OFF, from, to, sizeof(to)))
		return -1;
	if (bpf_skb_store_bytes(skb, addr_off, &to, sizeof(to), 0))
		return -1;
	return 0;
}

/*
 * Replaces the 16-bit L4 field at `field_off` (a TCP/UDP port, an ICMP echo identifier)
 * `from` -> `to`, fixing the L4 checksum at `l4_csum_off`. Returns 0 or -1.
 */
static __always_inline int nat4_set_port(struct __sk_buff *skb, __u32 field_off, __u16 from,
					 __u16 to, __u32 l4_csum_off, __u8 proto)
{
	if (from == to)
		return 0;
	if (bpf_l4_csum_replace(skb, l4_csum_off, from, to, nat4_l4_flags(proto) | sizeof(to)))
		return -1;
	if (bpf_skb_store_bytes(skb, field_off, &to, sizeof(to), 0))
		return -1;
	return 0;
}

#endif
