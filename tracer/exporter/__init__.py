"""tapttrace exporter: in-kernel counters of bridge verdicts, drops, tap delivery and FDB changes,
served to Prometheus. program (bcc) / program_btf (libbpf) -> maps -> labels -> collector -> server;
service wires them."""
