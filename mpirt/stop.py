"""A stop asked for by a signal, taken by every rank after the same step.

`mpirt launch` stops a job (the pod deleted, ``--time-limit``, Ctrl-C, a drained worker) by
giving the ranks SIGTERM and ``--grace`` seconds before the kill. A rank that stops where the
signal finds it leaves the others waiting in a collective, a signal may reach one rank only
(its worker was evicted), and a rank that exits before the checkpoint is written ends the job
by MPI's rule. So the handler only notes the signal, and moves the rank's output off mpirun's
pipe (``mpirt.divert``: mpirun relays nothing while it waits to kill, and a blocked print
would cost the checkpoint); ``agreed()``, called by every rank at a step boundary, gives every
rank the same answer; the loop then checkpoints and exits with ``exit_code`` (128 + the
signal), which ``python -m mpirt`` and the launcher read as a stop, not a failure::

    stop = Stop()
    for step in range(start, steps):
        train_one_step()
        if stop.agreed():
            if rank == 0:
                checkpoint.save(directory, step, state)
            sys.exit(stop.exit_code)  # MPI_Finalize waits for rank 0's checkpoint
"""

from __future__ import annotations

import signal as _signal

from mpirt.divert import divert
from mpirt.errors import env_rank

SIGNALS = (_signal.SIGTERM, _signal.SIGINT)


class Stop:
    """Notes SIGTERM and SIGINT (or ``signals``) from now on; ``comm``: the ranks that agree
    (an mpi4py communicator; default the world's)."""

    def __init__(self, comm=None, signals=SIGNALS):
        self.signal = 0  # the first signal this rank got, or (after agreed()) another rank's
        self._comm = comm
        self._rank = env_rank()
        try:
            for sig in signals:
                _signal.signal(sig, self._handler)
        except ValueError as e:
            raise ValueError(f"Stop() must be made in the main thread, where Python runs signal handlers ({e})") from None

    def _handler(self, signum: int, _frame) -> None:
        if not self.signal:
            divert(self._rank)
            self.signal = signum

    @property
    def requested(self) -> bool:
        """Whether this rank has been signalled (no communication)."""
        return self.signal != 0

    def agreed(self) -> bool:
        """True on every rank once any rank has been signalled. Collective: every rank calls
        it at the same points, one allreduce of one integer."""
        from mpirt.comm import MPI, world

        seen = (self._comm or world()).allreduce(self.signal, op=MPI.MAX)
        if seen and not self.signal:
            self.signal = seen  # another rank's: this one exits as a stopped rank too
            divert(self._rank)
        return seen != 0

    @property
    def exit_code(self) -> int:
        """128 + the signal (143 for SIGTERM, 130 for SIGINT), 0 with none."""
        return 128 + self.signal if self.signal else 0
