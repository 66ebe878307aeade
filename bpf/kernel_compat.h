/* What some kernels' BPF lacks and no load-time choice can hide, in one place. Each CO-RE object
 * is built with and without these defines (tracer/bpfbuild.py VARIANTS; the wheel carries both)
 * and the loader takes the one tracer/features.py's probe says; bcc gets the define it needs.
 * Everything else a kernel decides is load-time: .rodata and CO-RE guards in the programs. */
#ifndef TAPTTRACE_KERNEL_COMPAT_H
#define TAPTTRACE_KERNEL_COMPAT_H

/* tt_cas_u64(ptr, old, new): the value *ptr held, swapped to new if it was old.
 * BPF compare-and-swap needs 5.12; an older verifier refuses the whole program for it
 * ("BPF_XADD uses reserved fields"), even behind a branch it knows is never taken. Built with
 * TT_NO_ATOMICS (for kernels where features.bpf_atomics says no), a claim never succeeds: callers take their
 * slower path (follow: every hop as its own event; the exporter: its hash map of queued frames). */
#ifdef TT_NO_ATOMICS
#define tt_cas_u64(ptr, old, new) ((void)(ptr), (__u64)~0ULL)
#else
#define tt_cas_u64(ptr, old, new) __sync_val_compare_and_swap(ptr, old, new)
#endif

#endif
