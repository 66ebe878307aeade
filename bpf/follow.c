/* tapttrace follow: report every kernel moment a frame that concerns one MAC goes through.
 *
 * Hooks are raw tracepoints (the cheapest attachable hook everywhere since 4.17). Each one
 * decides in a couple of reads whether the skb's Ethernet header concerns the watched MAC
 * (source or destination, or an ARP request / IPv6 neighbour solicitation for one of the
 * guest's addresses) before it touches a map or the ring buffer.
 *
 * Everything kernel-version specific comes in as -D constants computed from BTF by
 * tracer/features.py: struct offsets (OFF_*), raw tracepoint argument positions (ARG_*),
 * and the watched MAC (WATCH_MAC, a validated 48-bit integer).
 */
#include "tapttrace.h"

#ifndef WATCH_MAC
#error "WATCH_MAC must be defined"
#endif

BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
/* Events the ring buffer had no room for, per CPU: user space adds them up and reports them. */
BPF_PERCPU_ARRAY(lost, __u64, 1);
/* The guest's addresses, given with --ip or learned by user space from the guest's own frames. */
BPF_HASH(watch_ips, struct tt_ip, __u8, 64);

#define ETH_P_ARP TT_ETH_P_ARP
#define ETH_P_IPV6 TT_ETH_P_IPV6
#define MAC_HEADER_UNSET TT_MAC_HEADER_UNSET
#define mac48 tt_mac48

/* Where the frame's Ethernet header starts: head + mac_header, or data when the MAC header
 * was never set (a locally built frame before dev_queue_xmit resets it). */
static __always_inline __u64 frame_start(__u64 skb)
{
	__u16 mac_header = MAC_HEADER_UNSET;
	__u64 head = 0, data = 0;
#if OFF_SKB_MAC_HEADER < OFF_SKB_HEAD && OFF_SKB_HEAD < OFF_SKB_DATA && OFF_SKB_DATA + 8 - OFF_SKB_MAC_HEADER <= 64
	/* mac_header, head and data sit within a few bytes of each other (6.x): one read for all
	 * three, since each bpf_probe_read_kernel() costs about as much as the bytes it copies. */
#define SPAN_LO OFF_SKB_MAC_HEADER
#define SPAN_HI (OFF_SKB_DATA + 8)
	__u8 span[SPAN_HI - SPAN_LO] __attribute__((aligned(8)));
	if (bpf_probe_read_kernel(span, sizeof(span), (void *)(skb + SPAN_LO)))
		return 0;
	__builtin_memcpy(&mac_header, span + (OFF_SKB_MAC_HEADER - SPAN_LO), sizeof(mac_header));
	__builtin_memcpy(&head, span + (OFF_SKB_HEAD - SPAN_LO), sizeof(head));
	__builtin_memcpy(&data, span + (OFF_SKB_DATA - SPAN_LO), sizeof(data));
#else
	bpf_probe_read_kernel(&head, sizeof(head), (void *)(skb + OFF_SKB_HEAD));
	bpf_probe_read_kernel(&mac_header, sizeof(mac_header), (void *)(skb + OFF_SKB_MAC_HEADER));
	bpf_probe_read_kernel(&data, sizeof(data), (void *)(skb + OFF_SKB_DATA));
#endif
	return mac_header != MAC_HEADER_UNSET ? head + mac_header : data;
}

static __always_inline int watched_ip(const __u8 *addr, int v4)
{
	struct tt_ip key = {};

	if (v4) {
		key.addr[10] = 0xff;
		key.addr[11] = 0xff;
		__builtin_memcpy(&key.addr[12], addr, 4);
	} else {
		__builtin_memcpy(key.addr, addr, 16);
	}
	return watch_ips.lookup(&key) != NULL;
}

/* Broadcast/multicast frames concern the guest when they ask for one of its addresses. */
static __always_inline int asks_for_guest(__u64 eth, __u16 proto)
{
	if (proto == ETH_P_ARP) {
		/* ARP for IPv4 over Ethernet: the target protocol address sits at byte 24 of the ARP header */
		__u8 tpa[4];
		if (bpf_probe_read_kernel(tpa, sizeof(tpa), (void *)(eth + 14 + 24)))
			return 0;
		return watched_ip(tpa, 1);
	}
	if (proto == ETH_P_IPV6) {
		/* IPv6 header (40) then ICMPv6: type 135 is a neighbour solicitation, target at +8 */
		__u8 hdr[40 + 24];
		if (bpf_probe_read_kernel(hdr, sizeof(hdr), (void *)(eth + 14)))
			return 0;
		if (hdr[6] != 58 || hdr[40] != 135)
			return 0;
		return watched_ip(&hdr[48], 0);
	}
	return 0;
}

static __always_inline int concerns_watched_mac(__u64 eth)
{
	__u8 h[14];

	if (bpf_probe_read_kernel(h, sizeof(h), (void *)eth))
		return 0;
	if (mac48(h) == WATCH_MAC || mac48(h + 6) == WATCH_MAC)
		return 1;
	if (!(h[0] & 1)) /* unicast to someone else */
		return 0;
	return asks_for_guest(eth, ((__u16)h[12] << 8) | h[13]);
}

static __always_inline void count_lost(void)
{
	int zero = 0;
	__u64 *n = lost.lookup(&zero);
	if (n)
		*n += 1;
}

static __always_inline int report(__u64 skb, __u16 hook, __u64 location, __u32 reason)
{
	__u64 eth = frame_start(skb);

	if (!eth || !concerns_watched_mac(eth))
		return 0;

	struct tt_event *e = events.ringbuf_reserve(sizeof(struct tt_event));
	if (!e) {
		count_lost();
		return 0;
	}
	__u64 dev = 0, net = 0, data = 0;
	__u32 len = 0;

	e->ts_ns = bpf_ktime_get_ns();
	e->skb = skb;
	e->location = location;
	e->reason = reason;
	e->hook = hook;
	e->cpu = bpf_get_smp_processor_id();
	e->netns = 0;
	e->ifindex = 0;
	__builtin_memset(e->ifname, 0, sizeof(e->ifname));

	bpf_probe_read_kernel(&dev, sizeof(dev), (void *)(skb + OFF_SKB_DEV));
	if (dev) {
		bpf_probe_read_kernel(&e->ifindex, sizeof(e->ifindex), (void *)(dev + OFF_NETDEV_IFINDEX));
		bpf_probe_read_kernel(e->ifname, sizeof(e->ifname), (void *)(dev + OFF_NETDEV_NAME));
#if defined(OFF_NETDEV_NET) && defined(OFF_NET_INUM)
		bpf_probe_read_kernel(&net, sizeof(net), (void *)(dev + OFF_NETDEV_NET));
		if (net)
			bpf_probe_read_kernel(&e->netns, sizeof(e->netns), (void *)(net + OFF_NET_INUM));
#endif
	}
	/* skb->len counts from skb->data; the frame starts at the MAC header, which the receive
	 * path has already pulled past. */
	bpf_probe_read_kernel(&len, sizeof(len), (void *)(skb + OFF_SKB_LEN));
	bpf_probe_read_kernel(&data, sizeof(data), (void *)(skb + OFF_SKB_DATA));
	if (data >= eth && data - eth < 256)
		len += data - eth;
	e->frame_len = len;
	e->cap_len = len < TT_SNAPLEN ? len : TT_SNAPLEN;
	if (bpf_probe_read_kernel(e->data, TT_SNAPLEN, (void *)eth))
		e->cap_len = 0;
	events.ringbuf_submit(e, 0);
	return 0;
}

/* A device hands a received frame to the stack: on a bridge port this is the frame arriving
 * from the wire/peer; on the bridge device itself it is the bridge passing it up to the host. */
RAW_TRACEPOINT_PROBE(netif_receive_skb)
{
	return report(ctx->args[0], TT_HOOK_RECEIVE, 0, 0);
}

/* dev_queue_xmit() queues the frame on a device: the bridge sending it out of a port, or a
 * host/namespace stack sending it. For a tap this is the moment it enters the tap's queue. */
RAW_TRACEPOINT_PROBE(net_dev_queue)
{
	return report(ctx->args[0], TT_HOOK_QUEUE, 0, 0);
}

/* The skb is freed as a drop: the kernel says why (reason) and where (location). */
RAW_TRACEPOINT_PROBE(kfree_skb)
{
#ifdef ARG_KFREE_REASON
	__u32 reason = (__u32)ctx->args[ARG_KFREE_REASON];
#else
	__u32 reason = 0;
#endif
	return report(ctx->args[0], TT_HOOK_DROP, ctx->args[ARG_KFREE_LOCATION], reason);
}

/* The skb is freed after normal use; for a tap, tun_do_read() consuming it means the process
 * holding the tap fd (qemu, the guest) read the frame. */
RAW_TRACEPOINT_PROBE(consume_skb)
{
#ifdef ARG_CONSUME_LOCATION
	return report(ctx->args[0], TT_HOOK_CONSUME, ctx->args[ARG_CONSUME_LOCATION], 0);
#else
	return report(ctx->args[0], TT_HOOK_CONSUME, 0, 0);
#endif
}

/* Bridge-internal moments, where the kernel lets us hook functions (production hypervisors
 * usually do; tracer/features.py picks fentry, else kprobe, else neither). br_flood() is the
 * bridge deciding to flood: the destination is unknown to the FDB (unicast), or the frame is
 * broadcast/multicast. Tracepoints can't tell a flood from a forward to the only other port.
 * reason carries pkt_type (0 unicast, 1 multicast, 2 broadcast) | local_rcv << 8. */
#if defined(BRIDGE_HOOKS_FENTRY)
KFUNC_PROBE(br_flood, void *br, struct sk_buff *skb, int pkt_type, bool local_rcv)
{
	return report((__u64)skb, TT_HOOK_FLOOD, 0, (__u32)pkt_type | ((__u32)local_rcv << 8));
}
#elif defined(BRIDGE_HOOKS_KPROBE)
#include <uapi/linux/ptrace.h> /* struct pt_regs: the architecture's ABI, stable across versions */
int tt_br_flood(struct pt_regs *ctx)
{
	return report(PT_REGS_PARM2(ctx), TT_HOOK_FLOOD, 0,
		      (__u32)PT_REGS_PARM3(ctx) | (((__u32)PT_REGS_PARM4(ctx) & 1) << 8));
}
#endif
