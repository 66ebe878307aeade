"""Ctrl-C and SIGTERM handling (tracer.cli.stop_on_signals), without root."""
from __future__ import annotations

import signal

from tracer.cli import stop_on_signals


def test_a_signal_landing_while_the_first_is_handled_does_not_deadlock():
    """A second SIGTERM that arrives while the first handler is inside Event.set() (which holds a
    lock that is not reentrant) deadlocked follow. Here the second one lands exactly there."""
    with stop_on_signals() as stop:
        handler = signal.getsignal(signal.SIGTERM)
        original = stop.set
        nested = []

        def set_while_a_second_signal_lands():
            nested.append(True)
            handler(signal.SIGTERM, None)  # would recurse (and, with the real lock, hang) unguarded
            original()

        stop.set = set_while_a_second_signal_lands
        handler(signal.SIGTERM, None)
        assert stop.is_set() and nested == [True]
        handler(signal.SIGINT, None)  # later signals: nothing more to do
    assert signal.getsignal(signal.SIGTERM) is not handler  # the previous handlers are back
