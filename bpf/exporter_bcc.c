/* tapttrace exporter: count, in the kernel, what every bridge does with the frames it receives.
 *
 * No per-packet event reaches user space: every hook updates per-CPU counters that the exporter
 * reads at scrape time. The hot path is filtered first on skb->dev: user space keeps `devs`
 * (netns inode, ifindex) -> role for bridge ports, taps and bridge devices; the hooks look the
 * net_device pointer up in `devc`, a per-CPU cache of that answer (role 0: not ours) tagged with
 * `devgen`, which user space bumps whenever it changes `devs`. A frame on any device costs one
 * read (skb->dev) and an inlined array lookup; the netns/ifindex reads and the hash lookup happen
 * once per device, CPU and generation.
 *
 * Measured per hit on this kind of machine (bench/FINDINGS.md): a bpf_probe_read_kernel ≈ 25–55
 * ns, a hash lookup ≈ 40–50 ns, a per-CPU hash counter ≈ 25 ns, an array lookup ≈ 0 (inlined),
 * a hash update + delete ≈ 400–550 ns. So no hash is updated per frame on the common path.
 *
 * A frame's verdict uses the words of `tapttrace follow` (tracer/stitch.py):
 *   forwarded  its only copy left by a (non-tap) bridge port
 *   flooded    more than one copy came out of the bridge (ports and/or the host)
 *   local      the bridge passed it up to the host and nowhere else
 *   dropped    it ended in kfree_skb before leaving the bridge
 *   delivered  its only copy went to a tap and the guest read it
 * From the port it arrives on until its original leaves, a frame is in the bridge's hands on one
 * CPU, in one softirq (or BH-disabled) section: receive, netfilter, forward/flood, and the
 * dev_queue_xmit() of each copy run synchronously. So the frame being bridged is kept in a
 * one-entry per-CPU slot (`cur`, no hash, no lock); clones made for a flood share the original's
 * data buffer and are recognised at net_dev_queue by skb->head. The bridge makes every clone
 * before the original leaves (br_flood() sends the original last, or passes it up after the
 * clones), so when the original leaves the number of copies is known and the verdict is counted
 * at once. Only an skb queued on a tap outlives that section (the guest reads it later, on
 * another CPU): `qtab`/`tapq` hold it until it is read or dropped, with the frame's bridge and
 * port when it is the frame's only copy (verdict pending).
 *
 * Kernel struct offsets come as -D constants from BTF (tracer/features.py, tracer/exporter/program.py).
 */
#include "exporter.h"
#include "kernel_compat.h"

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

/* net_device pointer -> what `devs` said of it (role 0: not watched), valid while gen == devgen[0].
 * A per-CPU direct-mapped cache (array lookups are inlined by the verifier: no helper call, no
 * lock); two devices sharing a slot just ask `devs` again in turn. */
struct ttx_devc {
	__u64 dev;
	__u64 gen;
	__u32 netns;
	__u32 ifindex;
	__u32 role;
	__u32 bridge;
};
#define DEVC_BITS 8
BPF_PERCPU_ARRAY(devc, struct ttx_devc, 1 << DEVC_BITS);
BPF_ARRAY(devgen, __u64, 1);

#define GOLDEN 0x9E3779B97F4A7C15ULL
static __always_inline __u32 slot_of(__u64 ptr, int bits)
{
	return (__u32)((ptr * GOLDEN) >> (64 - bits));
}

/* The frame this CPU's bridge is working on (skb 0: none). */
struct ttx_cur {
	__u64 skb;
	__u32 netns;
	__u32 bridge;
	__u32 in_port;
	__u32 clones;
};
BPF_PERCPU_ARRAY(cur, struct ttx_cur, 1);

/* An skb queued on a tap, until the guest reads it or it is dropped. bridge != 0: the frame's
 * only copy, whose verdict (delivered or dropped) waits for that. Written on the CPU that queues,
 * read on the CPU that reads (the tap's ring orders the two). A direct-mapped table keyed by the
 * skb's address (`qtab`: claimed with a compare-and-swap, no helper call, no lock); an skb whose
 * slot is taken goes to `tapq` (LRU hash, per-CPU LRU lists) instead. */
struct ttx_queued {
	__u32 netns;
	__u32 ifindex;
	__u32 bridge;
	__u32 in_port;
};
struct ttx_qslot {
	__u64 skb; /* 0: free */
	struct ttx_queued q;
};
#define QTAB_BITS 16
BPF_ARRAY(qtab, struct ttx_qslot, 1 << QTAB_BITS);
BPF_F_TABLE("lru_hash", __u64, struct ttx_queued, tapq, MAX_FRAMES, BPF_F_NO_COMMON_LRU);

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

/* What we watch `dev` as: fills *d and returns its role bits, 0 for a device we don't watch. */
static __always_inline __u32 dev_role(__u64 dev, struct ttx_devc *d)
{
	if (!dev)
		return 0;
	int zero = 0;
	__u64 *gen = devgen.lookup(&zero);
	if (!gen)
		return 0;
	__u64 g = *gen;
	int i = slot_of(dev, DEVC_BITS);
	struct ttx_devc *c = devc.lookup(&i);
	if (!c)
		return 0;
	if (c->dev != dev || c->gen != g) {
		/* First sight of this device in this generation: ask `devs` (read after the
		 * generation, so a change made meanwhile leaves this entry outdated, never wrong for
		 * long). */
		struct ttx_dev_key k;
		dev_key(dev, &k);
		struct ttx_dev_val *v = devs.lookup(&k);
		c->dev = dev;
		c->gen = g;
		c->netns = k.netns;
		c->ifindex = k.ifindex;
		c->role = v ? v->role : 0;
		c->bridge = v ? v->bridge : 0;
	}
	*d = *c;
	return d->role;
}

static __always_inline __u64 skb_head(__u64 skb)
{
	__u64 head = 0;
	bpf_probe_read_kernel(&head, sizeof(head), (void *)(skb + OFF_SKB_HEAD));
	return head;
}

static __always_inline void count_verdict(__u32 netns, __u32 bridge, __u32 in_port, __u32 out_port, __u32 verdict)
{
	struct ttx_verdict_key k = {};
	k.netns = netns;
	k.bridge = bridge;
	k.in_port = in_port;
	k.out_port = out_port;
	k.verdict = verdict;
	count_verdicts(&k);
}

static __always_inline struct ttx_cur *cur_slot(void)
{
	int zero = 0;
	return cur.lookup(&zero);
}

/* This CPU's bridge is working on skb: its slot, else 0. */
static __always_inline struct ttx_cur *cur_frame(__u64 skb)
{
	struct ttx_cur *f = cur_slot();
	if (f && f->skb == skb)
		return f;
	return 0;
}

static __always_inline void track(__u64 skb, __u32 netns, __u32 bridge, __u32 in_port)
{
	struct ttx_cur *f = cur_slot();
	if (!f)
		return;
	f->skb = skb;
	f->netns = netns;
	f->bridge = bridge;
	f->in_port = in_port;
	f->clones = 0;
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
	struct ttx_devc d;
	__u32 role = dev_role(skb_dev(skb), &d);
	if (role & TTX_ROLE_PORT) {
		track(skb, d.netns, d.bridge, d.ifindex);
		return 0;
	}
	if (!(role & TTX_ROLE_BRIDGE))
		return 0;
	struct ttx_cur *f = cur_frame(skb);
	if (!f || f->bridge != d.ifindex || f->netns != d.netns)
		return 0;
	if (f->clones) {
		count_verdict(f->netns, f->bridge, f->in_port, 0, TTX_V_FLOODED);
	} else {
		count_verdict(f->netns, f->bridge, f->in_port, d.ifindex, TTX_V_LOCAL);
		__u64 mac = dst_mac40(skb);
		struct ttx_dev_key *tap = mac ? vm_macs.lookup(&mac) : 0;
		if (tap && tap->netns == d.netns) {
			struct ttx_tap_key tk = {};
			tk.netns = tap->netns;
			tk.ifindex = tap->ifindex;
			tk.event = TTX_TAP_LOCAL;
			count_taps(&tk);
		}
	}
	f->skb = 0;
	return 0;
}

/* dev_queue_xmit() on a device: the bridge sending a copy out of a port, or the host sending
 * through the bridge device. On a tap, the frame enters the queue the guest reads. */
RAW_TRACEPOINT_PROBE(net_dev_queue)
{
	__u64 skb = ctx->args[0];
	struct ttx_devc d;
	__u32 role = dev_role(skb_dev(skb), &d);
	if (!role)
		return 0;
	if (role & TTX_ROLE_BRIDGE) {
		/* The host sends through the bridge: the bridge device is the frame's way in. */
		track(skb, d.netns, d.ifindex, d.ifindex);
		return 0;
	}
	struct ttx_queued q = {};
	if (role & TTX_ROLE_PORT) {
		struct ttx_cur *f = cur_slot();
		if (f && f->skb == skb) {
			/* The original leaves: every clone has been made. */
			if (f->bridge == d.bridge && f->netns == d.netns) {
				if (f->clones) {
					count_verdict(f->netns, f->bridge, f->in_port, 0, TTX_V_FLOODED);
				} else if (role & TTX_ROLE_TAP) {
					q.bridge = f->bridge; /* its only copy: the verdict waits for read or drop */
					q.in_port = f->in_port;
				} else {
					count_verdict(f->netns, f->bridge, f->in_port, d.ifindex, TTX_V_FORWARDED);
				}
				f->skb = 0;
			}
		} else if (f && f->skb && f->bridge == d.bridge && f->netns == d.netns &&
			   skb_head(skb) == skb_head(f->skb)) {
			/* A clone of the frame being bridged (same data buffer): a flood copy. The heads are
			 * read here, not on entry: most frames are never cloned. */
			f->clones += 1;
		}
	}
	if (role & TTX_ROLE_TAP) {
		struct ttx_tap_key tk = {};
		tk.netns = d.netns;
		tk.ifindex = d.ifindex;
		tk.event = TTX_TAP_QUEUED;
		count_taps(&tk);
		q.netns = d.netns;
		q.ifindex = d.ifindex;
		int i = slot_of(skb, QTAB_BITS);
		struct ttx_qslot *s = qtab.lookup(&i);
		if (s) {
			/* Free, or held by this very address (an entry whose end we missed). */
			__u64 was = tt_cas_u64(&s->skb, 0, skb);
			if (was == 0 || was == skb) {
				s->q = q;
				return 0;
			}
		}
		if (tapq.update(&skb, &q) && q.bridge)
			health_inc(TTX_H_FRAME_TABLE_FULL);
	}
	return 0;
}

/* An skb queued on a tap is read (event TTX_TAP_DELIVERED) or dropped: count it for the tap,
 * and its frame's verdict when it was the frame's only copy. */
static __always_inline void tap_done(__u64 skb, __u32 event, __u32 reason)
{
	struct ttx_queued q;
	int i = slot_of(skb, QTAB_BITS);
	struct ttx_qslot *s = qtab.lookup(&i);
	if (s && s->skb == skb) {
		q = s->q;
		s->skb = 0;
	} else {
		struct ttx_queued *h = tapq.lookup(&skb);
		if (!h)
			return;
		q = *h;
		tapq.delete(&skb);
	}
	struct ttx_tap_key tk = {};
	tk.netns = q.netns;
	tk.ifindex = q.ifindex;
	tk.event = event;
	tk.reason = reason;
	count_taps(&tk);
	if (q.bridge) {
		if (event == TTX_TAP_DELIVERED)
			count_verdict(q.netns, q.bridge, q.in_port, q.ifindex, TTX_V_DELIVERED);
		else
			count_verdict(q.netns, q.bridge, q.in_port, 0, TTX_V_DROPPED);
	}
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
	struct ttx_devc d;
	__u32 role = dev_role(skb_dev(skb), &d);
	struct ttx_cur *f = cur_frame(skb);
	struct ttx_drop_key dk = {};
	dk.location = ctx->args[ARG_KFREE_LOCATION];
	dk.reason = reason;
	if (role) {
		dk.netns = d.netns;
		dk.ifindex = d.ifindex;
	} else {
		/* skb->dev is none of ours (e.g. moved or cleared): a frame being bridged still counts,
		 * on the port it came in by. */
		if (!f)
			return 0;
		dk.netns = f->netns;
		dk.ifindex = f->in_port;
	}
	count_drops(&dk);
	if (role)
		tap_done(skb, TTX_TAP_DROPPED, reason);
	if (f) {
		count_verdict(f->netns, f->bridge, f->in_port, 0, f->clones ? TTX_V_FLOODED : TTX_V_DROPPED);
		f->skb = 0;
	}
	return 0;
}

/* The skb is freed after normal use. For an skb queued on a tap, tun_do_read() consuming it is
 * the guest (qemu) reading the frame. */
RAW_TRACEPOINT_PROBE(consume_skb)
{
	__u64 skb = ctx->args[0];
	struct ttx_devc d;
	/* Filter first, as the other hooks: an skb we track is still on one of our devices here
	 * (the tap it was queued on, or the port/bridge it was freed by). */
	__u32 role = dev_role(skb_dev(skb), &d);
	if (!role)
		return 0;
	if (role & TTX_ROLE_TAP)
		tap_done(skb, TTX_TAP_DELIVERED, 0);
	struct ttx_cur *f = cur_frame(skb);
	if (!f)
		return 0;
	/* Freed inside the bridge without a drop: the host took it (as follow says). */
	count_verdict(f->netns, f->bridge, f->in_port, f->clones ? 0 : f->bridge, f->clones ? TTX_V_FLOODED : TTX_V_LOCAL);
	f->skb = 0;
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
