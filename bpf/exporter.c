/* tapttrace exporter, the libbpf build: the hooks, maps, counters and semantics of bpf/exporter.c
 * as tp_btf programs (BPF_PROG_TYPE_TRACING on the same six tracepoints), compiled once into a
 * CO-RE object. Read bpf/exporter.c's comment first: everything it says about verdicts, the
 * per-CPU frame slot `cur`, the tap table `qtab`/`tapq` and the device cache `devc` holds here.
 *
 * What differs is how kernel memory is read. In a tp_btf program the skb is a BTF-typed pointer:
 * skb->dev, skb->head, skb->mac_header, dev->ifindex and dev->nd_net.net->ns.inum are plain
 * loads (CO-RE relocated by libbpf against the running kernel's BTF), not bpf_probe_read_kernel
 * calls. The bridge's
 * own structs (FDB hooks, cold) are read through BPF_CORE_READ with local `___tt` flavours, so
 * the object builds and relocates whether the bridge is built in (vmlinux BTF) or a module
 * (/sys/kernel/btf/bridge).
 *
 * Sizes: the hash maps' and paircnt's max_entries are set by tracer/exporter/program_btf.py
 * before load (bpf_map__set_max_entries); DEVC_BITS, QTAB_BITS and TTX_DEV_BITS are compile-time
 * constants (the masks are in the code). Per-run values (which tracepoint argument carries the drop reason) are in
 * .rodata. The compare-and-swap on qtab needs -mcpu=v3 (tracer/libbpf_loader.py builds with it).
 *
 * Counters (differs from bpf/exporter.c): what a frame forwarded or delivered to a tap costs is
 * counted in per-CPU *arrays*, whose lookups the verifier inlines, not in per-CPU hashes (a helper
 * call, ≈ 40-55 ns a lookup here, more for an insert). User space gives every watched device a
 * small index (`devs`' value: struct ttx_dev_ent in exporter.h); `devcnt[idx]` holds the tap
 * queued/delivered counts and the flooded/local/dropped verdicts of frames that came in by it;
 * `pairs[in_idx << TTX_DEV_BITS | out_idx]` names a slot of `paircnt` for the forwarded and
 * delivered verdicts of one (in port, out port) pair, assigned by user space for every pair of
 * one bridge. The hash maps stay for what has no bounded index (drops by reason and location,
 * taps dropped by reason, tap `local`, FDB events) and as the fallback for a device or pair that
 * got no index (tables full); user space adds both up into the same keys.
 *
 * Pointers as numbers: the verifier refuses arithmetic other than +/- on a BTF pointer, and the
 * hash of a slot multiplies. A privileged program may store a pointer into map memory and load
 * it back, where it is a plain scalar (addr()): skb and dev go through this CPU's `cur` slot once
 * per hook and are numbers from then on.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#include "exporter.h"
#include "kernel_compat.h"

char LICENSE[] SEC("license") = "GPL";

/* Set before load by tracer/exporter/program_btf.py, packed as "<ii" (checked against .rodata's size). */
struct ttx_config {
	__s32 kfree_reason_arg; /* ctx index of kfree_skb's drop reason (2), -1 = none */
	__s32 pad;
};
const volatile struct ttx_config ttx_config = {
	.kfree_reason_arg = -1,
	.pad = 0,
};

#define MAX_SERIES 16384 /* counter maps: set by the loader (--max-kernel-series) */
#define MAX_FRAMES 65536 /* tapq: set by the loader */
#define MAX_DEVS (1 << TTX_DEV_BITS)
#define DEV_MASK (MAX_DEVS - 1)
#define MAX_PAIRS 4096 /* paircnt: set by the loader */
#define TTX_NO_COMMON_LRU 2 /* BPF_F_NO_COMMON_LRU */

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

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct ttx_dev_key);
	__type(value, struct ttx_dev_ent);
} devs SEC(".maps");

/* Per-MAC (low 40 bits) -> tap: "addressed to a VM but consumed by the host" (bpf/exporter.c). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct ttx_dev_key);
} vm_macs SEC(".maps");

/* net_device address -> what `devs` said of it, valid while gen == devgen[0] (bpf/exporter.c). */
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
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1 << DEVC_BITS);
	__type(key, __u32);
	__type(value, struct ttx_devc);
} devc SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} devgen SEC(".maps");

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
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ttx_cur);
} cur SEC(".maps");

/* An skb queued on a tap, until the guest reads it or it is dropped (bpf/exporter.c). */
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
#define QTAB_BITS 16
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 << QTAB_BITS);
	__type(key, __u32);
	__type(value, struct ttx_qslot);
} qtab SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_FRAMES);
	__uint(map_flags, TTX_NO_COMMON_LRU);
	__type(key, __u64);
	__type(value, struct ttx_queued);
} tapq SEC(".maps");

#define COUNTER_MAP(name, key_type)                                                                \
	struct {                                                                                   \
		__uint(type, BPF_MAP_TYPE_PERCPU_HASH);                                            \
		__uint(max_entries, MAX_SERIES);                                                   \
		__type(key, key_type);                                                             \
		__type(value, __u64);                                                              \
	} name SEC(".maps")

COUNTER_MAP(verdicts, struct ttx_verdict_key);
COUNTER_MAP(drops, struct ttx_drop_key);
COUNTER_MAP(taps, struct ttx_tap_key);
COUNTER_MAP(fdb, struct ttx_fdb_key);

/* The array counters (top of the file, exporter.h). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_DEVS);
	__type(key, __u32);
	__type(value, struct ttx_dev_counts);
} devcnt SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_DEVS * MAX_DEVS);
	__type(key, __u32);
	__type(value, __u32); /* paircnt slot, 0: none */
} pairs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_PAIRS);
	__type(key, __u32);
	__type(value, struct ttx_pair_counts);
} paircnt SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TTX_H_MAX);
	__type(key, __u32);
	__type(value, __u64);
} health SEC(".maps");

static __always_inline void health_inc(__u32 idx)
{
	__u64 *n = bpf_map_lookup_elem(&health, &idx);
	if (n)
		*n += 1;
}

/* Per-CPU hash counters: a new series is inserted with value 1; a full map is counted. */
static __always_inline void count(void *map, const void *key)
{
	__u64 *v = bpf_map_lookup_elem(map, key);
	if (v) {
		*v += 1;
		return;
	}
	__u64 one = 1;
	if (bpf_map_update_elem(map, key, &one, BPF_ANY))
		health_inc(TTX_H_COUNTER_FULL);
}

static __always_inline struct ttx_cur *cur_slot(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&cur, &zero);
}

/* A kernel pointer as a number (see the top of the file). volatile: clang must not forward the
 * store to the load, or the number would be the pointer register again. */
static __always_inline __u64 addr(struct ttx_cur *f, const void *p)
{
	*(volatile __u64 *)&f->scratch = (__u64)p;
	return *(volatile __u64 *)&f->scratch;
}

/* What we watch `dev` (at address devp) as: fills *d and returns its role bits, 0 for a device
 * we don't watch. The netns/ifindex loads and the `devs` lookup happen once per device, CPU
 * and generation. */
static __always_inline __u32 dev_role(struct net_device *dev, __u64 devp, struct ttx_devc *d)
{
	if (!devp)
		return 0;
	__u32 zero = 0;
	__u64 *gen = bpf_map_lookup_elem(&devgen, &zero);
	if (!gen)
		return 0;
	__u64 g = *gen;
	__u32 i = slot_of(devp, DEVC_BITS);
	struct ttx_devc *c = bpf_map_lookup_elem(&devc, &i);
	if (!c)
		return 0;
	if (c->dev != devp || c->gen != g) {
		struct ttx_dev_key k = {};
		k.ifindex = dev->ifindex;
		if (bpf_core_field_exists(dev->nd_net.net)) {
			struct net *net = dev->nd_net.net;
			if (net)
				k.netns = net->ns.inum;
		}
		struct ttx_dev_ent *v = bpf_map_lookup_elem(&devs, &k);
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

/* A verdict: in devcnt[in_idx] (flooded, local, dropped) or paircnt (forwarded, delivered) when
 * user space gave the devices (and the pair) an index, else in the `verdicts` hash. */
static __always_inline void count_verdict(__u32 netns, __u32 bridge, __u32 in_port, __u32 out_port, __u32 verdict,
					  __u32 in_idx, __u32 out_idx)
{
	if (in_idx) {
		if (verdict == TTX_V_FORWARDED || verdict == TTX_V_DELIVERED) {
			__u32 pi = ((in_idx & DEV_MASK) << TTX_DEV_BITS) | (out_idx & DEV_MASK);
			__u32 *slot = out_idx ? bpf_map_lookup_elem(&pairs, &pi) : 0;
			if (slot && *slot) {
				struct ttx_pair_counts *p = bpf_map_lookup_elem(&paircnt, slot);
				if (p) {
					if (verdict == TTX_V_FORWARDED)
						p->forwarded += 1;
					else
						p->delivered += 1;
					return;
				}
			}
		} else {
			struct ttx_dev_counts *c = bpf_map_lookup_elem(&devcnt, &in_idx);
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
	count(&verdicts, &k);
}

/* A tap's queued/delivered count (reason 0): in devcnt[idx] when it has one, else in `taps`. */
static __always_inline void count_tap(__u32 netns, __u32 ifindex, __u32 idx, __u32 event, __u32 reason)
{
	if (idx && !reason && (event == TTX_TAP_QUEUED || event == TTX_TAP_DELIVERED)) {
		struct ttx_dev_counts *c = bpf_map_lookup_elem(&devcnt, &idx);
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
	count(&taps, &tk);
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

#ifdef TT_RDONLY_CAST
/* 6.2+ (the builder defines TT_RDONLY_CAST when the kernel's BTF has this kfunc). */
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;
#endif

/* skb->head of the skb at address `skb` (known only as a number: the frame in `cur`). */
static __always_inline __u64 head_of(__u64 skb)
{
#ifdef TT_RDONLY_CAST
	struct sk_buff *s = bpf_rdonly_cast((void *)skb, bpf_core_type_id_kernel(struct sk_buff));
	return (__u64)s->head;
#else
	return (__u64)BPF_CORE_READ((struct sk_buff *)skb, head);
#endif
}

/* The frame's Ethernet destination, as the low 40 bits (see vm_macs); 0 for a group address. */
static __always_inline __u64 dst_mac40(struct sk_buff *skb)
{
	__u16 mac_header = skb->mac_header;
	__u8 d[6];
	if (mac_header == 0xffff || bpf_probe_read_kernel(d, sizeof(d), skb->head + mac_header))
		return 0;
	if (d[0] & 1) /* broadcast/multicast: addressed to everyone, not to one VM */
		return 0;
	return ((__u64)d[1] << 32) | ((__u64)d[2] << 24) | ((__u64)d[3] << 16) | ((__u64)d[4] << 8) | d[5];
}

/* A device hands a received frame to the stack. On a bridge port: a frame entering the bridge.
 * On the bridge device: the bridge passing the frame up to the host. */
SEC("tp_btf/netif_receive_skb")
int BPF_PROG(ttx_netif_receive_skb, struct sk_buff *skb)
{
	struct ttx_cur *f = cur_slot();
	if (!f)
		return 0;
	struct net_device *dev = skb->dev;
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
		struct ttx_dev_key *tap = mac ? bpf_map_lookup_elem(&vm_macs, &mac) : 0;
		if (tap && tap->netns == d.netns) {
			struct ttx_tap_key tk = {};
			tk.netns = tap->netns;
			tk.ifindex = tap->ifindex;
			tk.event = TTX_TAP_LOCAL;
			count(&taps, &tk);
		}
	}
	f->skb = 0;
	return 0;
}

/* dev_queue_xmit() on a device: the bridge sending a copy out of a port, or the host sending
 * through the bridge device. On a tap, the frame enters the queue the guest reads. */
SEC("tp_btf/net_dev_queue")
int BPF_PROG(ttx_net_dev_queue, struct sk_buff *skb)
{
	struct ttx_cur *f = cur_slot();
	if (!f)
		return 0;
	struct net_device *dev = skb->dev;
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
			   addr(f, skb->head) == head_of(f->skb)) {
			/* A clone of the frame being bridged (same data buffer): a flood copy. */
			f->clones += 1;
		}
	}
	if (role & TTX_ROLE_TAP) {
		count_tap(d.netns, d.ifindex, d.idx, TTX_TAP_QUEUED, 0);
		q.netns = d.netns;
		q.ifindex = d.ifindex;
		q.idx = d.idx;
		__u32 i = slot_of(skbp, QTAB_BITS);
		struct ttx_qslot *s = bpf_map_lookup_elem(&qtab, &i);
		if (s) {
			/* Free, or held by this very address (an entry whose end we missed). */
			__u64 was = tt_cas_u64(&s->skb, 0, skbp);
			if (was == 0 || was == skbp) {
				s->q = q;
				return 0;
			}
		}
		if (bpf_map_update_elem(&tapq, &skbp, &q, BPF_ANY) && q.bridge)
			health_inc(TTX_H_FRAME_TABLE_FULL);
	}
	return 0;
}

/* An skb queued on a tap is read (event TTX_TAP_DELIVERED) or dropped: count it for the tap,
 * and its frame's verdict when it was the frame's only copy. */
static __always_inline void tap_done(__u64 skb, __u32 event, __u32 reason)
{
	struct ttx_queued q;
	__u32 i = slot_of(skb, QTAB_BITS);
	struct ttx_qslot *s = bpf_map_lookup_elem(&qtab, &i);
	if (s && s->skb == skb) {
		q = s->q;
		s->skb = 0;
	} else {
		struct ttx_queued *h = bpf_map_lookup_elem(&tapq, &skb);
		if (!h)
			return;
		q = *h;
		bpf_map_delete_elem(&tapq, &skb);
	}
	count_tap(q.netns, q.ifindex, q.idx, event, reason);
	if (q.bridge) {
		if (event == TTX_TAP_DELIVERED)
			count_verdict(q.netns, q.bridge, q.in_port, q.ifindex, TTX_V_DELIVERED, q.in_idx, q.idx);
		else
			count_verdict(q.netns, q.bridge, q.in_port, 0, TTX_V_DROPPED, q.in_idx, 0);
	}
}

/* The skb is freed as a drop; the kernel says why (reason) and where (location, ctx[1] on every
 * kernel). ctx[] by constant index only: the verifier checks each against the tracepoint's BTF. */
SEC("tp_btf/kfree_skb")
int ttx_kfree_skb(__u64 *ctx)
{
	struct sk_buff *skb = (struct sk_buff *)ctx[0];
	__u32 reason = 0;
	if (ttx_config.kfree_reason_arg == 2)
		reason = (__u32)ctx[2];
	struct ttx_cur *f = cur_slot();
	if (!f)
		return 0;
	struct net_device *dev = skb->dev;
	struct ttx_devc d;
	__u32 role = dev_role(dev, addr(f, dev), &d);
	__u64 skbp = addr(f, skb);
	int ours = f->skb == skbp; /* the frame this CPU's bridge is working on */
	struct ttx_drop_key dk = {};
	dk.location = ctx[1];
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
	count(&drops, &dk);
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
SEC("tp_btf/consume_skb")
int ttx_consume_skb(__u64 *ctx)
{
	struct sk_buff *skb = (struct sk_buff *)ctx[0];
	struct ttx_cur *f = cur_slot();
	if (!f)
		return 0;
	struct net_device *dev = skb->dev;
	struct ttx_devc d;
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

/* FDB learning (bpf/exporter.c): br_fdb_update(br, source, addr, vid, flags) for an entry
 * created or moved, told apart by remembering the port last seen per (bridge, MAC, VLAN);
 * fdb_delete(br, f) when an entry goes. Rare events: read with BPF_CORE_READ. */
struct ttx_fdb_seen_key {
	__u64 br;
	__u8 addr[6];
	__u16 vid;
};
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ttx_fdb_seen_key);
	__type(value, __u32);
} fdb_seen SEC(".maps");

static __always_inline void dev_key(struct net_device *dev, struct ttx_dev_key *k)
{
	k->netns = 0;
	k->ifindex = 0;
	if (!dev)
		return;
	k->ifindex = BPF_CORE_READ(dev, ifindex);
	if (bpf_core_field_exists(dev->nd_net.net)) {
		struct net *net = BPF_CORE_READ(dev, nd_net.net);
		if (net)
			k->netns = BPF_CORE_READ(net, ns.inum);
	}
}

static __always_inline void br_key(struct net_bridge___tt *br, struct ttx_dev_key *k)
{
	dev_key(BPF_CORE_READ(br, dev), k);
}

static __always_inline __u32 port_ifindex(struct net_bridge_port___tt *port)
{
	if (!port)
		return 0;
	struct net_device *dev = BPF_CORE_READ(port, dev);
	return dev ? BPF_CORE_READ(dev, ifindex) : 0;
}

SEC("tp_btf/br_fdb_update")
int ttx_br_fdb_update(__u64 *ctx)
{
	struct net_bridge___tt *br = (void *)ctx[0];
	struct ttx_dev_key bk;
	br_key(br, &bk);
	if (!bpf_map_lookup_elem(&devs, &bk)) /* not a bridge we watch */
		return 0;
	struct ttx_fdb_key fk = {};
	fk.netns = bk.netns;
	fk.bridge = bk.ifindex;
	fk.port = port_ifindex((void *)ctx[1]);
	struct ttx_fdb_seen_key sk = {};
	sk.br = ctx[0];
	bpf_probe_read_kernel(sk.addr, sizeof(sk.addr), (void *)ctx[2]);
	sk.vid = (__u16)ctx[3];
	__u32 *was = bpf_map_lookup_elem(&fdb_seen, &sk);
	fk.event = (was && *was != fk.port) ? TTX_FDB_MOVED : TTX_FDB_LEARNED;
	if (was && *was == fk.port)
		return 0; /* not a change */
	bpf_map_update_elem(&fdb_seen, &sk, &fk.port, BPF_ANY);
	count(&fdb, &fk);
	return 0;
}

SEC("tp_btf/fdb_delete")
int ttx_fdb_delete(__u64 *ctx)
{
	struct net_bridge___tt *br = (void *)ctx[0];
	struct net_bridge_fdb_entry___tt *f = (void *)ctx[1];
	struct ttx_dev_key bk;
	br_key(br, &bk);
	if (!bpf_map_lookup_elem(&devs, &bk)) /* not a bridge we watch */
		return 0;
	struct ttx_fdb_key fk = {};
	fk.netns = bk.netns;
	fk.bridge = bk.ifindex;
	fk.event = TTX_FDB_DELETED;
	fk.port = port_ifindex(BPF_CORE_READ(f, dst));
	struct ttx_fdb_seen_key sk = {};
	sk.br = ctx[0];
	bpf_probe_read_kernel(sk.addr, sizeof(sk.addr), &f->key.addr);
	sk.vid = BPF_CORE_READ(f, key.vlan_id);
	bpf_map_delete_elem(&fdb_seen, &sk);
	count(&fdb, &fk);
	return 0;
}
