/* Map layouts shared between bpf/exporter.c (one source for both loaders) and
 * tracer/exporter/program.py, which states them once more as ctypes structures and checks the
 * loaded maps' key/value sizes against those, whichever loader made them. */
#ifndef TAPTTRACE_EXPORTER_H
#define TAPTTRACE_EXPORTER_H

/* Roles of an interesting device (bits of ttx_dev_ent.role), set by user space from netlink. */
#define TTX_ROLE_PORT 1   /* a port of a bridge (ttx_dev_ent.bridge is the bridge's ifindex) */
#define TTX_ROLE_TAP 2    /* a tun/tap device in tap mode */
#define TTX_ROLE_BRIDGE 4 /* a bridge device itself (ttx_dev_ent.bridge is its own ifindex) */

/* Values of ttx_verdict_key.verdict: the same words as `tapttrace follow`. */
#define TTX_V_FORWARDED 1
#define TTX_V_FLOODED 2
#define TTX_V_LOCAL 3
#define TTX_V_DROPPED 4
#define TTX_V_DELIVERED 5

/* Values of ttx_tap_key.event */
#define TTX_TAP_QUEUED 1    /* queued on the tap for the guest to read */
#define TTX_TAP_DELIVERED 2 /* read by the process holding the tap fd */
#define TTX_TAP_DROPPED 3   /* freed as a drop while queued on the tap (reason says why) */
#define TTX_TAP_LOCAL 4     /* addressed to the tap's VM, but the bridge passed it up to the host */

/* Values of ttx_fdb_key.event */
#define TTX_FDB_LEARNED 1
#define TTX_FDB_MOVED 2
#define TTX_FDB_DELETED 3

/* Values of ttx_decision_key.decision: the bridge's FDB decision, counted at its own functions
 * (br_forward, br_flood, br_pass_frame_up; fentry or kprobe, libbpf only). */
#define TTX_D_FORWARD 1 /* an FDB entry names one port: br_forward */
#define TTX_D_LOCAL 2   /* the FDB names the bridge's own address: br_pass_frame_up, no flood before */
#define TTX_D_FLOOD 3   /* no FDB entry, broadcast or multicast: br_flood */

/* Values of ttx_decision_key.pkt_type: the kernel's enum br_pkt_type (br_flood's argument; a
 * forward or local decision is always unicast). */
#define TTX_PKT_UNICAST 0
#define TTX_PKT_MULTICAST 1
#define TTX_PKT_BROADCAST 2

/* Indices of the health array */
#define TTX_H_COUNTER_FULL 0 /* a counter map had no room for a new series: a count was lost */
#define TTX_H_FRAME_TABLE_FULL 1 /* the per-frame table refused an entry: a verdict was lost */
#define TTX_H_MAX 2

struct ttx_dev_key {
	__u32 netns;
	__u32 ifindex;
};

struct ttx_verdict_key {
	__u32 netns;
	__u32 bridge;
	__u32 in_port;
	__u32 out_port; /* 0 when there is no single one (flooded, dropped) */
	__u32 verdict;
};

struct ttx_drop_key {
	__u64 location;
	__u32 netns;
	__u32 ifindex;
	__u32 reason;
	__u32 pad;
};

struct ttx_tap_key {
	__u32 netns;
	__u32 ifindex;
	__u32 event;
	__u32 reason; /* drop reason, for TTX_TAP_DROPPED */
};

struct ttx_fdb_key {
	__u32 netns;
	__u32 bridge;
	__u32 port;
	__u32 event;
};

struct ttx_decision_key {
	__u32 netns;
	__u32 bridge;
	__u32 in_port;  /* skb->dev at the decision: the ingress port, or the bridge (the host sending) */
	__u32 out_port; /* forward: the FDB's port (0: none); local: the bridge; flood: 0 */
	__u32 decision;
	__u32 pkt_type;
};

/* `devs`' value: what user space says of a watched device. Counters in per-CPU arrays are
 * indexed by a small device index user space assigns (tracer/exporter/program.py, IndexTable),
 * so the common per-frame path calls no hash-map helper. idx 0: none (the frame is counted in
 * the hash maps above instead). An index stands for one (netns, ifindex, bridge): a device that
 * changes bridge gets a new one. */
struct ttx_dev_ent {
	__u32 role;
	__u32 bridge;
	__u32 idx; /* 1..TTX_MAX_DEVS-1, 0: none */
	__u32 pad;
};

/* devcnt[idx]: what is counted per device with no other varying label. */
struct ttx_dev_counts {
	__u64 tap_queued;    /* taps (netns, ifindex, TTX_TAP_QUEUED, 0) */
	__u64 tap_delivered; /* taps (netns, ifindex, TTX_TAP_DELIVERED, 0) */
	__u64 flooded;       /* verdicts (netns, bridge, ifindex as in_port, 0, TTX_V_FLOODED) */
	__u64 local;         /* verdicts (netns, bridge, ifindex as in_port, bridge, TTX_V_LOCAL) */
	__u64 dropped;       /* verdicts (netns, bridge, ifindex as in_port, 0, TTX_V_DROPPED) */
};

/* paircnt[pairs[in_idx << TTX_DEV_BITS | out_idx]]: verdicts with a single out port. */
struct ttx_pair_counts {
	__u64 forwarded; /* verdicts (netns, bridge, in_port, out_port, TTX_V_FORWARDED) */
	__u64 delivered; /* verdicts (netns, bridge, in_port, out_port, TTX_V_DELIVERED) */
};

#define TTX_DEV_BITS 8 /* device indices below 1 << TTX_DEV_BITS; the pair table has its square */

#endif
