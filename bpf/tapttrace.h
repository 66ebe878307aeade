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
/* Inside the bridge and the tap (fentry, else kprobe; libbpf only): the decisions. */
#define TT_HOOK_FORWARD 6    /* br_forward(): one port chosen (the FDB's entry, or a host's frame) */
#define TT_HOOK_FLOOD_PORT 7 /* maybe_deliver(): a port a flood offers the frame to */
#define TT_HOOK_PASS_UP 8    /* br_pass_frame_up(): the frame goes up to the host's stack */
#define TT_HOOK_EGRESS 9     /* br_dev_queue_push_xmit(): out of a port (reason: TT_EGRESS_*) */
#define TT_HOOK_EGRESS_NF 10 /* br_nf_dev_queue_xmit(): the same, through br_netfilter */
#define TT_HOOK_TAP_XMIT 11  /* tun_net_xmit(): the tap takes the frame for its queue (reason: TT_TAP_*) */
#define TT_HOOK_NF_CHAIN 12  /* nft_do_chain() returns: a base chain's verdict (reason: TT_NF_*; location:
			      * the chain, whose names are in the nf_chains map) */

/* The reason word of TT_HOOK_FORWARD / TT_HOOK_FLOOD_PORT: the port's facts at that moment, which
 * decide whether the bridge sends the frame there (should_deliver(), inlined everywhere). */
#define TT_PORT_STATE_MASK 0x0f	   /* BR_STATE_*: 0 disabled 1 listening 2 learning 3 forwarding 4 blocking */
#define TT_PORT_INGRESS (1u << 4)  /* the port is the one the frame came in by (needs hairpin) */
#define TT_PORT_LOCAL_RCV (1u << 5) /* br_forward: the host gets a copy too */
#define TT_PORT_KNOWN (1u << 7)	   /* the facts were read (the kernel has the port's BTF) */
#define TT_PORT_FLAGS_SHIFT 8	   /* the port's BR_* flags, bits 0..23 (BR_HAIRPIN_MODE 0, BR_ISOLATED 16) */

/* The reason word of TT_HOOK_EGRESS / TT_HOOK_EGRESS_NF: what decides whether the frame fits. */
#define TT_EGRESS_MTU_MASK 0x7fffffffu /* the egress device's MTU */
#define TT_EGRESS_GSO (1u << 31)	       /* a GSO skb: segmented later, never too big here */

/* The reason word of TT_HOOK_TAP_XMIT: the queue the frame is for, as tun_net_xmit() finds it. */
#define TT_TAP_SIZE_MASK 0xffffffu    /* its ring's size (the tap's txqueuelen when it was attached) */
#define TT_TAP_NO_READER (1u << 29)   /* no process holds that queue: tun drops the frame */
#define TT_TAP_FULL (1u << 30)	      /* its ring is full: the holder isn't reading; tun drops it */
#define TT_TAP_KNOWN (1u << 31)	      /* the facts were read (the kernel has tun's BTF) */

/* The reason word of TT_HOOK_NF_CHAIN: what nf_tables decided, at which hook of which family. */
#define TT_NF_VERDICT_MASK 0xffu /* NF_DROP 0, NF_ACCEPT 1, NF_STOLEN 2, NF_QUEUE 3, NF_REPEAT 4 */
#define TT_NF_HOOK_SHIFT 8	 /* the hook's number in its family (NF_INET_FORWARD 2, NF_BR_FORWARD 2 …) */
#define TT_NF_PF_SHIFT 16	 /* the family the hook ran in (NFPROTO_IPV4 2, NFPROTO_BRIDGE 7 …) */
#define TT_NF_KNOWN (1u << 31)	 /* the facts were read */

/* A base chain's names, by the chain's address (the hop's location), as nft lists them. Written
 * when a frame that concerns the watched MAC leaves the chain, read by user space to word the hop. */
#define TT_NF_NAME 32
struct tt_nf_chain {
	__u32 family; /* the table's: NFPROTO_INET 1, NFPROTO_IPV4 2, NFPROTO_BRIDGE 7 … */
	__u32 pad;
	char table[TT_NF_NAME];
	char chain[TT_NF_NAME];
};

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
/* A bridged frame on a kernel with fentry: the sender's queue, the port's receive, netfilter's
 * verdicts, the forward, the egress, the tap's queue and its taking it, the read: room for all. */
#define TT_TRIP_HOPS 10
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

/* Whole journeys the kernel counted instead of handing them over (bpf/follow.c, tally()): user
 * space was behind, so they are not shown, only counted by their path (path_of(): the hops without
 * their times, and the frame's group bit, as one 64-bit number). One sample trip per path lets user
 * space word the path as a journey (its verdict, its drop reason). tracer/trips.py states this once
 * more. */
#define TT_TALLY_PATHS 1024

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
