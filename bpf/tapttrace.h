/* Shared layouts between the BPF programs and tracer/events.py (which states them once more
 * and checks the size at start-up). Keep both in step. */
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

/* An address the guest owns: IPv4 as ::ffff:a.b.c.d, IPv6 as is. */
struct tt_ip {
	__u8 addr[16];
};

#endif
