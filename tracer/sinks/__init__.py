"""Outputs. Each output is a sink with the same small interface, so `follow` feeds any mix of them
without knowing which: journey(j), summary(s), close().

pcap.PcapSink is the raw writer underneath `--pcap` (write_frame, close); the journey-level
adapter that gives it that interface lives with the other run-time plumbing in tracer.runtime.
"""
