"""The supervisor behind `checkout up`, driving small `python -c` children.

No database or broker: these start real processes and check what happens to them.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from infra.cli import supervisor as supervisor_module
from infra.cli.supervisor import Backoff, ConsoleSink, Part, Supervisor
from tests.support.polling import eventually

SLEEPER = "import os, time; print('pid', os.getpid(), flush=True); time.sleep(120)"
GRACEFUL = textwrap.dedent(
    """
    import os, signal, sys, time
    def finish(*_):
        print('finishing in-flight work', flush=True)
        time.sleep(0.3)
        print('done', flush=True)
        sys.exit(0)
    signal.signal(signal.SIGTERM, finish)
    print('pid', os.getpid(), flush=True)
    time.sleep(120)
    """
)
STUBBORN = (
    "import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('pid', os.getpid(), flush=True); time.sleep(120)"
)


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Running:
    """A supervisor running in this event loop, writing console lines to a buffer."""

    def __init__(self, parts: list[Part], **options: object) -> None:
        self.out = io.StringIO()
        sink = ConsoleSink([p.name for p in parts], stream=self.out)
        self.supervisor = Supervisor(parts, sink, **options)  # type: ignore[arg-type]
        self.task = asyncio.create_task(self.supervisor.run())

    async def wait_for_output(self, *needles: str, timeout: float = 15.0) -> str:
        async def text() -> str:
            return self.out.getvalue()

        return await eventually(
            text,
            until=lambda t: all(n in t for n in needles),
            timeout=timeout,
            what=", ".join(needles),
        )

    async def stop(self, within: float = 10.0) -> None:
        self.supervisor.stop()
        await asyncio.wait_for(self.task, within)


async def test_every_part_starts_and_its_lines_come_out_prefixed() -> None:
    running = Running(
        [
            Part("alpha", python("print('hello from alpha', flush=True); " + SLEEPER)),
            Part(
                "beta-long",
                python("import sys; print('oops on stderr', file=sys.stderr); " + SLEEPER),
            ),
        ],
        grace=5,
    )

    await running.wait_for_output("alpha      | hello from alpha", "beta-long  | oops on stderr")
    pids = running.supervisor.pids()
    await running.stop()

    assert set(pids) == {"alpha", "beta-long"}
    assert not any(alive(pid) for pid in pids.values())
    assert running.supervisor.starts == {"alpha": 1, "beta-long": 1}


async def test_a_part_that_exits_is_restarted_and_that_is_logged() -> None:
    running = Running(
        [Part("crashy", python("import sys; print('up', flush=True); sys.exit(3)"))],
        backoff=Backoff(first=0.05, cap=0.2),
    )

    async def text() -> str:
        return running.out.getvalue()

    await eventually(text, until=lambda t: t.count("crashy     | up") >= 3, what="three runs")
    await running.stop()

    assert running.supervisor.starts["crashy"] >= 3
    assert (
        "part exited unexpectedly, restarting  part=crashy reason=exit code 3"
        in running.out.getvalue()
    )


async def test_a_part_that_cannot_start_is_retried() -> None:
    running = Running(
        [Part("ghost", ["/nonexistent/checkout-part"])], backoff=Backoff(first=0.05, cap=0.1)
    )

    await running.wait_for_output("part could not start", "reason=did not start")
    await running.stop()


async def test_stopping_during_a_restart_delay_does_not_wait_for_it() -> None:
    running = Running(
        [Part("crashy", python("import sys; sys.exit(1)"))], backoff=Backoff(first=600, cap=600)
    )
    await running.wait_for_output("restart_in=600s")

    await running.stop(within=5)


async def test_a_second_stop_kills_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    running = Running([Part("stubborn", python(STUBBORN))], grace=600)
    await running.wait_for_output("stubborn   | pid")

    running.supervisor.stop()
    running.supervisor.stop()  # the same request delivered twice: still graceful
    await running.wait_for_output("stopping every part")
    assert "again" not in running.out.getvalue()
    monkeypatch.setattr(supervisor_module, "REPEAT_WINDOW", 0.0)
    running.supervisor.stop()
    await asyncio.wait_for(running.task, 10)

    assert "killing" in running.out.getvalue()


# --------------------------------------------------------------------- as its own process

SUPERVISOR_SCRIPT = """
import asyncio, sys
from infra.cli.supervisor import ConsoleSink, Part, Supervisor, supervise

children = {children!r}
parts = [Part(name, [sys.executable, "-c", code]) for name, code in children.items()]
supervisor = Supervisor(parts, ConsoleSink(list(children)), grace={grace})
asyncio.run(supervise(supervisor))
print("supervisor exited", flush=True)
"""


class SupervisorProcess:
    """`python supervisor.py` with its output collected line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def start(
        cls, tmp_path: Path, children: dict[str, str], grace: float
    ) -> SupervisorProcess:
        script = tmp_path / "supervisor.py"
        script.write_text(SUPERVISOR_SCRIPT.format(children=children, grace=grace))
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=Path(__file__).parents[2],
        )
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append(raw.decode().rstrip("\n"))

    async def child_pids(self, count: int) -> list[int]:
        async def pids() -> list[int]:
            return [int(line.rsplit(" ", 1)[1]) for line in self.lines if "| pid " in line]

        return await eventually(pids, until=lambda p: len(p) == count, what=f"{count} children")

    async def exit_code(self, within: float) -> int:
        code = await asyncio.wait_for(self.proc.wait(), within)
        await asyncio.wait_for(self.reader, 5)
        return code

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


@pytest.fixture
async def supervisors() -> object:
    started: list[SupervisorProcess] = []
    yield started
    for supervisor in started:  # only if a test failed half-way
        supervisor.kill()
        await supervisor.proc.wait()
        await supervisor.reader


async def test_sigterm_stops_every_part_gracefully_and_exits_0(
    tmp_path: Path, supervisors: list[SupervisorProcess]
) -> None:
    sup = await SupervisorProcess.start(
        tmp_path, {"sleeper": SLEEPER, "graceful": GRACEFUL}, grace=10
    )
    supervisors.append(sup)
    pids = await sup.child_pids(2)

    began = time.monotonic()
    sup.proc.send_signal(signal.SIGTERM)
    code = await sup.exit_code(within=15)

    assert code == 0
    assert time.monotonic() - began < 10
    output = "\n".join(sup.lines)
    assert "graceful   | done" in output  # its in-flight work was finished
    assert "killing" not in output
    assert sup.lines[-1] == "supervisor exited"
    assert not any(alive(pid) for pid in pids)


async def test_a_part_that_ignores_sigterm_is_killed_after_the_grace_period(
    tmp_path: Path, supervisors: list[SupervisorProcess]
) -> None:
    sup = await SupervisorProcess.start(
        tmp_path, {"stubborn": STUBBORN, "sleeper": SLEEPER}, grace=0.5
    )
    supervisors.append(sup)
    pids = await sup.child_pids(2)

    sup.proc.send_signal(signal.SIGINT)
    code = await sup.exit_code(within=10)

    assert code == 0
    output = "\n".join(sup.lines)
    assert "part did not stop in time, killing it  part=stubborn grace=0.5s" in output
    assert "part stopped  part=stubborn reason=signal SIGKILL" in output
    assert "part stopped  part=sleeper reason=signal SIGTERM" in output
    assert not any(alive(pid) for pid in pids)


async def test_a_stop_goes_on_when_nobody_reads_the_output_any_more(tmp_path: Path) -> None:
    """`make run | tee log` and Ctrl-C: the same SIGINT ends `tee`, and the supervisor's
    lines about stopping go to a pipe nobody reads. Every part must still stop."""
    script = tmp_path / "supervisor.py"
    script.write_text(
        SUPERVISOR_SCRIPT.format(children={"sleeper": SLEEPER, "graceful": GRACEFUL}, grace=10)
    )
    read_end, write_end = os.pipe()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        stdout=write_end,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=Path(__file__).parents[2],
    )
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as output:  # the "tee"

            def two_pids() -> list[int]:
                pids: list[int] = []
                while len(pids) < 2:
                    line = output.readline().decode()
                    if not line:
                        break
                    if "| pid " in line:
                        pids.append(int(line.rsplit(" ", 1)[1]))
                return pids

            pids = await asyncio.wait_for(asyncio.to_thread(two_pids), 15)
            assert len(pids) == 2
        # The reader is gone; the children go on printing into the supervisor's pipe.
        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), 15)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    assert code == 0
    assert not any(alive(pid) for pid in pids)
