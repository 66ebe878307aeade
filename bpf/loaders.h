/* One BPF source per program, read by both loaders.
 *
 * Each program (bpf/follow.c, bpf/exporter.c) is one file. libbpf builds it once into a CO-RE
 * object (tracer/libbpf_loader.py: clang -target bpf, vmlinux.h); bcc, the fallback, compiles the
 * same file at run time with -DTT_BCC (tracer/loader.py). What the two loaders spell differently
 * is spelled here once, so a kernel fix in a program is made in that program's one source:
 *
 *   hooks    TT_TRACEPOINT(tp, fn): tp_btf under libbpf, a raw tracepoint under bcc; both give
 *            `ctx` and TT_ARG(i), the tracepoint's i-th argument as a __u64.
 *            TT_FENTRY / TT_KPROBE: the two ways into a kernel function (features.bridge_hook).
 *   maps     TT_RINGBUF, TT_ARRAY, TT_PERCPU_ARRAY, TT_HASH, TT_PERCPU_HASH, TT_LRU_HASH declare
 *            them (max_entries: a constant the program may take from -D, for bcc, and libbpf's
 *            loader may change before load with bpf_map__set_max_entries). Using one is spelled
 *            per loader, in the program (`#ifdef TT_BCC`: map.lookup(k) / bpf_map_lookup_elem(&map,
 *            k)): bcc's rewriter turns map.method() into a helper call only where it is written
 *            in the source itself ("cannot use map function inside a macro"), and refuses the
 *            helper spelled out (its maps are not map pointers to the verifier). So each program
 *            keeps its map operations in a few small functions, each with both spellings.
 *   config   TT_CFG(field): the per-run values. libbpf: `tt_config.field`, a `const volatile`
 *            struct in .rodata set before load (one object serves every run); bcc: the constant
 *            -DTT_CFG_field=… the loader passes (bcc compiles every run anyway).
 *   fields   TT_FIELD(probed, ptr, field, OFF, type): a kernel struct's field. libbpf: a plain
 *            load through a BTF-typed pointer (tp_btf, fentry) or BPF_CORE_READ where the pointer
 *            is only a number (`probed`: kprobe); bcc: bpf_probe_read_kernel at OFF, the offset
 *            tracer/features.py read from the running kernel's BTF and passes as -D.
 *            TT_FIELD_ADDR(ptr, field, OFF): the field's address, for a helper that copies it
 *            (an array: a MAC, a device name): CO-RE relocated / ptr + OFF.
 *
 * Anything only one loader can do (libbpf: in-kernel trips on an mmapable array, CO-RE field
 * existence checks) sits in the program under #ifndef TT_BCC, with what the bcc build does instead.
 */
#ifndef TAPTTRACE_LOADERS_H
#define TAPTTRACE_LOADERS_H

#ifdef TT_BCC
/* bcc: its own helpers.h is already included; kernel structs are opaque (read at offsets). */
#include <uapi/linux/ptrace.h> /* struct pt_regs, PT_REGS_PARM*: the architecture's ABI */
struct sk_buff;
struct net_device;
struct net;

#define TT_ARG(i) (ctx->args[i])
#define TT_TRACEPOINT(tp, fn) RAW_TRACEPOINT_PROBE(tp)
/* bcc attaches KFUNC_PROBE programs as it loads them (kfunc__<func>): the loader defines
 * BRIDGE_HOOKS_FENTRY only where the function is in vmlinux's BTF. */
#define TT_FENTRY(func, fn, args...) KFUNC_PROBE(func, args)
/* A kprobe function bcc's Python attaches by name (tracer/loader.py). */
#define TT_KPROBE(func, fn) int fn(struct pt_regs *ctx)

#define TT_RINGBUF(name, pages) BPF_RINGBUF_OUTPUT(name, pages)
#define TT_ARRAY(name, value, n, flags) BPF_F_TABLE("array", int, value, name, n, flags)
#define TT_PERCPU_ARRAY(name, value, n) BPF_PERCPU_ARRAY(name, value, n)
#define TT_HASH(name, key, value, n) BPF_HASH(name, key, value, n)
#define TT_PERCPU_HASH(name, key, value, n) BPF_PERCPU_HASH(name, key, value, n)
#define TT_LRU_HASH(name, key, value, n, flags) BPF_F_TABLE("lru_hash", key, value, name, n, flags)
#define TT_CFG(field) (TT_CFG_##field)

#define TT_FIELD(probed, ptr, field, off, type)                                                   \
	({                                                                                         \
		type __tt_v = 0;                                                                   \
		bpf_probe_read_kernel(&__tt_v, sizeof(__tt_v), (void *)((__u64)(ptr) + (off)));   \
		__tt_v;                                                                            \
	})
#define TT_FIELD_ADDR(ptr, field, off) ((void *)((__u64)(ptr) + (off)))

#else /* libbpf */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#define TT_ARG(i) (ctx[i])
/* tp_btf: a BPF_PROG_TYPE_TRACING program on the tracepoint; its arguments are BTF-typed. */
#define TT_TRACEPOINT(tp, fn) SEC("tp_btf/" #tp) int fn(__u64 *ctx)
#define TT_FENTRY(func, fn, args...) SEC("fentry/" #func) int BPF_PROG(fn, args)
#define TT_KPROBE(func, fn) SEC("kprobe/" #func) int fn(struct pt_regs *ctx)
/* fexit: the function's arguments and, last, its return value (libbpf only: no bcc program needs it). */
#define TT_FEXIT(func, fn, args...) SEC("fexit/" #func) int BPF_PROG(fn, args)

#define TT_RINGBUF(name, pages)                                                                    \
	struct {                                                                                   \
		__uint(type, BPF_MAP_TYPE_RINGBUF);                                                \
		__uint(max_entries, (pages) * 4096); /* resized by the loader (--ringbuf-pages) */ \
	} name SEC(".maps")
#define TT_ARRAY(name, value_type, n, flags)                                                       \
	struct {                                                                                   \
		__uint(type, BPF_MAP_TYPE_ARRAY);                                                  \
		__uint(map_flags, flags);                                                          \
		__uint(max_entries, n);                                                            \
		__type(key, __u32);                                                                \
		__type(value, value_type);                                                         \
	} name SEC(".maps")
#define TT_PERCPU_ARRAY(name, value_type, n)                                                       \
	struct {                                                                                   \
		__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);                                           \
		__uint(max_entries, n);                                                            \
		__type(key, __u32);                                                                \
		__type(value, value_type);                                                         \
	} name SEC(".maps")
#define TT_HASH(name, key_type, value_type, n)                                                     \
	struct {                                                                                   \
		__uint(type, BPF_MAP_TYPE_HASH);                                                   \
		__uint(max_entries, n);                                                            \
		__type(key, key_type);                                                             \
		__type(value, value_type);                                                         \
	} name SEC(".maps")

#define TT_PERCPU_HASH(name, key_type, value_type, n)                                              \
	struct {                                                                                   \
		__uint(type, BPF_MAP_TYPE_PERCPU_HASH);                                            \
		__uint(max_entries, n);                                                            \
		__type(key, key_type);                                                             \
		__type(value, value_type);                                                         \
	} name SEC(".maps")
#define TT_LRU_HASH(name, key_type, value_type, n, flags)                                          \
	struct {                                                                                   \
		__uint(type, BPF_MAP_TYPE_LRU_HASH);                                               \
		__uint(map_flags, flags);                                                          \
		__uint(max_entries, n);                                                            \
		__type(key, key_type);                                                             \
		__type(value, value_type);                                                         \
	} name SEC(".maps")

#define TT_CFG(field) (tt_config.field)

/* `probed` is a constant in every inlined copy, so each program keeps one of the two reads. */
#define TT_FIELD(probed, ptr, field, off, type) ((probed) ? BPF_CORE_READ(ptr, field) : (ptr)->field)
/* &ptr->field: the access is relocated as a load would be (vmlinux.h's types and a program's own
 * `___flavour` types are preserve_access_index). */
#define TT_FIELD_ADDR(ptr, field, off) ((void *)&(ptr)->field)

char LICENSE[] SEC("license") = "GPL";
#endif

#endif
