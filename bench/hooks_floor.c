/* The bench's floor (config `hooks-floor`, bench/floor.py): a tp_btf program that returns at once
 * on each tracepoint that tapttrace's exporter and follow hook for every frame. bpf_stats' time a
 * frame for these is what any tracepoint-based counter costs on this machine before doing any
 * work: the dispatch (bpf_trace_run) and bpf_stats' own two clock reads. The exporter's "≤ 150 ns
 * of BPF a frame" target is read against it (bench/FINDINGS.md, item 11).
 *
 * No vmlinux.h, no helpers: nothing here reads the kernel. */
#define SEC(name) __attribute__((section(name), used))

char LICENSE[] SEC("license") = "GPL";

/* A device hands a received frame to the stack (every frame entering the bridge). */
SEC("tp_btf/netif_receive_skb") int floor_netif_receive_skb(unsigned long long *ctx) { return 0; }

/* dev_queue_xmit() on a device (every copy the bridge sends, the tap's queue). */
SEC("tp_btf/net_dev_queue") int floor_net_dev_queue(unsigned long long *ctx) { return 0; }

/* An skb freed after normal use (the guest reading it from the tap). */
SEC("tp_btf/consume_skb") int floor_consume_skb(unsigned long long *ctx) { return 0; }

/* An skb freed as a drop. */
SEC("tp_btf/kfree_skb") int floor_kfree_skb(unsigned long long *ctx) { return 0; }
