"""tapttrace exporter: in-kernel counters of bridge verdicts, drops, tap delivery and FDB changes,
served to Prometheus. program (bcc) -> labels -> collector -> server; service wires them."""
