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
#include "kernel_compat.h"

char LICENSE[] SEC("license") = "GPL";

/* Set before load by tracer/libbpf_loader.py, which packs it as "<Qii" and checks that
 * .rodata holds exactly this (one struct, so no symbol lookup is needed to find the fields). */
struct tt_follow_config {
	__u64 watch_mac;	      /* 48-bit MAC as an integer */
	__s32 kfree_reason_arg;	      /* ctx index of kfree_skb's drop reason (2), -1 = none */
	__s32 consume_location_arg;   /* ctx index of consume_skb's location, -1 = none */
	__u32 trips;		      /* 1: stitch single-copy journeys here (struct tt_trip) */
	__u32 learn;		      /* 1: add the guest's own addresses to watch_ips as it uses them */
};
const volatile struct tt_follow_config tt_config = {
	.watch_mac = 0,
	.kfree_reason_arg = -1,
	.consume_location_arg = -1,
	.trips = 0,
	.learn = 0,
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

/* Journeys being stitched (struct tt_trip in tapttrace.h), direct-mapped by skb address: a
 * slot is claimed with a compare-and-swap on its skb and freed by writing 0, so a frame costs no
 * map helper at all (a hash map's insert and delete cost ≈ 500 ns a frame here). A frame whose
 * slot is taken goes as tt_events. User space maps the array (BPF_F_MMAPABLE) to take trips that
 * have waited too long (a frame stuck in a tap's queue): tracer/trips.py, sweep. */
#define TT_TRIP_BITS 12
#define TT_GOLDEN 0x9E3779B97F4A7C15ULL
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1 << TT_TRIP_BITS);
	__type(key, __u32);
	__type(value, struct tt_trip);
} trips SEC(".maps");

/* The skb whose trip this CPU touched last. A clone's first event follows its parent's latest
 * hop on the same CPU (br_flood's clones, a packet socket's clone at transmit): the parent's
 * hops must reach user space before the clone's events, so that trip is cut first. */
struct tt_cpu_trip {
	__u64 last; /* that skb, 0 = none */
	__u64 key;  /* scratch: see skb_key() */
};
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tt_cpu_trip);
} last_trip SEC(".maps");

/* The skb's address as a number: the verifier allows no arithmetic on a BTF-typed pointer (the
 * slot's hash is some), and a value read back from memory is a plain number. */
static __always_inline __u64 skb_key(struct tt_cpu_trip *c, struct sk_buff *skb)
{
	*(volatile __u64 *)&c->key = (__u64)skb;
	return *(volatile __u64 *)&c->key;
}

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

/* The guest's own frame, received from its tap: the address it uses goes into watch_ips at once,
 * so the next ARP or neighbour solicitation for it is followed (user space learns the same from
 * the frame, for its summary, but only after the frame's journey ends). The same addresses as
 * tracer/frames.py's guest_addresses: an ARP's sender, else the IP source, never 0.0.0.0 or ::. */
static __always_inline void learn_address(unsigned char *eth)
{
	struct tt_ip key = {};
	__u8 h[14 + 40];
	__u16 proto;

	if (bpf_probe_read_kernel(h, sizeof(h), eth))
		return;
	proto = ((__u16)h[12] << 8) | h[13];
	if (proto == TT_ETH_P_ARP) {
		key.addr[10] = key.addr[11] = 0xff;
		__builtin_memcpy(&key.addr[12], &h[14 + 14], 4);
	} else if (proto == 0x0800) {
		key.addr[10] = key.addr[11] = 0xff;
		__builtin_memcpy(&key.addr[12], &h[14 + 12], 4);
	} else if (proto == TT_ETH_P_IPV6) {
		__builtin_memcpy(key.addr, &h[14 + 8], 16);
	} else {
		return;
	}
	__u64 hi, lo;
	__builtin_memcpy(&hi, key.addr, 8);
	__builtin_memcpy(&lo, &key.addr[8], 8);
	if (!hi && (!lo || lo == 0x0000ffff00000000ULL))
		return; /* :: or ::ffff:0.0.0.0 (a DHCP client, DAD) */
	if (!bpf_map_lookup_elem(&watch_ips, &key)) {
		__u8 one = 1;
		bpf_map_update_elem(&watch_ips, &key, &one, BPF_NOEXIST);
	}
}

static __always_inline void count_lost(__u32 events)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&lost, &zero);
	if (n)
		*n += events;
}

/* Which device, in which namespace: the same for a tt_event and a trip's hop. Plain loads where
 * dev is BTF-typed (tp_btf, fentry), probe reads where it is only a number (kprobe). */
static __always_inline void device_ids(struct net_device *dev, __u32 *netns, __u32 *ifindex, char *ifname,
				       const int probed)
{
	*netns = 0;
	*ifindex = 0;
	if (!dev) {
		__builtin_memset(ifname, 0, TT_IFNAMSIZ);
		return;
	}
	if (probed) {
		*ifindex = BPF_CORE_READ(dev, ifindex);
		bpf_probe_read_kernel(ifname, TT_IFNAMSIZ, dev->name);
		if (bpf_core_field_exists(dev->nd_net.net)) {
			struct net *net = BPF_CORE_READ(dev, nd_net.net);
			if (net)
				*netns = BPF_CORE_READ(net, ns.inum);
		}
		return;
	}
	*ifindex = dev->ifindex;
	__builtin_memcpy(ifname, dev->name, TT_IFNAMSIZ);
	if (bpf_core_field_exists(dev->nd_net.net)) {
		struct net *net = dev->nd_net.net;
		if (net)
			*netns = net->ns.inum;
	}
}

/* The frame's length from its MAC header: skb->len counts from skb->data, which the receive
 * path has already pulled past the MAC header. */
static __always_inline __u32 wire_len(struct sk_buff *skb, unsigned char *eth, const int probed)
{
	unsigned char *data = TT_READ(probed, skb, data);
	__u32 len = TT_READ(probed, skb, len);

	if (data >= eth && data - eth < 256)
		len += data - eth;
	return len;
}

/* -- journeys stitched in the kernel (tt_config.trips) ------------------------------------ */

static __always_inline struct tt_trip *trip_slot(__u64 skb)
{
	__u32 i = (__u32)((skb * TT_GOLDEN) >> (64 - TT_TRIP_BITS));
	return bpf_map_lookup_elem(&trips, &i);
}

/* Hand a trip to user space and free its slot. A trip that finds no room counts as its events lost. */
static __always_inline void hand_over(struct tt_trip *t, __u8 flags)
{
	t->flags |= flags;
	if (bpf_ringbuf_output(&events, t, sizeof(*t), 0))
		count_lost(t->nhops);
	t->nhops = 0;
	/* skb = 0 last: the slot is free. The compiler keeps the order; x86 keeps stores in order. */
	asm volatile("" ::: "memory");
	t->skb = 0;
}

/* Hop n of a trip, or NULL. The bound is checked on the very register that indexes: a verifier
 * before 6.2 forgets a bound proven on a value the compiler spilled to the stack and read back
 * (6.1 refused `t->hops[n]` as "R9 max value is outside of the allowed memory range" although
 * follow_trip() had checked n < TT_TRIP_HOPS). */
static __always_inline struct tt_hop *hop_at(struct tt_trip *t, __u32 n)
{
	asm volatile("" : "+r"(n));
	if (n >= TT_TRIP_HOPS)
		return NULL;
	return &t->hops[n];
}

static __always_inline void add_hop(struct tt_hop *h, struct net_device *dev, __u16 hook, __u64 location,
				    __u32 reason)
{
	if (!h)
		return;
	h->ts_ns = bpf_ktime_get_ns();
	h->location = location;
	h->reason = reason;
	h->hook = hook;
	h->cpu = bpf_get_smp_processor_id();
	device_ids(dev, &h->netns, &h->ifindex, h->ifname, 0);
}

/* Where a journey can begin, as tracer/stitch.py decides it: a device (not the bridge) receiving
 * a frame, or a stack sending one on a device that is not a bridge port; and never an skb that
 * shares its data with a clone (the clone's events would have to be stitched with it). */
static __always_inline int starts_trip(struct sk_buff *skb, struct net_device *dev, __u16 hook)
{
	if (!dev || BPF_CORE_READ_BITFIELD(skb, cloned))
		return 0;
	__u32 flags = BPF_CORE_READ_BITFIELD(dev, priv_flags);
	if (hook == TT_HOOK_RECEIVE)
		return !(flags & bpf_core_enum_value(enum netdev_priv_flags, IFF_EBRIDGE));
	if (hook == TT_HOOK_QUEUE)
		return !(flags & bpf_core_enum_value(enum netdev_priv_flags, IFF_BRIDGE_PORT));
	return 0;
}

/* The same frame as the trip's, or the skb's address was reused after a free no hook saw. */
static __always_inline int same_frame(struct tt_trip *t, unsigned char *eth, __u32 frame_len)
{
	__u64 head[4], was[4];

	if (t->frame_len != frame_len || bpf_probe_read_kernel(head, sizeof(head), eth))
		return 0;
	__builtin_memcpy(was, t->data, sizeof(was));
	return head[0] == was[0] && head[1] == was[1] && head[2] == was[2] && head[3] == was[3];
}

/* The CPU's last trip, if it is still open: handed over before an event that may be its clone's. */
static __always_inline void cut_last(__u64 *last)
{
	__u64 parent = *last;

	if (parent) {
		struct tt_trip *p = trip_slot(parent);
		if (p && p->skb == parent)
			hand_over(p, TT_TRIP_CUT);
		*last = 0;
	}
}

/* 1 when the event became a hop of a trip; 0 when it must go as a tt_event (after any trip whose
 * hops must precede it has been handed over). */
static __always_inline int follow_trip(struct sk_buff *skb, unsigned char *eth, __u16 hook, __u64 location,
				       __u32 reason)
{
	__u32 zero = 0;
	struct tt_cpu_trip *c = bpf_map_lookup_elem(&last_trip, &zero);
	if (!c)
		return 0;
	__u64 key = skb_key(c, skb);
	__u64 *last = &c->last;
	struct tt_trip *t = trip_slot(key);
	struct net_device *dev = skb->dev;
	__u32 frame_len = wire_len(skb, eth, 0);

	if (!t)
		return 0;
	if (t->skb == key) {
		int ends = hook == TT_HOOK_DROP || hook == TT_HOOK_CONSUME;
		__u8 n = t->nhops;

		/* a drop or consume belongs to the skb whatever its bytes are by then (as in stitch.py) */
		if (!ends && !same_frame(t, eth, frame_len)) {
			hand_over(t, TT_TRIP_CUT);
		} else if (hook == TT_HOOK_FLOOD || BPF_CORE_READ_BITFIELD(skb, cloned) || n >= TT_TRIP_HOPS) {
			hand_over(t, TT_TRIP_CUT);
			*last = 0;
			return 0;
		} else {
			add_hop(hop_at(t, n), dev, hook, location, reason);
			t->nhops = n + 1;
			if (ends)
				hand_over(t, TT_TRIP_ENDED);
			*last = ends ? 0 : key;
			return 1;
		}
	}
	if (!starts_trip(skb, dev, hook)) {
		/* Not a journey's start and no trip of its own: most likely a clone, made right after
		 * its parent's latest hop on this CPU. */
		cut_last(last);
		return 0;
	}
	/* The ring buffer nearly full (user space behind): a trip would do all its work only to find no
	 * room at the end. The frame goes as events, whose reservations fail at once and are counted. */
	if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) + 8 * sizeof(struct tt_trip) >
	    bpf_ringbuf_query(&events, BPF_RB_RING_SIZE))
		return 0;
	if (tt_cas_u64(&t->skb, 0, key) != 0)
		return 0; /* the slot holds another frame's trip: this one goes as tt_events */
	t->nhops = 0; /* until the first hop is in (user space's sweep skips a trip without hops) */
	t->flags = 0;
	t->frame_len = frame_len;
	t->cap_len = frame_len < TT_SNAPLEN ? frame_len : TT_SNAPLEN;
	if (bpf_probe_read_kernel(t->data, TT_SNAPLEN, eth))
		t->cap_len = 0;
	add_hop(&t->hops[0], dev, hook, location, reason);
	t->nhops = 1;
	*last = key;
	return 1;
}

/* The kprobe variant of the br_flood hop can't read through skb directly: it only cuts the
 * frame's trip (a flood clones it next) and the CPU's last one. */
static __always_inline void cut_trip(struct sk_buff *skb)
{
	__u32 zero = 0;
	struct tt_cpu_trip *c = bpf_map_lookup_elem(&last_trip, &zero);
	if (!c)
		return;
	__u64 key = skb_key(c, skb);
	struct tt_trip *t = trip_slot(key);

	if (t && t->skb == key)
		hand_over(t, TT_TRIP_CUT);
	cut_last(&c->last);
}

static __always_inline int report_skb(struct sk_buff *skb, __u16 hook, __u64 location, __u32 reason,
				      const int probed)
{
	unsigned char *eth = frame_start(skb, probed);

	if (!eth || !concerns_watched_mac(eth))
		return 0;
	if (tt_config.learn && hook == TT_HOOK_RECEIVE) {
		__u8 src[6];
		if (!bpf_probe_read_kernel(src, sizeof(src), eth + 6) && tt_mac48(src) == tt_config.watch_mac)
			learn_address(eth);
	}
	if (tt_config.trips) {
		if (probed)
			cut_trip(skb);
		else if (follow_trip(skb, eth, hook, location, reason))
			return 0;
	}

	struct tt_event *e = bpf_ringbuf_reserve(&events, sizeof(struct tt_event), 0);
	if (!e) {
		count_lost(1);
		return 0;
	}
	e->ts_ns = bpf_ktime_get_ns();
	e->skb = (__u64)skb;
	e->location = location;
	e->reason = reason;
	e->hook = hook;
	e->cpu = bpf_get_smp_processor_id();
	device_ids(TT_READ(probed, skb, dev), &e->netns, &e->ifindex, e->ifname, probed);
	__u32 len = wire_len(skb, eth, probed);
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
