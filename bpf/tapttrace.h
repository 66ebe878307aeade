/* Shared between bpf/follow.c (bcc) and bpf/follow_btf.c (libbpf), and layouts shared with
 * tracer/events.py (which states them once more and checks the size at start-up). Keep all in step. */
#ifndef TAPTTRACE_H
#define TAPTTRACE_H

#define TT_SNAPLEN 128
#define TT_IFNAMSIZ 16

/* Values of tracer.records.Hook */
#define TT_HOOK_RECEIVE 1
#define TT_HOOK_QUEUE 2
#define TT_HOOK_DROP 3
#define TT_HOOK_CONSUME 4
#define TT_HOOK_FLOOD 5 /* only where kprobes or fentry exist: see BRIDGE_HOOKS in follow.c */

struct tt_event {
	__u64 ts_ns;
	__u64 skb;
	__u64 location;
	__u32 netns;
	__u32 ifindex;
	__u32 frame_len;
	__u32 reason;
	__u16 hook;
	__u16 cap_len;
	__u32 cpu;
	char ifname[TT_IFNAMSIZ];
	__u8 data[TT_SNAPLEN];
};

#define TT_ETH_P_ARP 0x0806
#define TT_ETH_P_IPV6 0x86DD
#define TT_MAC_HEADER_UNSET 0xffff /* skb->mac_header before it is set */

/* A MAC address's 6 bytes as a 48-bit integer (how the watched MAC is given). */
static __always_inline __u64 tt_mac48(const __u8 *p)
{
	return ((__u64)p[0] << 40) | ((__u64)p[1] << 32) | ((__u64)p[2] << 24) |
	       ((__u64)p[3] << 16) | ((__u64)p[4] << 8) | (__u64)p[5];
}

/* An address the guest owns: IPv4 as ::ffff:a.b.c.d, IPv6 as is. */
struct tt_ip {
	__u8 addr[16];
};

#endif
