"""Preemption: a stop signal during training becomes a checkpoint at the next step boundary.

A cluster warns a job before it ends it: Slurm sends ``--signal=USR2@120`` ahead of the time limit
(submitit asks for SIGUSR2; ``#SBATCH --signal=B:USR1@120`` in a hand-written script) and SIGTERM on
preemption or ``scancel``, then SIGKILL after its grace time. While
:func:`benchbase.engine.train` runs, :class:`StopSignals` catches SIGTERM, SIGUSR1 and SIGUSR2 and
only notes them. At the next step boundary the engine saves a checkpoint at that step (with each
process's random state, so the resumed run repeats the uninterrupted one) and then hands the signal
to whatever handled it before: submitit's handler requeues the job, whose rerun resumes from that
checkpoint; the default action ends the process as the signal would have. A signal ignored
before (``SIG_IGN``) stays ignored; SIGINT keeps raising ``KeyboardInterrupt`` at once.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import Any

import torch
from typing_extensions import Self

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class StopSignals:
    """A context that defers :data:`STOP_SIGNALS` to the training loop's step boundaries.

    Outside the main thread (where Python cannot install handlers) it does nothing.
    """

    def __init__(self) -> None:
        self.previous: dict[int, Any] = {}
        self.received: int | None = None

    @property
    def requested(self) -> bool:
        """Whether a stop signal arrived since entering (or since the last :meth:`deliver`)."""
        return self.received is not None

    def _note(self, signum: int, _frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                before = signal.getsignal(sig)
                if before not in (signal.SIG_IGN, None):
                    self.previous[sig] = before
                    signal.signal(sig, self._note)
        return self

    def _restore(self) -> None:
        for sig, before in self.previous.items():
            signal.signal(sig, before)

    def __exit__(self, *_exc: object) -> None:
        """Restore the previous handlers; a signal still pending (it came during the last step,
        after its check) reaches its handler now, after the final checkpoint."""
        self._restore()
        signum, self.received = self.received, None
        if signum is not None:
            self._hand_on(signum)

    def deliver(self) -> None:
        """Hand the noted signal to its previous handler (after the caller saved a checkpoint).

        The default action ends the process; a handler that returns (submitit's on ranks other than
        0, which leave the requeue to rank 0) lets training go on, deferring signals again.
        """
        signum, self.received = self.received, None
        if signum is None:
            return
        self._restore()
        try:
            self._hand_on(signum)
        finally:
            self.__enter__()

    def _hand_on(self, signum: int) -> None:
        before = self.previous.get(signum, signal.SIG_DFL)
        if callable(before):
            before(signum, None)
        else:  # SIG_DFL: the signal's own default action, now that the checkpoint is on disk
            os.kill(os.getpid(), signum)


def rng_state() -> dict[str, torch.Tensor | None]:
    """This process's torch random state: the CPU generator and the current CUDA device's."""
    cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def set_rng_state(state: dict[str, torch.Tensor | None]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["cpu"])
    if state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"])
