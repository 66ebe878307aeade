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

/* A frame's journey stitched in the kernel (bpf/follow_btf.c only): the hops of one skb that
 * was never cloned, held in a map from its first sighting and handed over in one record when the
 * skb is freed. Saves user space two of every three records and all stitching of the common
 * single-copy journey; anything else (a clone, too many hops, a stale trip) is handed over early
 * as a cut trip and the skb goes on as plain tt_events. tracer/trips.py states this once more. */
#define TT_TRIP_HOPS 6
#define TT_TRIP_ENDED 1 /* the last hop freed the skb (dropped or consumed) */
#define TT_TRIP_CUT 2	/* handed over before its end: what follows comes as tt_events */

struct tt_hop {
	__u64 ts_ns;
	__u64 location;
	__u32 netns;
	__u32 ifindex;
	__u32 reason;
	__u16 hook;
	__u16 cpu;
	char ifname[TT_IFNAMSIZ];
};

struct tt_trip {
	__u64 skb;
	__u32 frame_len;
	__u16 cap_len;
	__u8 nhops;
	__u8 flags;
	__u8 data[TT_SNAPLEN];
	struct tt_hop hops[TT_TRIP_HOPS];
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
