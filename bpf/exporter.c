/* tapttrace exporter: count, in the kernel, what every bridge does with the frames it receives.
 *
 * No per-packet event reaches user space: every hook updates per-CPU counters that the exporter
 * reads at scrape time. The hot path is filtered first on skb->dev: user space keeps `devs`
 * (netns inode, ifindex) -> role for bridge ports, taps and bridge devices, so a frame on any
 * other device costs two reads and one hash lookup.
 *
 * A frame's verdict uses the words of `tapttrace follow` (tracer/stitch.py):
 *   forwarded  its only copy left by a (non-tap) bridge port
 *   flooded    more than one copy came out of the bridge (ports and/or the host)
 *   local      the bridge passed it up to the host and nowhere else
 *   dropped    it ended in kfree_skb before leaving the bridge
 *   delivered  its only copy went to a tap and the guest read it
 * The original skb is tracked from the port it arrived on (`frames`, LRU keyed by skb address);
 * clones made for a flood share the original's data buffer, so a clone is recognised at
 * net_dev_queue by skb->head (`heads`). The bridge makes every clone before the original leaves
 * (br_flood() sends the original last, or passes it up after the clones), so when the original
 * leaves the number of copies is known and the verdict can be counted at once; only a single
 * copy queued on a tap waits for the guest's read (consume_skb) or the drop.
 *
 * Kernel struct offsets come as -D constants from BTF (tracer/features.py, tracer/exporter/program.py).
 */
#include "exporter.h"

#ifndef MAX_SERIES
#define MAX_SERIES 16384
#endif
#ifndef MAX_FRAMES
#define MAX_FRAMES 65536
#endif

BPF_HASH(devs, struct ttx_dev_key, struct ttx_dev_val, 4096);
/* Per-MAC (low 40 bits: a libvirt tap's fe: MAC and its guest's 52: MAC agree there) -> tap, to
 * tell "addressed to a VM but consumed by the host". A MAC is a map key here, never a label. */
BPF_HASH(vm_macs, __u64, struct ttx_dev_key, 4096);

struct ttx_frame {
	__u32 netns;
	__u32 bridge;
	__u32 in_port;
	__u32 out_port;
	__u32 clones;
	__u32 pending_tap; /* the single copy is queued on tap out_port: wait for read or drop */
};
BPF_TABLE("lru_hash", __u64, struct ttx_frame, frames, MAX_FRAMES);
BPF_TABLE("lru_hash", __u64, __u64, heads, MAX_FRAMES);
/* skbs queued on a tap -> the tap, until the guest reads them or they are dropped */
BPF_TABLE("lru_hash", __u64, struct ttx_dev_key, tapq, MAX_FRAMES);

BPF_PERCPU_HASH(verdicts, struct ttx_verdict_key, __u64, MAX_SERIES);
BPF_PERCPU_HASH(drops, struct ttx_drop_key, __u64, MAX_SERIES);
BPF_PERCPU_HASH(taps, struct ttx_tap_key, __u64, MAX_SERIES);
BPF_PERCPU_HASH(fdb, struct ttx_fdb_key, __u64, MAX_SERIES);
BPF_PERCPU_ARRAY(health, __u64, TTX_H_MAX);

static __always_inline void health_inc(int idx)
{
	__u64 *n = health.lookup(&idx);
	if (n)
		*n += 1;
}

/* Per-CPU hash counters: a new series is inserted with value 1 (each CPU has its own copy, so no
 * atomics are needed); a full map is counted, not silently ignored. bcc wants map calls outside
 * macros, hence one small function per map. */
static __always_inline void count_verdicts(struct ttx_verdict_key *k)
{
	__u64 *v = verdicts.lookup(k);
	if (v) {
		*v += 1;
		return;
	}
	__u64 one = 1;
	if (verdicts.update(k, &one))
		health_inc(TTX_H_COUNTER_FULL);
}

static __always_inline void count_drops(struct ttx_drop_key *k)
{
	__u64 *v = drops.lookup(k);
	if (v) {
		*v += 1;
		return;
	}
	__u64 one = 1;
	if (drops.update(k, &one))
		health_inc(TTX_H_COUNTER_FULL);
}

static __always_inline void count_taps(struct ttx_tap_key *k)
{
	__u64 *v = taps.lookup(k);
	if (v) {
		*v += 1;
		return;
	}
	__u64 one = 1;
	if (taps.update(k, &one))
		health_inc(TTX_H_COUNTER_FULL);
}

static __always_inline void count_fdb(struct ttx_fdb_key *k)
{
	__u64 *v = fdb.lookup(k);
	if (v) {
		*v += 1;
		return;
	}
	__u64 one = 1;
	if (fdb.update(k, &one))
		health_inc(TTX_H_COUNTER_FULL);
}

static __always_inline __u64 skb_dev(__u64 skb)
{
	__u64 dev = 0;
	bpf_probe_read_kernel(&dev, sizeof(dev), (void *)(skb + OFF_SKB_DEV));
	return dev;
}

static __always_inline void dev_key(__u64 dev, struct ttx_dev_key *k)
{
	k->netns = 0;
	k->ifindex = 0;
	if (!dev)
		return;
	bpf_probe_read_kernel(&k->ifindex, sizeof(k->ifindex), (void *)(dev + OFF_NETDEV_IFINDEX));
#if defined(OFF_NETDEV_NET) && defined(OFF_NET_INUM)
	__u64 net = 0;
	bpf_probe_read_kernel(&net, sizeof(net), (void *)(dev + OFF_NETDEV_NET));
	if (net)
		bpf_probe_read_kernel(&k->netns, sizeof(k->netns), (void *)(net + OFF_NET_INUM));
#endif
}

static __always_inline __u64 skb_head(__u64 skb)
{
	__u64 head = 0;
	bpf_probe_read_kernel(&head, sizeof(head), (void *)(skb + OFF_SKB_HEAD));
	return head;
}

static __always_inline void count_verdict(struct ttx_frame *f, __u32 out_port, __u32 verdict)
{
	struct ttx_verdict_key k = {};
	k.netns = f->netns;
	k.bridge = f->bridge;
	k.in_port = f->in_port;
	k.out_port = out_port;
	k.verdict = verdict;
	count_verdicts(&k);
}

static __always_inline void forget(__u64 skb)
{
	__u64 head = skb_head(skb);
	__u64 *owner = heads.lookup(&head);
	if (owner && *owner == skb)
		heads.delete(&head);
	frames.delete(&skb);
}

static __always_inline void track(__u64 skb, struct ttx_dev_key *k, __u32 bridge)
{
	struct ttx_frame f = {};
	f.netns = k->netns;
	f.bridge = bridge;
	f.in_port = k->ifindex;
	if (frames.update(&skb, &f)) {
		health_inc(TTX_H_FRAME_TABLE_FULL);
		return;
	}
	__u64 head = skb_head(skb);
	heads.update(&head, &skb);
}

/* The frame's Ethernet destination, as the low 40 bits (see vm_macs). */
static __always_inline __u64 dst_mac40(__u64 skb)
{
	__u64 head = 0;
	__u16 mac_header = 0xffff;
	__u8 d[6];
	bpf_probe_read_kernel(&head, sizeof(head), (void *)(skb + OFF_SKB_HEAD));
	bpf_probe_read_kernel(&mac_header, sizeof(mac_header), (void *)(skb + OFF_SKB_MAC_HEADER));
	if (mac_header == 0xffff || bpf_probe_read_kernel(d, sizeof(d), (void *)(head + mac_header)))
		return 0;
	if (d[0] & 1) /* broadcast/multicast: addressed to everyone, not to one VM */
		return 0;
	return ((__u64)d[1] << 32) | ((__u64)d[2] << 24) | ((__u64)d[3] << 16) | ((__u64)d[4] << 8) | d[5];
}

/* A device hands a received frame to the stack. On a bridge port: a frame entering the bridge.
 * On the bridge device: the bridge passing the frame up to the host. */
RAW_TRACEPOINT_PROBE(netif_receive_skb)
{
	__u64 skb = ctx->args[0];
	struct ttx_dev_key k;
	dev_key(skb_dev(skb), &k);
	struct ttx_dev_val *role = devs.lookup(&k);
	if (!role)
		return 0;
	if (role->role & TTX_ROLE_PORT) {
		track(skb, &k, role->bridge);
		return 0;
	}
	if (!(role->role & TTX_ROLE_BRIDGE))
		return 0;
	struct ttx_frame *f = frames.lookup(&skb);
	if (!f || f->bridge != k.ifindex || f->netns != k.netns || f->pending_tap)
		return 0;
	if (f->clones) {
		count_verdict(f, 0, TTX_V_FLOODED);
	} else {
		count_verdict(f, k.ifindex, TTX_V_LOCAL);
		__u64 mac = dst_mac40(skb);
		struct ttx_dev_key *tap = mac ? vm_macs.lookup(&mac) : 0;
		if (tap && tap->netns == k.netns) {
			struct ttx_tap_key tk = {};
			tk.netns = tap->netns;
			tk.ifindex = tap->ifindex;
			tk.event = TTX_TAP_LOCAL;
			count_taps(&tk);
		}
	}
	forget(skb);
	return 0;
}

/* dev_queue_xmit() on a device: the bridge sending a copy out of a port, or the host sending
 * through the bridge device. On a tap, the frame enters the queue the guest reads. */
RAW_TRACEPOINT_PROBE(net_dev_queue)
{
	__u64 skb = ctx->args[0];
	struct ttx_dev_key k;
	dev_key(skb_dev(skb), &k);
	struct ttx_dev_val *role = devs.lookup(&k);
	if (!role)
		return 0;
	if (role->role & TTX_ROLE_TAP) {
		struct ttx_tap_key tk = {};
		tk.netns = k.netns;
		tk.ifindex = k.ifindex;
		tk.event = TTX_TAP_QUEUED;
		count_taps(&tk);
		tapq.update(&skb, &k);
	}
	if (role->role & TTX_ROLE_BRIDGE) {
		/* The host sends through the bridge: the bridge device is the frame's way in. */
		track(skb, &k, k.ifindex);
		return 0;
	}
	if (!(role->role & TTX_ROLE_PORT))
		return 0;
	struct ttx_frame *f = frames.lookup(&skb);
	if (f) {
		if (f->pending_tap || f->bridge != role->bridge || f->netns != k.netns)
			return 0;
		if (f->clones) {
			count_verdict(f, 0, TTX_V_FLOODED);
		} else if (role->role & TTX_ROLE_TAP) {
			f->out_port = k.ifindex;
			f->pending_tap = 1;
			return 0;
		} else {
			count_verdict(f, k.ifindex, TTX_V_FORWARDED);
		}
		forget(skb);
		return 0;
	}
	/* Not a frame we track: a clone of one (same data buffer) is a flood copy. */
	__u64 head = skb_head(skb);
	__u64 *orig = heads.lookup(&head);
	if (!orig)
		return 0;
	__u64 o = *orig;
	f = frames.lookup(&o);
	if (f && !f->pending_tap && f->bridge == role->bridge && f->netns == k.netns)
		f->clones += 1;
	return 0;
}

static __always_inline void tap_done(__u64 skb, __u32 event, __u32 reason)
{
	struct ttx_dev_key *tap = tapq.lookup(&skb);
	if (!tap)
		return;
	struct ttx_tap_key tk = {};
	tk.netns = tap->netns;
	tk.ifindex = tap->ifindex;
	tk.event = event;
	tk.reason = reason;
	count_taps(&tk);
	tapq.delete(&skb);
}

/* The skb is freed as a drop; the kernel says why (reason) and where (location). */
RAW_TRACEPOINT_PROBE(kfree_skb)
{
	__u64 skb = ctx->args[0];
#ifdef ARG_KFREE_REASON
	__u32 reason = (__u32)ctx->args[ARG_KFREE_REASON];
#else
	__u32 reason = 0;
#endif
	struct ttx_dev_key k;
	dev_key(skb_dev(skb), &k);
	struct ttx_drop_key dk = {};
	dk.location = ctx->args[ARG_KFREE_LOCATION];
	dk.reason = reason;
	dk.netns = k.netns;
	dk.ifindex = k.ifindex;
	if (!devs.lookup(&k)) {
		/* skb->dev is none of ours (e.g. moved or cleared): a tracked frame still counts, on
		 * the port it came in by. */
		struct ttx_frame *tf = frames.lookup(&skb);
		if (!tf)
			return 0;
		dk.netns = tf->netns;
		dk.ifindex = tf->in_port;
	}
	count_drops(&dk);
	tap_done(skb, TTX_TAP_DROPPED, reason);
	struct ttx_frame *f = frames.lookup(&skb);
	if (f) {
		if (f->pending_tap)
			count_verdict(f, 0, TTX_V_DROPPED);
		else
			count_verdict(f, 0, f->clones ? TTX_V_FLOODED : TTX_V_DROPPED);
		forget(skb);
	}
	return 0;
}

/* The skb is freed after normal use. For an skb queued on a tap, tun_do_read() consuming it is
 * the guest (qemu) reading the frame. */
RAW_TRACEPOINT_PROBE(consume_skb)
{
	__u64 skb = ctx->args[0];
	struct ttx_dev_key k;
	/* Filter first, as the other hooks: an skb we track is still on one of our devices here
	 * (the tap it was queued on, or the port/bridge it was freed by). */
	dev_key(skb_dev(skb), &k);
	if (!devs.lookup(&k))
		return 0;
	tap_done(skb, TTX_TAP_DELIVERED, 0);
	struct ttx_frame *f = frames.lookup(&skb);
	if (!f)
		return 0;
	if (f->pending_tap)
		count_verdict(f, f->out_port, TTX_V_DELIVERED);
	else
		/* Freed inside the bridge without a drop: the host took it (as follow says). */
		count_verdict(f, f->clones ? 0 : f->bridge, f->clones ? TTX_V_FLOODED : TTX_V_LOCAL);
	forget(skb);
	return 0;
}

/* FDB learning. br_fdb_update(br, source, addr, vid, flags) fires when an entry is created
 * (learned) or changes port (moved); which one is told apart by remembering, per bridge, MAC and
 * VLAN, the port last seen. fdb_delete(br, f) fires when an entry goes. */
struct ttx_fdb_seen_key {
	__u64 br;
	__u8 addr[6];
	__u16 vid;
};
BPF_TABLE("lru_hash", struct ttx_fdb_seen_key, __u32, fdb_seen, 65536);

static __always_inline void br_key(__u64 br, struct ttx_dev_key *k)
{
	__u64 dev = 0;
	bpf_probe_read_kernel(&dev, sizeof(dev), (void *)(br + OFF_BR_DEV));
	dev_key(dev, k);
}

static __always_inline __u32 port_ifindex(__u64 port)
{
	__u64 dev = 0;
	__u32 ifindex = 0;
	if (!port)
		return 0;
	bpf_probe_read_kernel(&dev, sizeof(dev), (void *)(port + OFF_BRPORT_DEV));
	if (dev)
		bpf_probe_read_kernel(&ifindex, sizeof(ifindex), (void *)(dev + OFF_NETDEV_IFINDEX));
	return ifindex;
}

RAW_TRACEPOINT_PROBE(br_fdb_update)
{
	__u64 br = ctx->args[0];
	struct ttx_dev_key bk;
	br_key(br, &bk);
	if (!devs.lookup(&bk)) /* not a bridge we watch */
		return 0;
	struct ttx_fdb_key fk = {};
	fk.netns = bk.netns;
	fk.bridge = bk.ifindex;
	fk.port = port_ifindex(ctx->args[1]);
	struct ttx_fdb_seen_key sk = {};
	sk.br = br;
	bpf_probe_read_kernel(sk.addr, sizeof(sk.addr), (void *)ctx->args[2]);
	sk.vid = (__u16)ctx->args[3];
	__u32 *was = fdb_seen.lookup(&sk);
	fk.event = (was && *was != fk.port) ? TTX_FDB_MOVED : TTX_FDB_LEARNED;
	if (was && *was == fk.port)
		return 0; /* not a change */
	fdb_seen.update(&sk, &fk.port);
	count_fdb(&fk);
	return 0;
}

RAW_TRACEPOINT_PROBE(fdb_delete)
{
	__u64 br = ctx->args[0];
	__u64 f = ctx->args[1];
	struct ttx_dev_key bk;
	br_key(br, &bk);
	if (!devs.lookup(&bk)) /* not a bridge we watch */
		return 0;
	struct ttx_fdb_key fk = {};
	fk.netns = bk.netns;
	fk.bridge = bk.ifindex;
	fk.event = TTX_FDB_DELETED;
	__u64 port = 0;
	bpf_probe_read_kernel(&port, sizeof(port), (void *)(f + OFF_FDB_DST));
	fk.port = port_ifindex(port);
	struct ttx_fdb_seen_key sk = {};
	sk.br = br;
	bpf_probe_read_kernel(sk.addr, sizeof(sk.addr), (void *)(f + OFF_FDB_ADDR));
	bpf_probe_read_kernel(&sk.vid, sizeof(sk.vid), (void *)(f + OFF_FDB_VID));
	fdb_seen.delete(&sk);
	count_fdb(&fk);
	return 0;
}
