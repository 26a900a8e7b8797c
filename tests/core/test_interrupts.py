"""Ctrl-C at safe points: the first SIGINT waits for ``check()``, the second raises at once."""

import os
import signal

import pytest

from adprune_core import interrupts
from adprune_core.callbacks import Callback
from adprune_core.checkpoint import read_state
from adprune_core.records import RunSummary
from adprune_core.trainer import train
from tests.helpers import tiny_config


def ctrl_c() -> None:
    os.kill(os.getpid(), signal.SIGINT)  # delivered to the main thread before os.kill returns to Python code


def test_first_interrupt_waits_for_check_second_raises_at_once(capsys):
    previous = signal.getsignal(signal.SIGINT)
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts.deferred():
            ctrl_c()
            reached.append("after the first")  # the first Ctrl-C did not raise here
            assert interrupts.requested()
            with pytest.raises(KeyboardInterrupt):
                interrupts.check()
            ctrl_c()  # the second raises where it lands
            reached.append("after the second")
    assert reached == ["after the first"]
    assert interrupts.MESSAGE in capsys.readouterr().err
    assert not interrupts.requested() and signal.getsignal(signal.SIGINT) is previous  # all undone


def test_pending_interrupt_raises_when_the_outermost_block_ends():
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts.deferred():
            with interrupts.deferred():  # nested: no new handler, no raise on leaving
                ctrl_c()
                steps.append("inner done")
            steps.append("outer done")
    assert steps == ["inner done", "outer done"]
    interrupts.check()  # nothing pending any more


def test_without_deferred_ctrl_c_raises_at_once():
    # Python's own handler (a process started as a background job inherits SIGINT ignored, and Python then
    # installs none): outside deferred() nothing of ours stands between Ctrl-C and KeyboardInterrupt
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with interrupts.deferred():
            pass  # entered and left: the handler it installed is gone again
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with pytest.raises(KeyboardInterrupt):
            ctrl_c()
    finally:
        signal.signal(signal.SIGINT, previous)


def test_trainer_finishes_the_callback_and_stops_at_the_next_step(tmp_path):
    """The interrupt arrives inside a callback (where the study writes to its tracking store): the
    callback completes, the epoch's checkpoint and summary are whole, training stops at the next step."""

    class InterruptedWhileLogging(Callback):
        def __init__(self):
            self.completed = []

        def on_epoch_end(self, record):
            if record.epoch == 2:
                ctrl_c()
            self.completed.append(record.epoch)  # the "write" after the signal still happens

    cb = InterruptedWhileLogging()
    cfg = tiny_config("train.epochs=4", "prune.schedule=fixed", "prune.epochs=[1]")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "run", callbacks=[cb], checkpoint_dir=tmp_path / "ckpt")
    assert cb.completed == [1, 2]
    summary = RunSummary.read(tmp_path / "run" / "summary.json")
    assert [e.epoch for e in summary.epochs] == [1, 2]
    assert read_state(tmp_path / "ckpt")["epoch"] == 2
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert not interrupts.requested()
