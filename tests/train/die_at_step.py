"""`python die_at_step.py STEP <sq-jax cli args>`: the sq-jax CLI, SIGKILLed by itself right after training step
STEP is done on every process.

An outside kill once a checkpoint appears races the steps after it (a micro-model step takes ~0.1 s): on a loaded
CI box the poller woke after the run had finished. Killing from inside lands at the same step every time. Every
process first meets at a barrier, so none dies while another still waits on it in a collective."""

from __future__ import annotations

import os
import signal
import sys

from sq_jax.cli import main
from sq_jax.parallel.distributed import sync
from sq_jax.train.trainer import Trainer


def _save_then_die_at(step: int):
    original = Trainer._save

    def save(self: Trainer, force: bool = False) -> None:
        original(self, force)
        if self.step == step:
            self.checkpointer.wait()
            sync(f"die-at-step-{step}")
            os.kill(os.getpid(), signal.SIGKILL)

    return save


if __name__ == "__main__":
    Trainer._save = _save_then_die_at(int(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
