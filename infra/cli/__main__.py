"""`python -m infra.cli ...`: the same commands as `checkout`; how `checkout up` starts its parts.

A part started by the supervisor asks the kernel for SIGTERM when the supervisor dies, so
that a supervisor killed with SIGKILL (or a crash) does not leave orphans serving ports
and consuming queues. Each part already stops gracefully on SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def _die_with_supervisor() -> None:
    supervisor = os.environ.get("CHECKOUT_SUPERVISOR_PID")
    if not supervisor or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError, ValueError):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        # The supervisor may have died before the request took effect.
        if os.getppid() != int(supervisor):
            os.kill(os.getpid(), signal.SIGTERM)


if __name__ == "__main__":
    _die_with_supervisor()
    from infra.cli.main import app

    app(prog_name="checkout")
