/* tapttrace follow, the libbpf build: the hooks and event records of bpf/follow.c as tp_btf
 * programs (BPF_PROG_TYPE_TRACING on the same tracepoints), compiled once into a CO-RE object.
 *
 * Why a second file: bcc can't load tp_btf programs, and in a tp_btf program the skb is a
 * BTF-typed pointer, so skb->head, skb->mac_header, skb->data and skb->dev->… are plain loads
 * the verifier allows (no bpf_probe_read_kernel); the only helper a non-matching frame costs is
 * the one read of its Ethernet header in the packet buffer. Field offsets are CO-RE relocations
 * (vmlinux.h has preserve_access_index), resolved by libbpf at load against the running
 * kernel's BTF: nothing is passed in as -D, nothing is compiled per run.
 *
 * Per-run values (the watched MAC, which tracepoint argument carries what) are `const volatile`
 * globals in .rodata, set by tracer/libbpf_loader.py before load; the verifier sees them as
 * constants, so the branches for argument layouts this kernel doesn't have are never checked.
 *
 * Built by tracer/libbpf_loader.py (clang -target bpf -O2 -g, vmlinux.h from
 * `bpftool btf dump file /sys/kernel/btf/vmlinux format c`) into /var/cache/tapttrace/bpf/.
 *
 * The br_flood hop comes in two programs, fentry and kprobe, both built into the object and
 * both off by default: tracer/libbpf_loader.py turns on (autoload) the one features.bridge_hook
 * names, or neither. The kprobe program can't make plain loads through skb (a kprobe's skb is
 * a number to the verifier), so report() reads through BPF_CORE_READ there.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#include "tapttrace.h"

char LICENSE[] SEC("license") = "GPL";

/* Set before load by tracer/libbpf_loader.py, which packs it as "<Qii" and checks that
 * .rodata holds exactly this (one struct, so no symbol lookup is needed to find the fields). */
struct tt_follow_config {
	__u64 watch_mac;	      /* 48-bit MAC as an integer */
	__s32 kfree_reason_arg;	      /* ctx index of kfree_skb's drop reason (2), -1 = none */
	__s32 consume_location_arg;   /* ctx index of consume_skb's location, -1 = none */
};
const volatile struct tt_follow_config tt_config = {
	.watch_mac = 0,
	.kfree_reason_arg = -1,
	.consume_location_arg = -1,
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 4096); /* resized by the loader (--ringbuf-pages) */
} events SEC(".maps");

/* Events the ring buffer had no room for, per CPU: user space adds them up and reports them. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

/* The guest's addresses, given with --ip or learned by user space from the guest's own frames. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, struct tt_ip);
	__type(value, __u8);
} watch_ips SEC(".maps");

/* Where the frame's Ethernet header starts: head + mac_header, or data when the MAC header
 * was never set (a locally built frame before dev_queue_xmit resets it). Plain loads. */
/* A field of skb/dev: a plain load where the pointer is BTF-typed (tp_btf, fentry), a
 * bpf_probe_read_kernel (CO-RE relocated) where it is only a number (kprobe). `probed` is a
 * constant in every inlined copy, so each program keeps only one of the two. */
#define TT_READ(probed, ptr, field) ((probed) ? BPF_CORE_READ(ptr, field) : (ptr)->field)

static __always_inline unsigned char *frame_start(struct sk_buff *skb, const int probed)
{
	__u16 mac_header = TT_READ(probed, skb, mac_header);

	return mac_header != TT_MAC_HEADER_UNSET ? TT_READ(probed, skb, head) + mac_header
						 : TT_READ(probed, skb, data);
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
	return bpf_map_lookup_elem(&watch_ips, &key) != NULL;
}

/* Broadcast/multicast frames concern the guest when they ask for one of its addresses. */
static __always_inline int asks_for_guest(unsigned char *eth, __u16 proto)
{
	if (proto == TT_ETH_P_ARP) {
		/* ARP for IPv4 over Ethernet: the target protocol address sits at byte 24 of the ARP header */
		__u8 tpa[4];
		if (bpf_probe_read_kernel(tpa, sizeof(tpa), eth + 14 + 24))
			return 0;
		return watched_ip(tpa, 1);
	}
	if (proto == TT_ETH_P_IPV6) {
		/* IPv6 header (40) then ICMPv6: type 135 is a neighbour solicitation, target at +8 */
		__u8 hdr[40 + 24];
		if (bpf_probe_read_kernel(hdr, sizeof(hdr), eth + 14))
			return 0;
		if (hdr[6] != 58 || hdr[40] != 135)
			return 0;
		return watched_ip(&hdr[48], 0);
	}
	return 0;
}

#ifdef TT_RDONLY_CAST
/* 6.2+ (the builder defines TT_RDONLY_CAST when the kernel's BTF has this kfunc). */
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;
#endif

static __always_inline int concerns_watched_mac(unsigned char *eth)
{
	__u8 h[14];

#ifdef TT_RDONLY_CAST
	/* The header through an untrusted, read-only BTF pointer: plain loads that the JIT guards
	 * with an exception-table entry (a fault reads 0), no helper call at all. */
	struct ethhdr *hdr = bpf_rdonly_cast(eth, bpf_core_type_id_kernel(struct ethhdr));
	__builtin_memcpy(h, hdr, sizeof(h));
#else
	/* The one helper call of a frame that doesn't concern us: the header is packet data. */
	if (bpf_probe_read_kernel(h, sizeof(h), eth))
		return 0;
#endif
	if (tt_mac48(h) == tt_config.watch_mac || tt_mac48(h + 6) == tt_config.watch_mac)
		return 1;
	if (!(h[0] & 1)) /* unicast to someone else */
		return 0;
	return asks_for_guest(eth, ((__u16)h[12] << 8) | h[13]);
}

static __always_inline void count_lost(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&lost, &zero);
	if (n)
		*n += 1;
}

static __always_inline int report_skb(struct sk_buff *skb, __u16 hook, __u64 location, __u32 reason,
				      const int probed)
{
	unsigned char *eth = frame_start(skb, probed);

	if (!eth || !concerns_watched_mac(eth))
		return 0;

	struct tt_event *e = bpf_ringbuf_reserve(&events, sizeof(struct tt_event), 0);
	if (!e) {
		count_lost();
		return 0;
	}
	struct net_device *dev = TT_READ(probed, skb, dev);
	unsigned char *data = TT_READ(probed, skb, data);
	__u32 len = TT_READ(probed, skb, len);

	e->ts_ns = bpf_ktime_get_ns();
	e->skb = (__u64)skb;
	e->location = location;
	e->reason = reason;
	e->hook = hook;
	e->cpu = bpf_get_smp_processor_id();
	e->netns = 0;
	e->ifindex = 0;
	__builtin_memset(e->ifname, 0, sizeof(e->ifname));
	if (dev) {
		e->ifindex = TT_READ(probed, dev, ifindex);
		bpf_probe_read_kernel(e->ifname, sizeof(e->ifname), dev->name);
		if (bpf_core_field_exists(dev->nd_net.net)) {
			struct net *net = BPF_CORE_READ(dev, nd_net.net);
			if (net)
				e->netns = BPF_CORE_READ(net, ns.inum);
		}
	}
	/* skb->len counts from skb->data; the frame starts at the MAC header, which the receive
	 * path has already pulled past. */
	if (data >= eth && data - eth < 256)
		len += data - eth;
	e->frame_len = len;
	e->cap_len = len < TT_SNAPLEN ? len : TT_SNAPLEN;
	if (bpf_probe_read_kernel(e->data, TT_SNAPLEN, eth))
		e->cap_len = 0;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

static __always_inline int report(struct sk_buff *skb, __u16 hook, __u64 location, __u32 reason)
{
	return report_skb(skb, hook, location, reason, 0);
}

/* A device hands a received frame to the stack: on a bridge port this is the frame arriving
 * from the wire/peer; on the bridge device itself it is the bridge passing it up to the host. */
SEC("tp_btf/netif_receive_skb")
int BPF_PROG(tt_netif_receive_skb, struct sk_buff *skb)
{
	return report(skb, TT_HOOK_RECEIVE, 0, 0);
}

/* dev_queue_xmit() queues the frame on a device: the bridge sending it out of a port, or a
 * host/namespace stack sending it. For a tap this is the moment it enters the tap's queue. */
SEC("tp_btf/net_dev_queue")
int BPF_PROG(tt_net_dev_queue, struct sk_buff *skb)
{
	return report(skb, TT_HOOK_QUEUE, 0, 0);
}

/* The skb is freed as a drop: the kernel says why (reason, 5.17+) and where (location).
 * ctx[] is read by constant index: the verifier checks each against the tracepoint's BTF
 * prototype, and the indexes this kernel lacks sit behind branches .rodata rules out. */
SEC("tp_btf/kfree_skb")
int tt_kfree_skb(__u64 *ctx)
{
	__u32 reason = 0;

	/* Every kernel with a reason (5.17+) passes it third; one constant index only, since
	 * clang folds alternatives into a computed ctx offset, which the verifier refuses. */
	if (tt_config.kfree_reason_arg == 2)
		reason = (__u32)ctx[2];
	return report((struct sk_buff *)ctx[0], TT_HOOK_DROP, ctx[1], reason);
}

/* The skb is freed after normal use; for a tap, tun_do_read() consuming it means the process
 * holding the tap fd (qemu, the guest) read the frame. The location argument exists from 6.3. */
SEC("tp_btf/consume_skb")
int tt_consume_skb(__u64 *ctx)
{
	__u64 location = 0;

	if (tt_config.consume_location_arg == 1)
		location = ctx[1];
	return report((struct sk_buff *)ctx[0], TT_HOOK_CONSUME, location, 0);
}

/* Bridge-internal: br_flood() is the bridge deciding to flood (destination unknown to the FDB,
 * or broadcast/multicast), which tracepoints can't tell from a forward to the only other port.
 * The same FLOOD record as bpf/follow.c: reason = pkt_type (0 unicast, 1 multicast,
 * 2 broadcast) | local_rcv << 8. Off unless the loader turns one of the two on. */
SEC("fentry/br_flood")
int BPF_PROG(tt_br_flood_fentry, void *br, struct sk_buff *skb, __u64 pkt_type, __u64 local_rcv)
{
	return report(skb, TT_HOOK_FLOOD, 0, (__u32)pkt_type | (((__u32)local_rcv & 1) << 8));
}

SEC("kprobe/br_flood")
int BPF_KPROBE(tt_br_flood_kprobe, void *br, struct sk_buff *skb, __u64 pkt_type, __u64 local_rcv)
{
	return report_skb(skb, TT_HOOK_FLOOD, 0, (__u32)pkt_type | (((__u32)local_rcv & 1) << 8), 1);
}
