"""Running parity checks in several processes under ``torch.distributed``.

:func:`launch` starts ``world_size`` fresh Python processes (``python -m
reimpl_parity.distributed SCENARIO RANK ...``) that join one process group over 127.0.0.1
(a TCP store on a free port; gloo's sockets on the loopback interface, ``lo`` or
``$REIMPL_GLOO_IFNAME``), run the named scenario from :mod:`reimpl_parity.dist_scenarios`
and save what it returns to ``<out_dir>/rank<R>.pt``. The launcher waits at most
``timeout`` seconds and kills every child on overrun, so a hung collective fails a test
instead of stalling CI.

A scenario returns ``{"checks": {name: failure message or ""}, ...}``: comparisons are
made inside the workers (no collective may depend on whether one failed, or the other
ranks would hang) and collected here.
"""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
import time
from typing import Any

import torch


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(pathlib.Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    env.setdefault("OMP_NUM_THREADS", "1")
    loopback = "lo0" if sys.platform == "darwin" else "lo"
    env["GLOO_SOCKET_IFNAME"] = env.get("REIMPL_GLOO_IFNAME", loopback)
    env["MASTER_ADDR"] = "127.0.0.1"
    env.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    # A rank that dies on a signal leaves an empty log otherwise; this prints its stack.
    env["PYTHONFAULTHANDLER"] = "1"
    return env


class WorkerError(RuntimeError):
    """A worker failed, or the group did not finish in time."""


def launch(
    scenario: str,
    out_dir: pathlib.Path | str,
    *,
    world_size: int = 2,
    backend: str = "gloo",
    timeout: float = 120.0,
    attempts: int = 3,
) -> list[dict[str, Any]]:
    """Run ``scenario`` on ``world_size`` processes; return each rank's result, by rank.

    The store's port is chosen free just before the start; should another process take it
    in between (``EADDRINUSE``), the group is started again on a new port."""
    for attempt in range(attempts):
        try:
            return _launch_once(scenario, out_dir, world_size, backend, timeout)
        except WorkerError as e:
            if "address already in use" not in str(e).lower() or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _launch_once(
    scenario: str,
    out_dir: pathlib.Path | str,
    world_size: int,
    backend: str,
    timeout: float,
    grace: float = 3.0,
) -> list[dict[str, Any]]:
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    for rank in range(world_size):
        log = open(out / f"rank{rank}.log", "wb")  # noqa: SIM115 - closed below
        logs.append(log)
        cmd = [
            sys.executable,
            "-m",
            "reimpl_parity.distributed",
            scenario,
            str(rank),
            str(world_size),
            str(port),
            str(out),
            backend,
        ]
        procs.append(subprocess.Popen(cmd, env=_child_env(), stdout=log, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + timeout
    timed_out = False
    killed: set[int] = set()
    try:
        # Poll: a rank that fails may leave the others blocked in a collective, so after a
        # failure they get a short grace period to exit (with their own error), not the
        # whole timeout.
        while True:
            codes = [p.poll() for p in procs]
            if all(c is not None for c in codes):
                break
            if any(c not in (None, 0) for c in codes):
                deadline = min(deadline, time.monotonic() + grace)
            if time.monotonic() > deadline:
                timed_out = not any(c not in (None, 0) for c in codes)
                break
            time.sleep(0.05)
    finally:
        for r, p in enumerate(procs):
            if p.poll() is None:
                p.kill()
                p.wait()
                killed.add(r)
        for log in logs:
            log.close()
    failed = [r for r, p in enumerate(procs) if p.returncode != 0 and r not in killed]
    if timed_out or failed:
        tails = "\n".join(
            f"--- rank {r} ({'killed' if r in killed else f'exit {procs[r].returncode}'}) ---\n"
            + (out / f"rank{r}.log").read_text(errors="replace")[-3000:]
            for r in range(world_size)
        )
        what = f"timed out after {timeout:.0f}s" if timed_out else f"ranks {failed} failed"
        raise WorkerError(f"scenario {scenario!r}: {what}\n{tails}")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


def failures(results: list[dict[str, Any]]) -> list[str]:
    """Every failed check, as ``"rank R: name: message"``."""
    return [
        f"rank {r}: {name}: {msg}"
        for r, res in enumerate(results)
        for name, msg in res["checks"].items()
        if msg
    ]


def _worker(argv: list[str]) -> None:
    scenario, rank, world_size, port, out_dir, backend = argv
    import torch.distributed as dist

    from reimpl_parity import dist_scenarios, triton_bounds

    triton_bounds.enable_from_env()

    dist.init_process_group(
        backend,
        init_method=f"tcp://127.0.0.1:{port}",
        rank=int(rank),
        world_size=int(world_size),
    )
    try:
        result = dist_scenarios.SCENARIOS[scenario]()
        result["triton_bounds_checked"] = triton_bounds.active()
        dist.barrier()
    finally:
        dist.destroy_process_group()
    torch.save(result, pathlib.Path(out_dir) / f"rank{rank}.pt")


if __name__ == "__main__":
    _worker(sys.argv[1:])
    # the result is saved: leave without the interpreter's teardown, where torch 2.14's
    # gloo threads sometimes abort the process ("terminate called without an active
    # exception") after a clean run
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
