/* tapttrace follow: report every kernel moment a frame that concerns one MAC goes through.
 *
 * One source for both loaders (bpf/loaders.h says how): libbpf builds it once into a CO-RE object
 * (tracer/libbpf_loader.py), bcc compiles it with -DTT_BCC where libbpf can't be used or this
 * kernel's verifier refuses the object (tracer/features.py's loader chain).
 *
 * Hooks are the tracepoints a frame passes on every kernel (receive, queue, drop, consume) and,
 * where the kernel lets us hook functions, the bridge's and the tap's own decisions (br_flood, and
 * under libbpf br_forward, maybe_deliver, br_pass_frame_up, the egress, tun_net_xmit, and
 * nf_tables' verdicts at nft_do_chain: the end of this file). Each one decides in a couple of reads whether
 * the skb's Ethernet header concerns the watched MAC (source or destination, or an ARP request /
 * IPv6 neighbour solicitation for one of the guest's addresses) before it touches a map or the
 * ring buffer.
 *
 * Under libbpf the tracepoints are tp_btf programs: the skb is a BTF-typed pointer, so skb->head,
 * skb->mac_header, skb->data and skb->dev->… are plain loads the verifier allows (CO-RE relocated
 * against the running kernel's BTF); the only helper a non-matching frame costs is the read of
 * its Ethernet header in the packet buffer. Under bcc they are raw tracepoints and fields are
 * read with bpf_probe_read_kernel at offsets features.py read from BTF (-DOFF_*).
 *
 * Per-run values (the watched MAC, which tracepoint argument carries what) are TT_CFG(): .rodata
 * set before load under libbpf (the verifier sees constants, so branches for argument layouts this
 * kernel doesn't have are never checked), -D constants under bcc.
 *
 * The br_flood hop: libbpf builds both a fentry and a kprobe program, off by default, and the
 * loader turns on (autoload) the one features.bridge_hook names; bcc gets the one
 * features.bridge_hook_bcc names (-DBRIDGE_HOOKS_FENTRY / _KPROBE), or neither. The kprobe can't
 * make plain loads through skb (a kprobe's skb is a number to the verifier): report_skb()'s
 * `probed` reads through BPF_CORE_READ there.
 */
#include "loaders.h"
#include "tapttrace.h"
#include "kernel_compat.h"

#ifdef TT_BCC
/* The loader's -DTT_CFG_… constants; bcc has no in-kernel trips (see below). */
#define TT_CFG_trips 0
#ifndef TT_CFG_learn
#define TT_CFG_learn 0
#endif
#else
/* Set before load by tracer/libbpf_loader.py, which packs it as "<QiiIIII" and checks that
 * .rodata holds exactly this (one struct, so no symbol lookup is needed to find the fields).
 * bcc gets the same fields as -DTT_CFG_<field>=… (tracer/loader.py). */
struct tt_follow_config {
	__u64 watch_mac;	      /* 48-bit MAC as an integer */
	__s32 kfree_reason_arg;	      /* ctx index of kfree_skb's drop reason (2), -1 = none */
	__s32 consume_location_arg;   /* ctx index of consume_skb's location, -1 = none */
	__u32 trips;		      /* 1: stitch single-copy journeys here (struct tt_trip) */
	__u32 learn;		      /* 1: add the guest's own addresses to watch_ips as it uses them */
	__u32 rdonly_cast;	      /* 1: the kernel has the bpf_rdonly_cast kfunc (6.2+) */
	__u32 pad;
};
const volatile struct tt_follow_config tt_config = {
	.watch_mac = 0,
	.kfree_reason_arg = -1,
	.consume_location_arg = -1,
	.trips = 0,
	.learn = 0,
	.rdonly_cast = 0,
	.pad = 0,
};
#endif

#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 256 /* libbpf: resized by the loader; bcc: -DRINGBUF_PAGES */
#endif
TT_RINGBUF(events, RINGBUF_PAGES);

/* Events the ring buffer had no room for, per CPU: user space adds them up and reports them. */
TT_PERCPU_ARRAY(lost, __u64, 1);

/* The guest's addresses, given with --ip or learned from the guest's own frames. */
TT_HASH(watch_ips, struct tt_ip, __u8, 64);

#ifndef TT_BCC
/* Journeys being stitched (struct tt_trip in tapttrace.h), direct-mapped by skb address: a
 * slot is claimed with a compare-and-swap on its skb and freed by writing 0, so a frame costs no
 * map helper at all (a hash map's insert and delete cost ≈ 500 ns a frame here). A frame whose
 * slot is taken goes as tt_events. User space maps the array (BPF_F_MMAPABLE) to take trips that
 * have waited too long (a frame stuck in a tap's queue): tracer/trips.py, sweep.
 * libbpf only: bcc can't map an array into user space, and its raw tracepoints can't read the
 * bitfields starts_trip() needs without more -D offsets; under bcc every hop is a tt_event and
 * user space stitches (tracer/stitch.py), as it does for any cut trip. */
#define TT_TRIP_BITS 13
#define TT_TRIP_WAYS 4 /* slots an skb's trip may take (trip_slot) */
#define TT_GOLDEN 0x9E3779B97F4A7C15ULL
TT_ARRAY(trips, struct tt_trip, 1 << TT_TRIP_BITS, BPF_F_MMAPABLE);

/* The skb whose trip this CPU touched last. A clone's first event follows its parent's latest
 * hop on the same CPU (br_flood's clones, a packet socket's clone at transmit): the parent's
 * hops must reach user space before the clone's events, so that trip is cut first. */
struct tt_cpu_trip {
	__u64 last; /* that skb, 0 = none */
	__u64 key;  /* scratch: see skb_key() */
};
TT_PERCPU_ARRAY(last_trip, struct tt_cpu_trip, 1);

/* The skb's address as a number: the verifier allows no arithmetic on a BTF-typed pointer (the
 * slot's hash is some), and a value read back from memory is a plain number. */
static __always_inline __u64 skb_key(struct tt_cpu_trip *c, struct sk_buff *skb)
{
	*(volatile __u64 *)&c->key = (__u64)skb;
	return *(volatile __u64 *)&c->key;
}
#endif

/* Map operations, each in both loaders' spelling (bpf/loaders.h says why). */
static __always_inline int ip_watched(struct tt_ip *key)
{
#ifdef TT_BCC
	return watch_ips.lookup(key) != NULL;
#else
	return bpf_map_lookup_elem(&watch_ips, key) != NULL;
#endif
}

static __always_inline void watch_ip(struct tt_ip *key)
{
	__u8 one = 1;
#ifdef TT_BCC
	watch_ips.insert(key, &one);
#else
	bpf_map_update_elem(&watch_ips, key, &one, BPF_NOEXIST);
#endif
}

static __always_inline void count_lost(__u32 n_events)
{
	__u32 zero = 0;
#ifdef TT_BCC
	__u64 *n = lost.lookup(&zero);
#else
	__u64 *n = bpf_map_lookup_elem(&lost, &zero);
#endif
	if (n)
		*n += n_events;
}

static __always_inline struct tt_event *event_reserve(void)
{
#ifdef TT_BCC
	return events.ringbuf_reserve(sizeof(struct tt_event));
#else
	return bpf_ringbuf_reserve(&events, sizeof(struct tt_event), 0);
#endif
}

static __always_inline void event_submit(struct tt_event *e)
{
#ifdef TT_BCC
	events.ringbuf_submit(e, 0);
#else
	bpf_ringbuf_submit(e, 0);
#endif
}

/* The fields of skb this program reads (TT_FIELD: bpf/loaders.h). */
#define skb_data(probed, skb) TT_FIELD(probed, skb, data, OFF_SKB_DATA, unsigned char *)
#define skb_len(probed, skb) TT_FIELD(probed, skb, len, OFF_SKB_LEN, __u32)
#define skb_dev(probed, skb) TT_FIELD(probed, skb, dev, OFF_SKB_DEV, struct net_device *)

/* Where the frame's Ethernet header starts: head + mac_header, or data when the MAC header
 * was never set (a locally built frame before dev_queue_xmit resets it). */
static __always_inline unsigned char *frame_start(struct sk_buff *skb, const int probed)
{
#if defined(TT_BCC) && OFF_SKB_MAC_HEADER < OFF_SKB_HEAD && OFF_SKB_HEAD < OFF_SKB_DATA && \
	OFF_SKB_DATA + 8 - OFF_SKB_MAC_HEADER <= 64
	/* bcc: mac_header, head and data sit within a few bytes of each other (6.x): one read for
	 * all three, since each bpf_probe_read_kernel() costs about as much as the bytes it copies. */
#define SPAN_LO OFF_SKB_MAC_HEADER
#define SPAN_HI (OFF_SKB_DATA + 8)
	__u16 mac_header = TT_MAC_HEADER_UNSET;
	__u64 head = 0, data = 0;
	__u8 span[SPAN_HI - SPAN_LO] __attribute__((aligned(8)));
	if (bpf_probe_read_kernel(span, sizeof(span), (void *)((__u64)skb + SPAN_LO)))
		return 0;
	__builtin_memcpy(&mac_header, span + (OFF_SKB_MAC_HEADER - SPAN_LO), sizeof(mac_header));
	__builtin_memcpy(&head, span + (OFF_SKB_HEAD - SPAN_LO), sizeof(head));
	__builtin_memcpy(&data, span + (OFF_SKB_DATA - SPAN_LO), sizeof(data));
	return (unsigned char *)(mac_header != TT_MAC_HEADER_UNSET ? head + mac_header : data);
#else
	__u16 mac_header = TT_FIELD(probed, skb, mac_header, OFF_SKB_MAC_HEADER, __u16);

	return mac_header != TT_MAC_HEADER_UNSET
		       ? TT_FIELD(probed, skb, head, OFF_SKB_HEAD, unsigned char *) + mac_header
		       : skb_data(probed, skb);
#endif
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
	return ip_watched(&key);
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

#ifndef TT_BCC
/* 6.2+. Weak, so that libbpf loads the object where the kernel lacks it (it leaves the call
 * unresolved); tt_config.rdonly_cast, which the loader sets from the kernel's BTF, makes the call
 * a branch the verifier knows is never taken there, and drops it before anything checks it. */
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym __weak;
#endif

static __always_inline int concerns_watched_mac(unsigned char *eth)
{
	__u8 h[14];

#ifndef TT_BCC
	if (TT_CFG(rdonly_cast)) {
		/* The header through an untrusted, read-only BTF pointer: plain loads that the JIT
		 * guards with an exception-table entry (a fault reads 0), no helper call at all. */
		struct ethhdr *hdr = bpf_rdonly_cast(eth, bpf_core_type_id_kernel(struct ethhdr));
		__builtin_memcpy(h, hdr, sizeof(h));
	} else
#endif
	/* The one helper call of a frame that doesn't concern us: the header is packet data. */
	if (bpf_probe_read_kernel(h, sizeof(h), eth))
		return 0;
	if (tt_mac48(h) == TT_CFG(watch_mac) || tt_mac48(h + 6) == TT_CFG(watch_mac))
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
	if (!ip_watched(&key))
		watch_ip(&key);
}

/* Which device, in which namespace: the same for a tt_event and a trip's hop. Plain loads where
 * dev is BTF-typed (tp_btf, fentry), probe reads where it is only a number (kprobe, bcc). */
static __always_inline void device_ids(struct net_device *dev, __u32 *netns, __u32 *ifindex, char *ifname,
				       const int probed)
{
	*netns = 0;
	*ifindex = 0;
	if (!dev) {
		__builtin_memset(ifname, 0, TT_IFNAMSIZ);
		return;
	}
#ifdef TT_BCC
	__u64 d = (__u64)dev;
	bpf_probe_read_kernel(ifindex, sizeof(*ifindex), (void *)(d + OFF_NETDEV_IFINDEX));
	bpf_probe_read_kernel(ifname, TT_IFNAMSIZ, (void *)(d + OFF_NETDEV_NAME));
#if defined(OFF_NETDEV_NET) && defined(OFF_NET_INUM) /* no netns member: a kernel without CONFIG_NET_NS */
	__u64 net = 0;
	bpf_probe_read_kernel(&net, sizeof(net), (void *)(d + OFF_NETDEV_NET));
	if (net)
		bpf_probe_read_kernel(netns, sizeof(*netns), (void *)(net + OFF_NET_INUM));
#endif
#else
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
#endif
}

/* The frame's length from its MAC header: skb->len counts from skb->data, which the receive
 * path has already pulled past the MAC header. */
static __always_inline __u32 wire_len(struct sk_buff *skb, unsigned char *eth, const int probed)
{
	unsigned char *data = skb_data(probed, skb);
	__u32 len = skb_len(probed, skb);

	if (data >= eth && data - eth < 256)
		len += data - eth;
	return len;
}

#ifndef TT_BCC
/* -- journeys stitched in the kernel (TT_CFG(trips), libbpf only) ------------------------- */

/* The slot holding skb's trip, or NULL. An skb's trip is in one of the TT_TRIP_WAYS slots of its
 * set: with one slot per address, a frame whose slot another frame held (a frame in a tap's queue:
 * at saturation thousands wait there) went as events, and at that rate its events were lost. */
static __always_inline struct tt_trip *trip_slot(__u64 skb)
{
	__u32 set = (__u32)((skb * TT_GOLDEN) >> (64 - TT_TRIP_BITS)) & ~(__u32)(TT_TRIP_WAYS - 1);

#pragma unroll
	for (__u32 w = 0; w < TT_TRIP_WAYS; w++) {
		__u32 i = set + w;
		struct tt_trip *t = bpf_map_lookup_elem(&trips, &i);
		if (t && t->skb == skb)
			return t;
	}
	return NULL;
}

/* A free slot of skb's set, claimed for it with a compare-and-swap; NULL if all are taken. */
static __always_inline struct tt_trip *trip_claim(__u64 skb)
{
	__u32 set = (__u32)((skb * TT_GOLDEN) >> (64 - TT_TRIP_BITS)) & ~(__u32)(TT_TRIP_WAYS - 1);

#pragma unroll
	for (__u32 w = 0; w < TT_TRIP_WAYS; w++) {
		__u32 i = set + w;
		struct tt_trip *t = bpf_map_lookup_elem(&trips, &i);
		if (t && !t->skb && tt_cas_u64(&t->skb, 0, skb) == 0)
			return t;
	}
	return NULL;
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

/* Whole journeys user space is too far behind to be shown, counted by their path (see tally()):
 * a count per path (per CPU: no atomics), one sample trip per path, and how many in all (read
 * while follow runs, to say once that it is behind). */
TT_PERCPU_HASH(tallies, __u64, __u64, TT_TALLY_PATHS);
TT_HASH(tally_samples, __u64, struct tt_trip, TT_TALLY_PATHS);
TT_PERCPU_ARRAY(tallied, __u64, 1);

/* User space has more than half the ring still to read: a journey that ends well (not a drop)
 * is counted instead of shown, so that the other half stays for drops and for frames that go as
 * events (clones, floods), whose hops can't be counted here. */
static __always_inline int ring_behind(void)
{
	return bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) * 2 > bpf_ringbuf_query(&events, BPF_RB_RING_SIZE);
}

#define TT_FNV_PRIME 0x100000001b3ULL

/* A trip's path as one number: what decides a journey's words and verdict, without its times (per
 * hop its hook, namespace, device, reason and location; the frame's group bit), FNV-1a over 64-bit
 * words and a final mix. A hash of the 248 bytes the path would take as a map key cost ≈ 250 ns a
 * frame at saturation (bench/FINDINGS.md, item 9); two paths sharing a number are as unlikely as
 * a 64-bit collision. */
static __always_inline __u64 path_of(struct tt_trip *t)
{
	__u64 h = 0xcbf29ce484222325ULL ^ t->nhops ^ ((__u64)(t->data[0] & 1) << 8);

#pragma unroll
	for (int i = 0; i < TT_TRIP_HOPS; i++) {
		if (i >= t->nhops)
			break;
		h = (h ^ t->hops[i].location) * TT_FNV_PRIME;
		h = (h ^ (((__u64)t->hops[i].netns << 32) | t->hops[i].ifindex)) * TT_FNV_PRIME;
		h = (h ^ (((__u64)t->hops[i].reason << 16) | t->hops[i].hook)) * TT_FNV_PRIME;
	}
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	return h ^ (h >> 33);
}

/* Count ended trip t by its path: 0, or -1 when the path table is full (its events count as lost). */
static __always_inline int tally(struct tt_trip *t)
{
	__u32 zero = 0;
	__u64 path = path_of(t), one = 1, *n;

	n = bpf_map_lookup_elem(&tallies, &path);
	if (n) {
		*n += 1;
	} else {
		/* A new path (on this CPU): its sample first, so that user space never finds a count
		 * without one. */
		bpf_map_update_elem(&tally_samples, &path, t, BPF_NOEXIST);
		if (bpf_map_update_elem(&tallies, &path, &one, BPF_NOEXIST)) {
			n = bpf_map_lookup_elem(&tallies, &path); /* another CPU made it meanwhile */
			if (!n)
				return -1;
			*n += 1;
		}
	}
	n = bpf_map_lookup_elem(&tallied, &zero);
	if (n)
		*n += 1;
	return 0;
}

/* Hand a trip to user space and free its slot. A whole journey (ended) is counted by its path when
 * user space is behind and it is no drop (drops are shown first), or when the ring has no room for
 * it; only a cut trip that finds no room, or a path the table has no room for, counts as lost. */
static __always_inline void hand_over(struct tt_trip *t, __u8 flags)
{
	t->flags |= flags;
	if (t->flags & TT_TRIP_ENDED) {
		struct tt_hop *last = hop_at(t, (__u32)t->nhops - 1);
		int drop = last && last->hook == TT_HOOK_DROP;

		if ((!drop && ring_behind()) || bpf_ringbuf_output(&events, t, sizeof(*t), 0)) {
			if (tally(t))
				count_lost(t->nhops);
		}
	} else if (bpf_ringbuf_output(&events, t, sizeof(*t), 0)) {
		count_lost(t->nhops);
	}
	t->nhops = 0;
	/* skb = 0 last: the slot is free. The compiler keeps the order; x86 keeps stores in order. */
	asm volatile("" ::: "memory");
	t->skb = 0;
}

/* port: the bridge port a decision hop names (br_forward's), read through BPF_CORE_READ (a number
 * to the verifier, so read likewise); else the hop is on skb->dev. */
static __always_inline void add_hop(struct tt_hop *h, struct net_device *dev, struct net_device *port, __u16 hook,
				    __u64 location, __u32 reason)
{
	if (!h)
		return;
	h->ts_ns = bpf_ktime_get_ns();
	h->location = location;
	h->reason = reason;
	h->hook = hook;
	h->cpu = bpf_get_smp_processor_id();
	if (port)
		device_ids(port, &h->netns, &h->ifindex, h->ifname, 1);
	else
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
				       __u32 reason, struct net_device *port)
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

	if (t) {
		int ends = hook == TT_HOOK_DROP || hook == TT_HOOK_CONSUME;
		__u8 n = t->nhops;

		/* a drop or consume belongs to the skb whatever its bytes are by then (as in stitch.py) */
		if (!ends && !same_frame(t, eth, frame_len)) {
			hand_over(t, TT_TRIP_CUT);
		} else if (hook == TT_HOOK_FLOOD || hook == TT_HOOK_FLOOD_PORT || BPF_CORE_READ_BITFIELD(skb, cloned) ||
			   n >= TT_TRIP_HOPS) {
			/* a flood (its clones come next, each with its own events) */
			hand_over(t, TT_TRIP_CUT);
			*last = 0;
			return 0;
		} else {
			/* the bridge's own hops too (forward, egress, the tap taking it, netfilter's verdict):
			 * on kernels with fentry a bridged frame is still one record */
			add_hop(hop_at(t, n), dev, port, hook, location, reason);
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
	/* Even with user space behind: the trip is then counted by its path at its end (hand_over),
	 * where its events would be lost. */
	t = trip_claim(key);
	if (!t)
		return 0; /* its set holds other frames' trips: this one goes as tt_events */
	t->nhops = 0; /* until the first hop is in (user space's sweep skips a trip without hops) */
	t->flags = 0;
	t->frame_len = frame_len;
	t->cap_len = frame_len < TT_SNAPLEN ? frame_len : TT_SNAPLEN;
	if (bpf_probe_read_kernel(t->data, TT_SNAPLEN, eth))
		t->cap_len = 0;
	add_hop(&t->hops[0], dev, port, hook, location, reason);
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
#endif /* !TT_BCC: trips */

#ifndef TT_BCC
/* The bridge's port, as far as its decision hops read it (libbpf matches `net_bridge_port___tt`
 * to the kernel's `net_bridge_port`, in vmlinux's BTF or the bridge module's). */
struct net_bridge_port___tt {
	struct net_device *dev;
	unsigned long flags;
	__u8 state;
} __attribute__((preserve_access_index));

/* The port's facts as the bridge weighs them in should_deliver() (inlined on every kernel, so read
 * here instead): TT_PORT_* in tapttrace.h; *dev: the port's device, the hop's device. None where
 * the kernel has no BTF of the port (5.10's bridge module): bpf_core_field_exists() is 0 there and
 * the reads are never made. */
static __always_inline __u32 port_facts(struct net_bridge_port___tt *p, struct sk_buff *skb,
					struct net_device **dev)
{
	__u32 facts = 0;

	if (!p || !bpf_core_field_exists(p->state))
		return 0;
	*dev = BPF_CORE_READ(p, dev);
	facts = TT_PORT_KNOWN | (BPF_CORE_READ(p, state) & TT_PORT_STATE_MASK);
	facts |= ((__u32)BPF_CORE_READ(p, flags) & 0xffffff) << TT_PORT_FLAGS_SHIFT;
	if ((void *)*dev == (void *)BPF_CORE_READ(skb, dev))
		facts |= TT_PORT_INGRESS;
	return facts;
}

/* What is_skb_forwardable() (br_dev_queue_push_xmit) and br_nf_dev_queue_xmit() weigh next: the
 * MTU of the device the frame leaves by, and whether the skb is GSO (segmented later, so never
 * too big for them, whatever its length): TT_EGRESS_* in tapttrace.h. */
static __always_inline __u32 egress_facts(struct sk_buff *skb)
{
	struct net_device *dev = BPF_CORE_READ(skb, dev);
	struct skb_shared_info *shinfo;
	__u32 facts;

	if (!dev)
		return 0;
	facts = BPF_CORE_READ(dev, mtu) & TT_EGRESS_MTU_MASK;
	/* skb_shinfo(): the shared info sits at head + end (end is an offset on 64-bit kernels) */
	shinfo = (void *)(BPF_CORE_READ(skb, head) + BPF_CORE_READ(skb, end));
	if (BPF_CORE_READ(shinfo, gso_size))
		facts |= TT_EGRESS_GSO;
	return facts;
}

/* tun.c's own structs, as far as the tap-xmit hop reads them: in the tun module's BTF where it has
 * one (5.11+; on 5.10 bpf_core_field_exists() is 0 and no facts are read). */
struct ptr_ring___tt {
	int producer;
	int size;
	void **queue;
} __attribute__((preserve_access_index));

struct tun_file___tt {
	struct ptr_ring___tt tx_ring;
} __attribute__((preserve_access_index));

struct tun_struct___tt {
	void *tfiles[1]; /* MAX_TAP_QUEUES of them: indexed by hand below */
	unsigned int numqueues;
} __attribute__((preserve_access_index));

/* What tun_net_xmit() weighs next for the skb it was given (TT_TAP_* in tapttrace.h): whether a
 * process holds the queue the skb is for (tun->tfiles[skb->queue_mapping], else it drops), and
 * whether that queue's ring is full (ptr_ring_produce() fails: the slot at the producer is still
 * taken, or the ring has no size). */
static __always_inline __u32 tap_facts(struct sk_buff *skb)
{
	struct net_device *dev = BPF_CORE_READ(skb, dev);
	struct tun_struct___tt *tun;
	struct tun_file___tt *tfile = 0;
	void *taken = 0, **queue;
	__u32 txq, facts;
	int producer, size;

	if (!dev || !bpf_core_field_exists(tun->numqueues) || !bpf_core_field_exists(tfile->tx_ring))
		return 0;
	/* netdev_priv(): the private area follows the net_device, aligned to NETDEV_ALIGN (32) */
	tun = (void *)dev + ((bpf_core_type_size(struct net_device) + 31) & ~31);
	txq = BPF_CORE_READ(skb, queue_mapping);
	if (txq >= 256)
		return TT_TAP_KNOWN | TT_TAP_NO_READER;
	bpf_probe_read_kernel(&tfile, sizeof(tfile),
			      (void *)tun + bpf_core_field_offset(tun->tfiles) + txq * sizeof(void *));
	if (!tfile)
		return TT_TAP_KNOWN | TT_TAP_NO_READER;
	producer = BPF_CORE_READ(tfile, tx_ring.producer);
	size = BPF_CORE_READ(tfile, tx_ring.size);
	queue = BPF_CORE_READ(tfile, tx_ring.queue);
	facts = TT_TAP_KNOWN | ((__u32)size & TT_TAP_SIZE_MASK);
	if (size <= 0 || producer < 0 || producer >= size || !queue)
		return facts | TT_TAP_FULL;
	bpf_probe_read_kernel(&taken, sizeof(taken), queue + producer);
	return taken ? facts | TT_TAP_FULL : facts;
}

/* nf_tables' own structs, as far as the netfilter hop reads them (its module's BTF, 5.11+). */
struct nf_hook_state___tt {
	__u8 hook;
	__u8 pf;
} __attribute__((preserve_access_index));

struct nft_pktinfo___tt {
	struct sk_buff *skb;
	const struct nf_hook_state___tt *state;
} __attribute__((preserve_access_index));

struct nft_table___tt {
	__u16 family : 6;
	char *name;
} __attribute__((preserve_access_index));

struct nft_chain___tt {
	struct nft_table___tt *table;
	char *name;
} __attribute__((preserve_access_index));

/* The chains' names by address (struct tt_nf_chain): written for a frame that concerns the watched
 * MAC only, so a handful of chains; rewritten each time, since a deleted chain's address is reused. */
TT_HASH(nf_chains, __u64, struct tt_nf_chain, 256);

/* The frame nft_do_chain() is ruling on now on this CPU, from its entry to its exit, when the frame
 * concerns the watched MAC: the chain and the hook, for the netfilter hop. The hop is reported at
 * the exit, where the verdict is known and the skb still alive; but a kernel whose nf_tables frees
 * a dropped skb itself (NF_DROP_REASON: kfree_skb inside nft_do_chain, then NF_STOLEN with the
 * errno) reports it from kfree_skb, just before the drop, while the skb is still there to read.
 * One slot: a softirq's nft_do_chain interrupting a process's on the same CPU takes the slot, and
 * the process's hop is not reported. */
struct tt_nf_pending {
	__u64 skb;   /* 0 = none */
	__u64 chain; /* the base chain's address: the hop's location, nf_chains' key */
	__u32 facts; /* TT_NF_KNOWN, the hook and its family (the verdict is added by whoever reports) */
	__u32 pad;
	__u64 scratch; /* see pending_key() */
};
TT_PERCPU_ARRAY(nf_pending, struct tt_nf_pending, 1);

/* skb's address as a number, as skb_key() does for trips (no arithmetic on a BTF-typed pointer). */
static __always_inline __u64 pending_key(struct tt_nf_pending *p, struct sk_buff *skb)
{
	*(volatile __u64 *)&p->scratch = (__u64)skb;
	return *(volatile __u64 *)&p->scratch;
}

static __always_inline struct tt_nf_pending *nf_pending_slot(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&nf_pending, &zero);
}

/* The chain's names into nf_chains under its address, and the hook it runs at (TT_NF_* in
 * tapttrace.h, without the verdict). The chain is the base chain the hook called (`priv`): a
 * verdict reached in a chain it jumped to is the base chain's. */
static __always_inline __u32 nf_chain_facts(struct nft_pktinfo___tt *pkt, __u64 chain_addr)
{
	struct nft_chain___tt *chain = (void *)chain_addr;
	struct nft_table___tt *table;
	struct tt_nf_chain names = {};

	if (!chain || !bpf_core_field_exists(chain->name) || !bpf_core_field_exists(pkt->state))
		return 0;
	table = BPF_CORE_READ(chain, table);
	if (table) {
		names.family = BPF_CORE_READ_BITFIELD_PROBED(table, family);
		bpf_probe_read_kernel_str(names.table, sizeof(names.table), BPF_CORE_READ(table, name));
	}
	bpf_probe_read_kernel_str(names.chain, sizeof(names.chain), BPF_CORE_READ(chain, name));
	bpf_map_update_elem(&nf_chains, &chain_addr, &names, BPF_ANY);
	return TT_NF_KNOWN | ((__u32)BPF_CORE_READ(pkt, state, hook) << TT_NF_HOOK_SHIFT) |
	       ((__u32)BPF_CORE_READ(pkt, state, pf) << TT_NF_PF_SHIFT);
}

#endif

/* One event about skb (a `hook` constant in each inlined copy). `port`: the bridge port a
 * decision hop is about (br_forward, maybe_deliver): the event names that port's device, not
 * skb->dev, and carries its facts. What only a reported frame needs is read after the match. */
static __always_inline int report_skb(struct sk_buff *skb, __u16 hook, __u64 location, __u32 reason,
				      const int probed, void *port)
{
	unsigned char *eth = frame_start(skb, probed);
	struct net_device *dev = 0;
	const int port_hop = hook == TT_HOOK_FORWARD || hook == TT_HOOK_FLOOD_PORT;

	if (!eth || !concerns_watched_mac(eth))
		return 0;
#ifndef TT_BCC
	if (port_hop)
		reason |= port_facts(port, skb, &dev);
	else if (hook == TT_HOOK_EGRESS || hook == TT_HOOK_EGRESS_NF)
		reason = egress_facts(skb);
	else if (hook == TT_HOOK_TAP_XMIT)
		reason = tap_facts(skb);
#endif
	if (TT_CFG(learn) && hook == TT_HOOK_RECEIVE) {
		__u8 src[6];
		if (!bpf_probe_read_kernel(src, sizeof(src), eth + 6) && tt_mac48(src) == TT_CFG(watch_mac))
			learn_address(eth);
	}
#ifndef TT_BCC
	if (TT_CFG(trips)) {
		if (probed)
			cut_trip(skb);
		else if (follow_trip(skb, eth, hook, location, reason, dev))
			return 0;
	}
#endif

	struct tt_event *e = event_reserve();
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
	/* a port's device was read through BPF_CORE_READ: a number to the verifier, read likewise */
	if (port_hop)
		device_ids(dev, &e->netns, &e->ifindex, e->ifname, 1);
	else
		device_ids(skb_dev(probed, skb), &e->netns, &e->ifindex, e->ifname, probed);
	__u32 len = wire_len(skb, eth, probed);
	e->frame_len = len;
	e->cap_len = len < TT_SNAPLEN ? len : TT_SNAPLEN;
	if (bpf_probe_read_kernel(e->data, TT_SNAPLEN, eth))
		e->cap_len = 0;
	event_submit(e);
	return 0;
}

static __always_inline int report(struct sk_buff *skb, __u16 hook, __u64 location, __u32 reason)
{
	return report_skb(skb, hook, location, reason, 0, 0);
}

/* A device hands a received frame to the stack: on a bridge port this is the frame arriving
 * from the wire/peer; on the bridge device itself it is the bridge passing it up to the host. */
TT_TRACEPOINT(netif_receive_skb, tt_netif_receive_skb)
{
	return report((struct sk_buff *)TT_ARG(0), TT_HOOK_RECEIVE, 0, 0);
}

/* dev_queue_xmit() queues the frame on a device: the bridge sending it out of a port, or a
 * host/namespace stack sending it. For a tap this is the moment it enters the tap's queue. */
TT_TRACEPOINT(net_dev_queue, tt_net_dev_queue)
{
	return report((struct sk_buff *)TT_ARG(0), TT_HOOK_QUEUE, 0, 0);
}

#ifndef TT_BCC
/* Before the drop of a frame nft_do_chain() is ruling on (it freed the skb itself: a drop verdict),
 * the netfilter hop with that verdict (see nf_pending). */
static __always_inline void nf_hop_before_drop(struct sk_buff *skb)
{
	struct tt_nf_pending *p = nf_pending_slot();

	if (!p || !p->skb || p->skb != pending_key(p, skb))
		return;
	p->skb = 0;
	report(skb, TT_HOOK_NF_CHAIN, p->chain, p->facts | 0 /* NF_DROP */);
}
#endif

/* The skb is freed as a drop: the kernel says why (reason, 5.17+) and where (location, its
 * second argument on every kernel). Arguments are read by constant index: tp_btf's verifier
 * checks each against the tracepoint's BTF prototype, a raw tracepoint's attach against its
 * argument count, and the indexes this kernel lacks sit behind branches TT_CFG rules out. */
TT_TRACEPOINT(kfree_skb, tt_kfree_skb)
{
	__u32 reason = 0;

	/* Every kernel with a reason (5.17+) passes it third; one constant index only, since
	 * clang folds alternatives into a computed ctx offset, which the verifier refuses. */
	if (TT_CFG(kfree_reason_arg) == 2)
		reason = (__u32)TT_ARG(2);
#ifndef TT_BCC
	nf_hop_before_drop((struct sk_buff *)TT_ARG(0));
#endif
	return report((struct sk_buff *)TT_ARG(0), TT_HOOK_DROP, TT_ARG(1), reason);
}

/* The skb is freed after normal use; for a tap, tun_do_read() consuming it means the process
 * holding the tap fd (qemu, the guest) read the frame. The location argument exists from 6.3. */
TT_TRACEPOINT(consume_skb, tt_consume_skb)
{
	__u64 location = 0;

	if (TT_CFG(consume_location_arg) == 1)
		location = TT_ARG(1);
	return report((struct sk_buff *)TT_ARG(0), TT_HOOK_CONSUME, location, 0);
}

/* Bridge-internal: br_flood() is the bridge deciding to flood (destination unknown to the FDB,
 * or broadcast/multicast), which tracepoints can't tell from a forward to the only other port.
 * reason = pkt_type (0 unicast, 1 multicast, 2 broadcast) | local_rcv << 8. libbpf builds both
 * programs, off unless the loader turns one on; bcc builds the one the loader names, since it
 * loads every KFUNC_PROBE it compiles. */
#if !defined(TT_BCC) || defined(BRIDGE_HOOKS_FENTRY)
TT_FENTRY(br_flood, tt_br_flood_fentry, void *br, struct sk_buff *skb, __u64 pkt_type, __u64 local_rcv)
{
	return report_skb(skb, TT_HOOK_FLOOD, 0, (__u32)pkt_type | (((__u32)local_rcv & 1) << 8), 0, 0);
}
#endif

#if !defined(TT_BCC) || defined(BRIDGE_HOOKS_KPROBE)
/* The kprobe's arguments are registers (struct pt_regs: the architecture's ABI). */
TT_KPROBE(br_flood, tt_br_flood_kprobe)
{
	return report_skb((struct sk_buff *)PT_REGS_PARM2(ctx), TT_HOOK_FLOOD, 0,
			  (__u32)PT_REGS_PARM3(ctx) | (((__u32)PT_REGS_PARM4(ctx) & 1) << 8), 1, 0);
}
#endif

#ifndef TT_BCC
/* -- the bridge's and the tap's own decisions (libbpf only) --------------------------------------
 *
 * Where the kernel lets us into its functions (features.bridge_hook: fentry, else kprobe; through
 * the bridge's and tun's module BTF where they are modules), each of these marks a decision a
 * tracepoint can't show. libbpf builds a fentry and a kprobe program for each, off unless the
 * loader turns one of each on (tracer/libbpf_loader.py, BRIDGE_FUNCS). The fentry programs read
 * the skb with plain loads (a BTF-typed argument), the kprobes through BPF_CORE_READ; the port's
 * facts are read through BPF_CORE_READ in both, and only for a frame that concerns the watched
 * MAC. Each cuts the frame's in-kernel trip: its hops are stitched in user space from there on,
 * as after br_flood.
 *
 * bcc gets none of them: its offsets come from vmlinux's BTF, and these structs live in modules. */
/* br_forward(to, skb, local_rcv, local_orig): the bridge sends the frame to one port: the FDB
 * entry for its destination (br_handle_frame_finish), or the host's own frame (br_dev_xmit). */
TT_FENTRY(br_forward, tt_br_forward_fentry, void *to, struct sk_buff *skb, __u64 local_rcv)
{
	return report_skb(skb, TT_HOOK_FORWARD, 0, local_rcv & 1 ? TT_PORT_LOCAL_RCV : 0, 0, to);
}
TT_KPROBE(br_forward, tt_br_forward_kprobe)
{
	return report_skb((struct sk_buff *)PT_REGS_PARM2(ctx), TT_HOOK_FORWARD, 0,
			  PT_REGS_PARM3(ctx) & 1 ? TT_PORT_LOCAL_RCV : 0, 1, (void *)PT_REGS_PARM1(ctx));
}

/* maybe_deliver(prev, p, skb, local_orig): a flood offers the frame to port p; ports whose flood
 * flags (BR_FLOOD, BR_MCAST_FLOOD, BR_BCAST_FLOOD) say no were skipped before it. */
TT_FENTRY(maybe_deliver, tt_maybe_deliver_fentry, void *prev, void *p, struct sk_buff *skb)
{
	return report_skb(skb, TT_HOOK_FLOOD_PORT, 0, 0, 0, p);
}
TT_KPROBE(maybe_deliver, tt_maybe_deliver_kprobe)
{
	return report_skb((struct sk_buff *)PT_REGS_PARM3(ctx), TT_HOOK_FLOOD_PORT, 0, 0, 1, (void *)PT_REGS_PARM2(ctx));
}

/* br_pass_frame_up(skb): the bridge hands the frame to the host's stack (its FDB says the
 * destination is the bridge's own address, or the host wants a copy of a flood). */
TT_FENTRY(br_pass_frame_up, tt_br_pass_frame_up_fentry, struct sk_buff *skb)
{
	return report_skb(skb, TT_HOOK_PASS_UP, 0, 0, 0, 0);
}
TT_KPROBE(br_pass_frame_up, tt_br_pass_frame_up_kprobe)
{
	return report_skb((struct sk_buff *)PT_REGS_PARM1(ctx), TT_HOOK_PASS_UP, 0, 0, 1, 0);
}

/* br_dev_queue_push_xmit(net, sk, skb): the frame leaves by the port skb->dev now names, if it
 * fits that device's MTU (reason: the MTU). */
TT_FENTRY(br_dev_queue_push_xmit, tt_br_dev_queue_push_xmit_fentry, void *net, void *sk, struct sk_buff *skb)
{
	return report_skb(skb, TT_HOOK_EGRESS, 0, 0, 0, 0);
}
TT_KPROBE(br_dev_queue_push_xmit, tt_br_dev_queue_push_xmit_kprobe)
{
	return report_skb((struct sk_buff *)PT_REGS_PARM3(ctx), TT_HOOK_EGRESS, 0, 0, 1, 0);
}

/* br_nf_dev_queue_xmit(net, sk, skb): the same moment through br_netfilter (bridge-nf-call-*),
 * which refuses an oversized IP frame itself before br_dev_queue_push_xmit would. */
TT_FENTRY(br_nf_dev_queue_xmit, tt_br_nf_dev_queue_xmit_fentry, void *net, void *sk, struct sk_buff *skb)
{
	return report_skb(skb, TT_HOOK_EGRESS_NF, 0, 0, 0, 0);
}
TT_KPROBE(br_nf_dev_queue_xmit, tt_br_nf_dev_queue_xmit_kprobe)
{
	return report_skb((struct sk_buff *)PT_REGS_PARM3(ctx), TT_HOOK_EGRESS_NF, 0, 0, 1, 0);
}

/* tun_net_xmit(skb, dev): the tap takes the frame for the queue its holder reads; a drop right
 * after is the tap's own (no reader attached, its filter, a full queue). */
TT_FENTRY(tun_net_xmit, tt_tun_net_xmit_fentry, struct sk_buff *skb, struct net_device *dev)
{
	return report_skb(skb, TT_HOOK_TAP_XMIT, 0, 0, 0, 0);
}
TT_KPROBE(tun_net_xmit, tt_tun_net_xmit_kprobe)
{
	return report_skb((struct sk_buff *)PT_REGS_PARM1(ctx), TT_HOOK_TAP_XMIT, 0, 0, 1, 0);
}

/* nft_do_chain(pkt, chain): one of nf_tables' base chains (nft's own, or iptables-nft's and
 * ebtables-nft's) rules on the frame at its hook: the bridge family's hooks, or the ip/ip6 ones
 * br_netfilter sends bridged IP through. Its entry notes the frame, chain and hook (nf_pending);
 * its exit reports the hop with the verdict, the return value. No kprobe: before 5.11 nf_tables
 * has no BTF to read the chain by. */
TT_FENTRY(nft_do_chain, tt_nft_do_chain_fentry, struct nft_pktinfo___tt *pkt, void *chain)
{
	struct sk_buff *skb = pkt->skb;
	unsigned char *eth = frame_start(skb, 0);
	struct tt_nf_pending *p;

	if (!eth || !concerns_watched_mac(eth) || !(p = nf_pending_slot()))
		return 0;
	p->facts = nf_chain_facts(pkt, (__u64)chain);
	p->chain = (__u64)chain;
	p->skb = pending_key(p, skb);
	return 0;
}
TT_FEXIT(nft_do_chain, tt_nft_do_chain_fexit, struct nft_pktinfo___tt *pkt, void *chain, unsigned int verdict)
{
	struct tt_nf_pending *p = nf_pending_slot();
	struct sk_buff *skb = pkt->skb;

	/* no slot for it: not followed, or its skb was freed inside (nf_hop_before_drop said it) */
	if (!p || !p->skb || p->skb != pending_key(p, skb) || p->chain != (__u64)chain)
		return 0;
	p->skb = 0;
	return report(skb, TT_HOOK_NF_CHAIN, (__u64)chain, p->facts | (verdict & TT_NF_VERDICT_MASK));
}
#endif /* !TT_BCC: bridge decisions */
