"""Shared by the exporter tests (no tests here): the in-process exporter and scrape readers."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tracer.exporter.collector import ExporterCollector
from tracer.exporter.service import kernel_namer, machine_inventory, open_program


def scrape(collector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """One scrape through the collector, as {(sample name, sorted labels): value}."""
    out = {}
    for fam in collector.collect():
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples: dict, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


@contextmanager
def exporter(features, **kw) -> Iterator[ExporterCollector]:
    """The exporter on the loader features chose (features.exporter_loader: libbpf where tp_btf works)."""
    with open_program(features) as program:
        yield ExporterCollector(program, kernel_namer(features), machine_inventory, **kw)
