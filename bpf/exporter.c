/* tapttrace exporter: count, in the kernel, what every bridge does with the frames it receives.
 *
 * One source for both loaders (bpf/loaders.h says how): libbpf builds it once into a CO-RE object
 * of tp_btf programs (tracer/libbpf_loader.py, loaded by tracer/exporter/program_btf.py); bcc
 * compiles it with -DTT_BCC into raw tracepoints where libbpf can't be used or this kernel's
 * verifier refuses the object (tracer/exporter/program.py; tracer/features.py's loader chain).
 * Both hand the same maps to the same user-space code (program.py, ExporterMaps).
 *
 * No per-packet event reaches user space: every hook updates per-CPU counters that the exporter
 * reads at scrape time. The hot path is filtered first on skb->dev: user space keeps `devs`
 * (netns inode, ifindex) -> role for bridge ports, taps and bridge devices; the hooks look the
 * net_device pointer up in `devc`, a per-CPU cache of that answer (role 0: not ours) tagged with
 * `devgen`, which user space bumps at every refresh of `devs` (tracer/exporter/maps.py says why).
 * A frame on any device costs one read (skb->dev) and an inlined array lookup; the netns/ifindex
 * reads and the hash lookup happen once per device, CPU and generation.
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
 * Counters: what a frame forwarded or delivered to a tap costs is counted in per-CPU *arrays*,
 * whose lookups the verifier inlines, not in per-CPU hashes (a helper call, ≈ 40-55 ns a lookup
 * here, more for an insert). User space gives every watched device a small index (`devs`' value:
 * struct ttx_dev_ent in exporter.h); `devcnt[idx]` holds the tap queued/delivered counts and the
 * flooded/local/dropped verdicts of frames that came in by it; `pairs[in_idx << TTX_DEV_BITS |
 * out_idx]` names a slot of `paircnt` for the forwarded and delivered verdicts of one (in port,
 * out port) pair, assigned by user space for every pair of one bridge. The hash maps stay for what
 * has no bounded index (drops by reason and location, taps dropped by reason, tap `local`, FDB
 * events) and as the fallback for a device or pair that got no index (tables full); user space
 * adds both up into the same keys.
 *
 * The bridge's FDB decisions (forward, local, flood) are counted apart from the verdicts, at its
 * own functions where fentry or kprobes reach them, one hit per decision (the end of this file).
 *
 * Kernel memory: under libbpf the skb is a BTF-typed pointer, so skb->dev, skb->head,
 * skb->mac_header, dev->ifindex and dev->nd_net.net->ns.inum are plain loads (CO-RE relocated
 * against the running kernel's BTF); under bcc each is a bpf_probe_read_kernel at an offset
 * tracer/features.py read from BTF (-DOFF_*: TT_FIELD). The bridge's own structs (FDB hooks,
 * cold) are read through BPF_CORE_READ with local `___tt` flavours under libbpf, so the object
 * relocates whether the bridge is built in (vmlinux BTF) or a module (/sys/kernel/btf/bridge);
 * under bcc at the offsets tracer/exporter/program.py's bridge_offsets() read (-DOFF_BR_*).
 *
 * Sizes: the hash maps' and paircnt's max_entries are MAX_SERIES, MAX_FRAMES, MAX_PAIRS: -D under
 * bcc, set before load under libbpf (bpf_map__set_max_entries); DEVC_BITS, QTAB_BITS and
 * TTX_DEV_BITS are constants of this file (the masks are in the code). Per-run values (which
 * tracepoint argument carries the drop reason) are TT_CFG(). The compare-and-swap on qtab needs
 * -mcpu=v3 (tracer/libbpf_loader.py builds with it) and 5.12 (bpf/kernel_compat.h).
 *
 * Pointers as numbers: the verifier refuses arithmetic other than +/- on a BTF pointer, and the
 * hash of a slot multiplies. A privileged program may store a pointer into map memory and load
 * it back, where it is a plain scalar (addr()): skb and dev go through this CPU's `cur` slot once
 * per hook and are numbers from then on (under bcc they are numbers already: the same code).
 */
#include "loaders.h"
#include "exporter.h"
#include "kernel_compat.h"

#ifndef TT_BCC
/* Set before load by tracer/exporter/program_btf.py, packed as "<iI" (checked against .rodata's
 * size). bcc gets the same field as -DTT_CFG_kfree_reason_arg=… (tracer/exporter/program.py). */
struct ttx_config {
	__s32 kfree_reason_arg; /* ctx index of kfree_skb's drop reason (2), -1 = none */
	__u32 rdonly_cast;	/* 1: the kernel has the bpf_rdonly_cast kfunc (6.2+) */
};
const volatile struct ttx_config tt_config = {
	.kfree_reason_arg = -1,
	.rdonly_cast = 0,
};
#endif

/* Sizes from -D (bcc); libbpf's loader sets them before load. */
#ifndef MAX_SERIES
#define MAX_SERIES 16384 /* counter maps (--max-kernel-series) */
#endif
#ifndef MAX_FRAMES
#define MAX_FRAMES 65536 /* tapq */
#endif
#ifndef MAX_PAIRS
#define MAX_PAIRS 4096 /* paircnt */
#endif
#define MAX_DEVS (1 << TTX_DEV_BITS)
#define DEV_MASK (MAX_DEVS - 1)
#define TTX_NO_COMMON_LRU 2 /* BPF_F_NO_COMMON_LRU */

#ifndef TT_BCC
/* The bridge's structs, as far as the FDB hooks read them (libbpf matches `net_bridge___tt` to
 * the kernel's `net_bridge`, in vmlinux's BTF or the bridge module's). */
struct net_bridge___tt {
	struct net_device *dev;
} __attribute__((preserve_access_index));

struct net_bridge_port___tt {
	struct net_device *dev;
} __attribute__((preserve_access_index));

struct mac_addr___tt {
	unsigned char addr[6];
} __attribute__((preserve_access_index));

struct net_bridge_fdb_key___tt {
	struct mac_addr___tt addr;
	__u16 vlan_id;
} __attribute__((preserve_access_index));

struct net_bridge_fdb_entry___tt {
	struct net_bridge_port___tt *dst;
	struct net_bridge_fdb_key___tt key;
} __attribute__((preserve_access_index));
#else
/* bcc: opaque, read at the -DOFF_BR_* / OFF_BRPORT_* / OFF_FDB_* offsets (TT_FIELD). */
struct net_bridge___tt;
struct net_bridge_port___tt;
struct net_bridge_fdb_entry___tt;
#endif

TT_HASH(devs, struct ttx_dev_key, struct ttx_dev_ent, 4096);

/* Per-MAC (low 40 bits: a libvirt tap's fe: MAC and its guest's 52: MAC agree there) -> tap, to
 * tell "addressed to a VM but consumed by the host". A MAC is a map key here, never a label. */
TT_HASH(vm_macs, __u64, struct ttx_dev_key, 4096);

/* net_device address -> what `devs` said of it (role 0: not watched), valid while gen ==
 * devgen[0]. A per-CPU direct-mapped cache (array lookups are inlined by the verifier: no helper
 * call, no lock); two devices sharing a slot just ask `devs` again in turn. */
struct ttx_devc {
	__u64 dev;
	__u64 gen;
	__u32 netns;
	__u32 ifindex;
	__u32 role;
	__u32 bridge;
	__u32 idx; /* devcnt index, 0: none */
	__u32 pad;
};
#define DEVC_BITS 8
TT_PERCPU_ARRAY(devc, struct ttx_devc, 1 << DEVC_BITS);
TT_ARRAY(devgen, __u64, 1, 0);

#define GOLDEN 0x9E3779B97F4A7C15ULL
static __always_inline __u32 slot_of(__u64 ptr, int bits)
{
	return (__u32)((ptr * GOLDEN) >> (64 - bits));
}

/* The frame this CPU's bridge is working on (skb 0: none); scratch: see addr(). */
struct ttx_cur {
	__u64 skb;
	__u32 netns;
	__u32 bridge;
	__u32 in_port;
	__u32 clones;
	__u64 scratch;
	__u32 in_idx; /* the in port's devcnt index */
	__u32 pad;
};
TT_PERCPU_ARRAY(cur, struct ttx_cur, 1);

/* An skb queued on a tap, until the guest reads it or it is dropped. bridge != 0: the frame's
 * only copy, whose verdict (delivered or dropped) waits for that. Written on the CPU that queues,
 * read on the CPU that reads (the tap's ring orders the two). A direct-mapped table keyed by the
 * skb's address (`qtab`: claimed with a compare-and-swap, no helper call, no lock); an skb whose
 * slot is taken goes to `tapq` (LRU hash, per-CPU LRU lists) instead. 4096 slots (128 KB): small
 * enough to stay in the caches. With 65 536 (2 MB) every frame's slot was a cache miss at both
 * ends, ≈ 100 ns in each of net_dev_queue and consume_skb, whether the slot was written or only
 * read (bench/FINDINGS.md, item 8). */
struct ttx_queued {
	__u32 netns;
	__u32 ifindex;
	__u32 bridge;
	__u32 in_port;
	__u32 idx;    /* the tap's devcnt index */
	__u32 in_idx; /* the in port's (when bridge is set) */
};
struct ttx_qslot {
	__u64 skb; /* 0: free */
	struct ttx_queued q;
};
#define QTAB_BITS 12
TT_ARRAY(qtab, struct ttx_qslot, 1 << QTAB_BITS, 0);
TT_LRU_HASH(tapq, __u64, struct ttx_queued, MAX_FRAMES, TTX_NO_COMMON_LRU);

/* Counters with no bounded index (and the fallback of those with one): per-CPU hashes. */
TT_PERCPU_HASH(verdicts, struct ttx_verdict_key, __u64, MAX_SERIES);
TT_PERCPU_HASH(drops, struct ttx_drop_key, __u64, MAX_SERIES);
TT_PERCPU_HASH(taps, struct ttx_tap_key, __u64, MAX_SERIES);
TT_PERCPU_HASH(fdb, struct ttx_fdb_key, __u64, MAX_SERIES);
/* The bridge's FDB decisions (the end of this file; empty under bcc and where neither fentry nor
 * kprobes reach the bridge's functions). */
TT_PERCPU_HASH(decisions, struct ttx_decision_key, __u64, MAX_SERIES);

/* The array counters (top of the file, exporter.h). */
TT_PERCPU_ARRAY(devcnt, struct ttx_dev_counts, MAX_DEVS);
TT_ARRAY(pairs, __u32, MAX_DEVS * MAX_DEVS, 0); /* paircnt slot, 0: none */
TT_PERCPU_ARRAY(paircnt, struct ttx_pair_counts, MAX_PAIRS);

TT_PERCPU_ARRAY(health, __u64, TTX_H_MAX);

/* FDB learning: the port last seen per (bridge, MAC, VLAN), to tell learned from moved. */
struct ttx_fdb_seen_key {
	__u64 br;
	__u8 addr[6];
	__u16 vid;
};
TT_LRU_HASH(fdb_seen, struct ttx_fdb_seen_key, __u32, 65536, 0);

/* -- map operations, each in both loaders' spelling (bpf/loaders.h says why) ------------------ */

static __always_inline __u64 *health_slot(__u32 idx)
{
#ifdef TT_BCC
	return health.lookup(&idx);
#else
	return bpf_map_lookup_elem(&health, &idx);
#endif
}

static __always_inline void health_inc(__u32 idx)
{
	__u64 *n = health_slot(idx);
	if (n)
		*n += 1;
}

/* The counter hashes, by name for count(): bcc can't take a map's address. */
enum ttx_counter { TTX_VERDICTS, TTX_DROPS, TTX_TAPS, TTX_FDB, TTX_DECISIONS };

/* Per-CPU hash counters: a new series is inserted with value 1 (each CPU has its own copy, so no
 * atomics are needed); a full map is counted, not silently ignored. `map` is a constant in every
 * inlined copy, so each keeps one map's calls. */
static __always_inline void count(enum ttx_counter map, void *key)
{
	__u64 one = 1, *v;
	long err;
#ifdef TT_BCC
	if (map == TTX_VERDICTS)
		v = verdicts.lookup(key);
	else if (map == TTX_DROPS)
		v = drops.lookup(key);
	else if (map == TTX_TAPS)
		v = taps.lookup(key);
	else if (map == TTX_FDB)
		v = fdb.lookup(key);
	else
		v = decisions.lookup(key);
#else
	void *m = map == TTX_VERDICTS ? (void *)&verdicts
		: map == TTX_DROPS    ? (void *)&drops
		: map == TTX_TAPS     ? (void *)&taps
		: map == TTX_FDB      ? (void *)&fdb
				      : (void *)&decisions;
	v = bpf_map_lookup_elem(m, key);
#endif
	if (v) {
		*v += 1;
		return;
	}
#ifdef TT_BCC
	if (map == TTX_VERDICTS)
		err = verdicts.update(key, &one);
	else if (map == TTX_DROPS)
		err = drops.update(key, &one);
	else if (map == TTX_TAPS)
		err = taps.update(key, &one);
	else if (map == TTX_FDB)
		err = fdb.update(key, &one);
	else
		err = decisions.update(key, &one);
#else
	err = bpf_map_update_elem(m, key, &one, BPF_ANY);
#endif
	if (err)
		health_inc(TTX_H_COUNTER_FULL);
}

static __always_inline struct ttx_cur *cur_slot(void)
{
	__u32 zero = 0;
#ifdef TT_BCC
	return cur.lookup(&zero);
#else
	return bpf_map_lookup_elem(&cur, &zero);
#endif
}

static __always_inline __u64 *devgen_slot(void)
{
	__u32 zero = 0;
#ifdef TT_BCC
	return devgen.lookup(&zero);
#else
	return bpf_map_lookup_elem(&devgen, &zero);
#endif
}

static __always_inline struct ttx_devc *devc_slot(__u32 i)
{
#ifdef TT_BCC
	return devc.lookup(&i);
#else
	return bpf_map_lookup_elem(&devc, &i);
#endif
}

static __always_inline struct ttx_dev_ent *dev_ent(struct ttx_dev_key *k)
{
#ifdef TT_BCC
	return devs.lookup(k);
#else
	return bpf_map_lookup_elem(&devs, k);
#endif
}

static __always_inline struct ttx_dev_key *vm_tap(__u64 mac)
{
#ifdef TT_BCC
	return vm_macs.lookup(&mac);
#else
	return bpf_map_lookup_elem(&vm_macs, &mac);
#endif
}

static __always_inline struct ttx_dev_counts *dev_counts(__u32 idx)
{
#ifdef TT_BCC
	return devcnt.lookup(&idx);
#else
	return bpf_map_lookup_elem(&devcnt, &idx);
#endif
}

static __always_inline struct ttx_pair_counts *pair_counts(__u32 in_idx, __u32 out_idx)
{
	__u32 pi = ((in_idx & DEV_MASK) << TTX_DEV_BITS) | (out_idx & DEV_MASK);
#ifdef TT_BCC
	__u32 *slot = pairs.lookup(&pi);
#else
	__u32 *slot = bpf_map_lookup_elem(&pairs, &pi);
#endif
	if (!slot || !*slot)
		return 0;
	__u32 s = *slot;
#ifdef TT_BCC
	return paircnt.lookup(&s);
#else
	return bpf_map_lookup_elem(&paircnt, &s);
#endif
}

static __always_inline struct ttx_qslot *qtab_slot(__u64 skb)
{
	__u32 i = slot_of(skb, QTAB_BITS);
#ifdef TT_BCC
	return qtab.lookup(&i);
#else
	return bpf_map_lookup_elem(&qtab, &i);
#endif
}

static __always_inline long tapq_add(__u64 skb, struct ttx_queued *q)
{
#ifdef TT_BCC
	return tapq.update(&skb, q);
#else
	return bpf_map_update_elem(&tapq, &skb, q, BPF_ANY);
#endif
}

/* The entry of skb in `tapq`, copied to *q and removed: 0, or -1 when there is none. */
static __always_inline int tapq_take(__u64 skb, struct ttx_queued *q)
{
#ifdef TT_BCC
	struct ttx_queued *h = tapq.lookup(&skb);
#else
	struct ttx_queued *h = bpf_map_lookup_elem(&tapq, &skb);
#endif
	if (!h)
		return -1;
	*q = *h;
#ifdef TT_BCC
	tapq.delete(&skb);
#else
	bpf_map_delete_elem(&tapq, &skb);
#endif
	return 0;
}

static __always_inline __u32 *fdb_seen_port(struct ttx_fdb_seen_key *k)
{
#ifdef TT_BCC
	return fdb_seen.lookup(k);
#else
	return bpf_map_lookup_elem(&fdb_seen, k);
#endif
}

static __always_inline void fdb_seen_set(struct ttx_fdb_seen_key *k, __u32 *port)
{
#ifdef TT_BCC
	fdb_seen.update(k, port);
#else
	bpf_map_update_elem(&fdb_seen, k, port, BPF_ANY);
#endif
}

static __always_inline void fdb_seen_forget(struct ttx_fdb_seen_key *k)
{
#ifdef TT_BCC
	fdb_seen.delete(k);
#else
	bpf_map_delete_elem(&fdb_seen, k);
#endif
}

/* -- kernel fields (TT_FIELD: bpf/loaders.h) ---------------------------------------------------- */

#define skb_dev(probed, skb) TT_FIELD(probed, skb, dev, OFF_SKB_DEV, struct net_device *)
#define skb_head(probed, skb) TT_FIELD(probed, skb, head, OFF_SKB_HEAD, unsigned char *)
#define dev_ifindex(probed, dev) TT_FIELD(probed, dev, ifindex, OFF_NETDEV_IFINDEX, __u32)

/* Which device, in which namespace (0 without network namespaces). probed: dev is only a number
 * (the FDB hooks' reads through the bridge's structs). */
static __always_inline void dev_key(struct net_device *dev, struct ttx_dev_key *k, const int probed)
{
	k->netns = 0;
	k->ifindex = 0;
	if (!dev)
		return;
	k->ifindex = dev_ifindex(probed, dev);
#ifdef TT_BCC
#if defined(OFF_NETDEV_NET) && defined(OFF_NET_INUM) /* no netns member: a kernel without CONFIG_NET_NS */
	__u64 net = TT_FIELD(1, dev, nd_net.net, OFF_NETDEV_NET, __u64);
	if (net)
		k->netns = TT_FIELD(1, net, ns.inum, OFF_NET_INUM, __u32);
#endif
#else
	if (bpf_core_field_exists(dev->nd_net.net)) {
		struct net *net = TT_FIELD(probed, dev, nd_net.net, 0, struct net *);
		if (net)
			k->netns = TT_FIELD(probed, net, ns.inum, 0, __u32);
	}
#endif
}

/* A kernel pointer as a number (see the top of the file). volatile: clang must not forward the
 * store to the load, or the number would be the pointer register again. */
static __always_inline __u64 addr_via(__u64 *scratch, const void *p)
{
	*(volatile __u64 *)scratch = (__u64)p;
	return *(volatile __u64 *)scratch;
}

static __always_inline __u64 addr(struct ttx_cur *f, const void *p)
{
	return addr_via(&f->scratch, p);
}

/* What we watch `dev` (at address devp) as: fills *d and returns its role bits, 0 for a device
 * we don't watch. The netns/ifindex reads and the `devs` lookup happen once per device, CPU
 * and generation. */
static __always_inline __u32 dev_role_of(struct net_device *dev, __u64 devp, struct ttx_devc *d, const int probed)
{
	if (!devp)
		return 0;
	__u64 *gen = devgen_slot();
	if (!gen)
		return 0;
	__u64 g = *gen;
	struct ttx_devc *c = devc_slot(slot_of(devp, DEVC_BITS));
	if (!c)
		return 0;
	if (c->dev != devp || c->gen != g) {
		/* First sight of this device in this generation: ask `devs` (read after the
		 * generation, so a change made meanwhile leaves this entry outdated, never wrong for
		 * long). */
		struct ttx_dev_key k;
		dev_key(dev, &k, probed);
		struct ttx_dev_ent *v = dev_ent(&k);
		c->dev = devp;
		c->gen = g;
		c->netns = k.netns;
		c->ifindex = k.ifindex;
		c->role = v ? v->role : 0;
		c->bridge = v ? v->bridge : 0;
		c->idx = v ? v->idx : 0;
	}
	*d = *c;
	return d->role;
}

static __always_inline __u32 dev_role(struct net_device *dev, __u64 devp, struct ttx_devc *d)
{
	return dev_role_of(dev, devp, d, 0);
}

/* A verdict: in devcnt[in_idx] (flooded, local, dropped) or paircnt (forwarded, delivered) when
 * user space gave the devices (and the pair) an index, else in the `verdicts` hash. */
static __always_inline void count_verdict(__u32 netns, __u32 bridge, __u32 in_port, __u32 out_port, __u32 verdict,
					  __u32 in_idx, __u32 out_idx)
{
	if (in_idx) {
		if (verdict == TTX_V_FORWARDED || verdict == TTX_V_DELIVERED) {
			struct ttx_pair_counts *p = out_idx ? pair_counts(in_idx, out_idx) : 0;
			if (p) {
				if (verdict == TTX_V_FORWARDED)
					p->forwarded += 1;
				else
					p->delivered += 1;
				return;
			}
		} else {
			struct ttx_dev_counts *c = dev_counts(in_idx);
			if (c) {
				if (verdict == TTX_V_FLOODED)
					c->flooded += 1;
				else if (verdict == TTX_V_LOCAL)
					c->local += 1;
				else
					c->dropped += 1;
				return;
			}
		}
	}
	struct ttx_verdict_key k = {};
	k.netns = netns;
	k.bridge = bridge;
	k.in_port = in_port;
	k.out_port = out_port;
	k.verdict = verdict;
	count(TTX_VERDICTS, &k);
}

/* A tap's queued/delivered count (reason 0): in devcnt[idx] when it has one, else in `taps`. */
static __always_inline void count_tap(__u32 netns, __u32 ifindex, __u32 idx, __u32 event, __u32 reason)
{
	if (idx && !reason && (event == TTX_TAP_QUEUED || event == TTX_TAP_DELIVERED)) {
		struct ttx_dev_counts *c = dev_counts(idx);
		if (c) {
			if (event == TTX_TAP_QUEUED)
				c->tap_queued += 1;
			else
				c->tap_delivered += 1;
			return;
		}
	}
	struct ttx_tap_key tk = {};
	tk.netns = netns;
	tk.ifindex = ifindex;
	tk.event = event;
	tk.reason = reason;
	count(TTX_TAPS, &tk);
}

static __always_inline void track(struct ttx_cur *f, __u64 skb, __u32 netns, __u32 bridge, __u32 in_port,
				  __u32 in_idx)
{
	f->skb = skb;
	f->in_idx = in_idx;
	f->netns = netns;
	f->bridge = bridge;
	f->in_port = in_port;
	f->clones = 0;
}

#ifndef TT_BCC
/* 6.2+. Weak, so that libbpf loads the object where the kernel lacks it; tt_config.rdonly_cast
 * (set by the loader from the kernel's BTF) makes the call a branch the verifier drops there. */
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym __weak;
#endif

/* skb->head of the skb at address `skb` (known only as a number: the frame in `cur`). */
static __always_inline __u64 head_of(__u64 skb)
{
#ifndef TT_BCC
	if (TT_CFG(rdonly_cast)) {
		struct sk_buff *s = bpf_rdonly_cast((void *)skb, bpf_core_type_id_kernel(struct sk_buff));
		return (__u64)s->head;
	}
#endif
	return (__u64)skb_head(1, (struct sk_buff *)skb);
}

/* The frame's Ethernet destination, as the low 40 bits (see vm_macs); 0 for a group address. */
static __always_inline __u64 dst_mac40(struct sk_buff *skb)
{
	__u16 mac_header = TT_FIELD(0, skb, mac_header, OFF_SKB_MAC_HEADER, __u16);
	__u8 d[6];
	if (mac_header == 0xffff || bpf_probe_read_kernel(d, sizeof(d), skb_head(0, skb) + mac_header))
		return 0;
	if (d[0] & 1) /* broadcast/multicast: addressed to everyone, not to one VM */
		return 0;
	return ((__u64)d[1] << 32) | ((__u64)d[2] << 24) | ((__u64)d[3] << 16) | ((__u64)d[4] << 8) | d[5];
}

/* A device hands a received frame to the stack. On a bridge port: a frame entering the bridge.
 * On the bridge device: the bridge passing the frame up to the host. */
TT_TRACEPOINT(netif_receive_skb, ttx_netif_receive_skb)
{
	struct sk_buff *skb = (struct sk_buff *)TT_ARG(0);
	struct ttx_cur *f = cur_slot();
	if (!f)
		return 0;
	struct net_device *dev = skb_dev(0, skb);
	struct ttx_devc d;
	__u32 role = dev_role(dev, addr(f, dev), &d);
	if (!role)
		return 0;
	__u64 skbp = addr(f, skb);
	if (role & TTX_ROLE_PORT) {
		track(f, skbp, d.netns, d.bridge, d.ifindex, d.idx);
		return 0;
	}
	if (!(role & TTX_ROLE_BRIDGE))
		return 0;
	if (f->skb != skbp || f->bridge != d.ifindex || f->netns != d.netns)
		return 0;
	if (f->clones) {
		count_verdict(f->netns, f->bridge, f->in_port, 0, TTX_V_FLOODED, f->in_idx, 0);
	} else {
		count_verdict(f->netns, f->bridge, f->in_port, d.ifindex, TTX_V_LOCAL, f->in_idx, 0);
		__u64 mac = dst_mac40(skb);
		struct ttx_dev_key *tap = mac ? vm_tap(mac) : 0;
		if (tap && tap->netns == d.netns) {
			struct ttx_tap_key tk = {};
			tk.netns = tap->netns;
			tk.ifindex = tap->ifindex;
			tk.event = TTX_TAP_LOCAL;
			count(TTX_TAPS, &tk);
		}
	}
	f->skb = 0;
	return 0;
}

/* dev_queue_xmit() on a device: the bridge sending a copy out of a port, or the host sending
 * through the bridge device. On a tap, the frame enters the queue the guest reads. */
TT_TRACEPOINT(net_dev_queue, ttx_net_dev_queue)
{
	struct sk_buff *skb = (struct sk_buff *)TT_ARG(0);
	struct ttx_cur *f = cur_slot();
	if (!f)
		return 0;
	struct net_device *dev = skb_dev(0, skb);
	struct ttx_devc d;
	__u32 role = dev_role(dev, addr(f, dev), &d);
	if (!role)
		return 0;
	__u64 skbp = addr(f, skb);
	if (role & TTX_ROLE_BRIDGE) {
		/* The host sends through the bridge: the bridge device is the frame's way in. */
		track(f, skbp, d.netns, d.ifindex, d.ifindex, d.idx);
		return 0;
	}
	struct ttx_queued q = {};
	if (role & TTX_ROLE_PORT) {
		if (f->skb == skbp) {
			/* The original leaves: every clone has been made. */
			if (f->bridge == d.bridge && f->netns == d.netns) {
				if (f->clones) {
					count_verdict(f->netns, f->bridge, f->in_port, 0, TTX_V_FLOODED, f->in_idx, 0);
				} else if (role & TTX_ROLE_TAP) {
					q.bridge = f->bridge; /* its only copy: the verdict waits for read or drop */
					q.in_port = f->in_port;
					q.in_idx = f->in_idx;
				} else {
					count_verdict(f->netns, f->bridge, f->in_port, d.ifindex, TTX_V_FORWARDED,
						      f->in_idx, d.idx);
				}
				f->skb = 0;
			}
		} else if (f->skb && f->bridge == d.bridge && f->netns == d.netns &&
			   addr(f, skb_head(0, skb)) == head_of(f->skb)) {
			/* A clone of the frame being bridged (same data buffer): a flood copy. The heads are
			 * read here, not on entry: most frames are never cloned. */
			f->clones += 1;
		}
	}
	if (role & TTX_ROLE_TAP) {
		count_tap(d.netns, d.ifindex, d.idx, TTX_TAP_QUEUED, 0);
		q.netns = d.netns;
		q.ifindex = d.ifindex;
		q.idx = d.idx;
		struct ttx_qslot *s = qtab_slot(skbp);
		if (s) {
			/* Free, or held by this very address (an entry whose end we missed). */
			__u64 was = tt_cas_u64(&s->skb, 0, skbp);
			if (was == 0 || was == skbp) {
				s->q = q;
				return 0;
			}
		}
		if (tapq_add(skbp, &q) && q.bridge)
			health_inc(TTX_H_FRAME_TABLE_FULL);
	}
	return 0;
}

/* An skb queued on a tap is read (event TTX_TAP_DELIVERED) or dropped: count it for the tap,
 * and its frame's verdict when it was the frame's only copy. */
static __always_inline void tap_done(__u64 skb, __u32 event, __u32 reason)
{
	struct ttx_queued q;
	struct ttx_qslot *s = qtab_slot(skb);
	if (s && s->skb == skb) {
		q = s->q;
		s->skb = 0;
	} else if (tapq_take(skb, &q)) {
		return;
	}
	count_tap(q.netns, q.ifindex, q.idx, event, reason);
	if (q.bridge) {
		if (event == TTX_TAP_DELIVERED)
			count_verdict(q.netns, q.bridge, q.in_port, q.ifindex, TTX_V_DELIVERED, q.in_idx, q.idx);
		else
			count_verdict(q.netns, q.bridge, q.in_port, 0, TTX_V_DROPPED, q.in_idx, 0);
	}
}

/* The skb is freed as a drop; the kernel says why (reason, 5.17+) and where (location, its second
 * argument on every kernel). Arguments by constant index only: tp_btf's verifier checks each
 * against the tracepoint's BTF, a raw tracepoint's attach against its argument count, and the
 * index this kernel lacks sits behind a branch TT_CFG rules out. */
TT_TRACEPOINT(kfree_skb, ttx_kfree_skb)
{
	struct sk_buff *skb = (struct sk_buff *)TT_ARG(0);
	__u32 reason = 0;
	if (TT_CFG(kfree_reason_arg) == 2)
		reason = (__u32)TT_ARG(2);
	struct ttx_cur *f = cur_slot();
	if (!f)
		return 0;
	struct net_device *dev = skb_dev(0, skb);
	struct ttx_devc d;
	__u32 role = dev_role(dev, addr(f, dev), &d);
	__u64 skbp = addr(f, skb);
	int ours = f->skb == skbp; /* the frame this CPU's bridge is working on */
	struct ttx_drop_key dk = {};
	dk.location = TT_ARG(1);
	dk.reason = reason;
	if (role) {
		dk.netns = d.netns;
		dk.ifindex = d.ifindex;
	} else {
		/* skb->dev is none of ours (e.g. moved or cleared): a frame being bridged still counts,
		 * on the port it came in by. */
		if (!ours)
			return 0;
		dk.netns = f->netns;
		dk.ifindex = f->in_port;
	}
	count(TTX_DROPS, &dk);
	if (role)
		tap_done(skbp, TTX_TAP_DROPPED, reason);
	if (ours) {
		count_verdict(f->netns, f->bridge, f->in_port, 0, f->clones ? TTX_V_FLOODED : TTX_V_DROPPED, f->in_idx, 0);
		f->skb = 0;
	}
	return 0;
}

/* The skb is freed after normal use. For an skb queued on a tap, tun_do_read() consuming it is
 * the guest (qemu) reading the frame. */
TT_TRACEPOINT(consume_skb, ttx_consume_skb)
{
	struct sk_buff *skb = (struct sk_buff *)TT_ARG(0);
	struct ttx_cur *f = cur_slot();
	if (!f)
		return 0;
	struct net_device *dev = skb_dev(0, skb);
	struct ttx_devc d;
	/* Filter first, as the other hooks: an skb we track is still on one of our devices here
	 * (the tap it was queued on, or the port/bridge it was freed by). */
	__u32 role = dev_role(dev, addr(f, dev), &d);
	if (!role)
		return 0;
	__u64 skbp = addr(f, skb);
	if (role & TTX_ROLE_TAP)
		tap_done(skbp, TTX_TAP_DELIVERED, 0);
	if (f->skb != skbp)
		return 0;
	/* Freed inside the bridge without a drop: the host took it (as follow says). */
	count_verdict(f->netns, f->bridge, f->in_port, f->clones ? 0 : f->bridge, f->clones ? TTX_V_FLOODED : TTX_V_LOCAL,
		      f->in_idx, 0);
	f->skb = 0;
	return 0;
}

/* FDB learning. br_fdb_update(br, source, addr, vid, flags) fires when an entry is created
 * (learned) or changes port (moved); which one is told apart by remembering, per bridge, MAC and
 * VLAN, the port last seen (fdb_seen). fdb_delete(br, f) fires when an entry goes. Rare events:
 * read with BPF_CORE_READ / probe reads. Under bcc the loader leaves them out (no -DTT_FDB_HOOKS)
 * where the bridge's tracepoints are not there to attach to (libbpf's loader turns off their
 * autoload instead). */
static __always_inline void br_key(struct net_bridge___tt *br, struct ttx_dev_key *k)
{
	dev_key(TT_FIELD(1, br, dev, OFF_BR_DEV, struct net_device *), k, 1);
}

static __always_inline __u32 port_ifindex(struct net_bridge_port___tt *port)
{
	if (!port)
		return 0;
	struct net_device *dev = TT_FIELD(1, port, dev, OFF_BRPORT_DEV, struct net_device *);
	return dev ? dev_ifindex(1, dev) : 0;
}

#if !defined(TT_BCC) || defined(TT_FDB_HOOKS)
TT_TRACEPOINT(br_fdb_update, ttx_br_fdb_update)
{
	struct net_bridge___tt *br = (void *)TT_ARG(0);
	struct ttx_dev_key bk;
	br_key(br, &bk);
	if (!dev_ent(&bk)) /* not a bridge we watch */
		return 0;
	struct ttx_fdb_key fk = {};
	fk.netns = bk.netns;
	fk.bridge = bk.ifindex;
	fk.port = port_ifindex((void *)TT_ARG(1));
	struct ttx_fdb_seen_key sk = {};
	sk.br = TT_ARG(0);
	bpf_probe_read_kernel(sk.addr, sizeof(sk.addr), (void *)TT_ARG(2));
	sk.vid = (__u16)TT_ARG(3);
	__u32 *was = fdb_seen_port(&sk);
	if (was && *was == fk.port)
		return 0; /* not a change */
	fk.event = was ? TTX_FDB_MOVED : TTX_FDB_LEARNED;
	fdb_seen_set(&sk, &fk.port);
	count(TTX_FDB, &fk);
	return 0;
}

TT_TRACEPOINT(fdb_delete, ttx_fdb_delete)
{
	struct net_bridge___tt *br = (void *)TT_ARG(0);
	struct net_bridge_fdb_entry___tt *f = (void *)TT_ARG(1);
	struct ttx_dev_key bk;
	br_key(br, &bk);
	if (!dev_ent(&bk)) /* not a bridge we watch */
		return 0;
	struct ttx_fdb_key fk = {};
	fk.netns = bk.netns;
	fk.bridge = bk.ifindex;
	fk.event = TTX_FDB_DELETED;
	fk.port = port_ifindex(TT_FIELD(1, f, dst, OFF_FDB_DST, struct net_bridge_port___tt *));
	struct ttx_fdb_seen_key sk = {};
	sk.br = TT_ARG(0);
	bpf_probe_read_kernel(sk.addr, sizeof(sk.addr), TT_FIELD_ADDR(f, key.addr, OFF_FDB_ADDR));
	sk.vid = TT_FIELD(1, f, key.vlan_id, OFF_FDB_VID, __u16);
	fdb_seen_forget(&sk);
	count(TTX_FDB, &fk);
	return 0;
}
#endif

#ifndef TT_BCC
/* -- the bridge's FDB decisions (libbpf only) ---------------------------------------------------
 *
 * Where the kernel lets us into the bridge's own functions (features.bridge_plan: fentry through
 * the function's BTF, the bridge module's where it is one; else a kprobe), each decision is counted
 * once, where it is made, with no per-frame state (`decisions`, struct ttx_decision_key):
 *   br_forward(to, skb, local_rcv, local_orig)      forward: an FDB entry names port `to`
 *   br_flood(br, skb, pkt_type, local_rcv, ...)     flood: no FDB entry, broadcast or multicast
 *   br_pass_frame_up(skb, ...)                      local: the FDB names the bridge's own address
 * libbpf builds a fentry and a kprobe program for each, off unless the loader turns one on
 * (tracer/libbpf_loader.py's BridgeHooks: the same choice and fallbacks as follow's hops).
 * br_handle_frame_finish() also passes a frame up right after br_forward()/br_flood() when the
 * host wants a copy (local_rcv: a broadcast, a promiscuous bridge): no decision of its own. Those
 * two leave the skb in `decided` (one slot per CPU, written only when local_rcv is set) and the
 * br_pass_frame_up() that follows on this CPU takes it back instead of counting. A group-addressed
 * frame passed up with neither before it (br_multicast_flood(), not hooked) is no FDB decision
 * either. At entry skb->dev is still the frame's way in: the ingress port, or the bridge device
 * for what the host sends through it (br_dev_xmit); the hooks filter on it through `devc`, as the
 * tracepoints do. fentry reads the skb with plain loads, the kprobe through BPF_CORE_READ. */
struct ttx_decided {
	__u64 skb;     /* the skb whose br_pass_frame_up() is the host's copy (0: none) */
	__u64 scratch; /* see addr_via() */
};
TT_PERCPU_ARRAY(decided, struct ttx_decided, 1);

static __always_inline struct ttx_decided *decided_slot(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&decided, &zero);
}

/* The device of bridge port `p`. 5.10's bridge module has no BTF (module BTF came in 5.11), so no
 * CO-RE relocation reaches struct net_bridge_port there; its dev has followed br at the head of
 * the struct since 2.6 (br_private.h), so it is read there, and believed only when `devs` knows
 * that device as a port of the frame's bridge (count_decision). */
static __always_inline struct net_device *port_device(struct net_bridge_port___tt *p)
{
	struct net_device *dev = 0;

	if (!p)
		return 0;
	if (bpf_core_field_exists(p->dev))
		return BPF_CORE_READ(p, dev);
	bpf_probe_read_kernel(&dev, sizeof(dev), (void *)((__u64)p + sizeof(void *)));
	return dev;
}

/* 1 when the frame's Ethernet destination is a group address (or can't be read). */
static __always_inline int dst_is_group(struct sk_buff *skb, const int probed)
{
	__u16 mac_header = TT_FIELD(probed, skb, mac_header, OFF_SKB_MAC_HEADER, __u16);
	unsigned char *head = TT_FIELD(probed, skb, head, OFF_SKB_HEAD, unsigned char *);
	__u8 d0 = 1;

	if (mac_header == 0xffff || bpf_probe_read_kernel(&d0, 1, head + mac_header))
		return 1;
	return d0 & 1;
}

static __always_inline void count_decision(struct ttx_decided *s, struct sk_buff *skb, struct net_device *in,
					   const int probed, __u32 decision, __u32 pkt_type, void *to)
{
	struct ttx_devc d;
	__u32 role = dev_role_of(in, addr_via(&s->scratch, in), &d, probed);

	if (!(role & (TTX_ROLE_PORT | TTX_ROLE_BRIDGE)))
		return;
	if (decision == TTX_D_LOCAL && dst_is_group(skb, probed))
		return;
	struct ttx_decision_key k = {};
	k.netns = d.netns;
	k.bridge = d.bridge; /* a bridge device's own ifindex for the bridge itself */
	k.in_port = d.ifindex;
	k.decision = decision;
	k.pkt_type = pkt_type;
	if (decision == TTX_D_LOCAL) {
		k.out_port = d.bridge;
	} else if (decision == TTX_D_FORWARD) {
		struct net_device *out = port_device(to);
		struct ttx_devc o;
		if (out && (dev_role_of(out, addr_via(&s->scratch, out), &o, 1) & TTX_ROLE_PORT) &&
		    o.bridge == d.bridge && o.netns == d.netns)
			k.out_port = o.ifindex;
	}
	count(TTX_DECISIONS, &k);
}

/* br_forward() and br_flood(): counted, and the skb noted when the host gets its copy next. */
static __always_inline void forward_or_flood(struct sk_buff *skb, struct net_device *in, const int probed,
					     __u64 local_rcv, __u32 decision, __u32 pkt_type, void *to)
{
	struct ttx_decided *s = decided_slot();

	if (!s)
		return;
	s->skb = local_rcv & 1 ? addr_via(&s->scratch, skb) : 0;
	count_decision(s, skb, in, probed, decision, pkt_type, to);
}

static __always_inline void pass_up(struct sk_buff *skb, struct net_device *in, const int probed)
{
	struct ttx_decided *s = decided_slot();

	if (!s)
		return;
	if (s->skb && s->skb == addr_via(&s->scratch, skb)) {
		s->skb = 0; /* the host's copy of the forward or flood just counted */
		return;
	}
	count_decision(s, skb, in, probed, TTX_D_LOCAL, TTX_PKT_UNICAST, 0);
}

TT_FENTRY(br_forward, ttx_br_forward_fentry, void *to, struct sk_buff *skb, __u64 local_rcv)
{
	forward_or_flood(skb, skb->dev, 0, local_rcv, TTX_D_FORWARD, TTX_PKT_UNICAST, to);
	return 0;
}
TT_KPROBE(br_forward, ttx_br_forward_kprobe)
{
	struct sk_buff *skb = (struct sk_buff *)PT_REGS_PARM2(ctx);
	forward_or_flood(skb, BPF_CORE_READ(skb, dev), 1, PT_REGS_PARM3(ctx), TTX_D_FORWARD, TTX_PKT_UNICAST,
			 (void *)PT_REGS_PARM1(ctx));
	return 0;
}

TT_FENTRY(br_flood, ttx_br_flood_fentry, void *br, struct sk_buff *skb, __u64 pkt_type, __u64 local_rcv)
{
	forward_or_flood(skb, skb->dev, 0, local_rcv, TTX_D_FLOOD, (__u32)pkt_type, 0);
	return 0;
}
TT_KPROBE(br_flood, ttx_br_flood_kprobe)
{
	struct sk_buff *skb = (struct sk_buff *)PT_REGS_PARM2(ctx);
	forward_or_flood(skb, BPF_CORE_READ(skb, dev), 1, PT_REGS_PARM4(ctx), TTX_D_FLOOD, (__u32)PT_REGS_PARM3(ctx), 0);
	return 0;
}

TT_FENTRY(br_pass_frame_up, ttx_br_pass_frame_up_fentry, struct sk_buff *skb)
{
	pass_up(skb, skb->dev, 0);
	return 0;
}
TT_KPROBE(br_pass_frame_up, ttx_br_pass_frame_up_kprobe)
{
	struct sk_buff *skb = (struct sk_buff *)PT_REGS_PARM1(ctx);
	pass_up(skb, BPF_CORE_READ(skb, dev), 1);
	return 0;
}
#endif /* !TT_BCC: FDB decisions */
