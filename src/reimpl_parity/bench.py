"""Benchmarks: reimpl against torch in one process, interleaved, medians of per-pair ratios.

Each case builds a pair of zero-argument callables (reimpl's, torch's) doing the same work
on separate but identical data. Timing alternates A B A B ... after a warm-up; on CUDA each
call is timed with events after a synchronize. We report both medians and the median of the
per-pair ratios reimpl/torch (the ratio is what to quote; absolute times only with the device
and torch version beside them).
"""

from __future__ import annotations

import argparse
import copy
import functools
import platform
import signal
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import torch

Fn = Callable[[], object]
R = TypeVar("R")


@dataclass
class Result:
    case: str
    device: str
    reimpl_ms: float
    torch_ms: float
    ratio: float  # median of per-pair ratios reimpl/torch
    reps: int
    # peak memory of one call beyond what was held before it (memory cases only; MiB)
    reimpl_peak_mib: float | None = None
    torch_peak_mib: float | None = None
    reimpl_min_ms: float | None = None
    torch_min_ms: float | None = None
    # "pair": reimpl against torch; "bound": a fused step against its memory bound (then
    # torch_ms is the bound's time and ratio the step's time over it; bench_bound.py)
    kind: str = "pair"
    bandwidth_gbs: float | None = None  # "bound" rows: the bandwidth the bound assumes


class Timing(NamedTuple):
    ours_ms: float  # medians
    theirs_ms: float
    ratio: float  # median of the per-pair ratios
    ours_min_ms: float
    theirs_min_ms: float


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@functools.cache
def _l2_flusher(device: str) -> torch.Tensor:
    """256 MiB to write before each timed CUDA call, so that no call finds its operands
    left in L2 by the previous one (as ``triton.testing.do_bench`` does)."""
    return torch.empty(2**26, dtype=torch.int32, device=device)


def _time_once(fn: Fn, device: str) -> float:
    if device.startswith("cuda"):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        _l2_flusher(device).zero_()
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return float(start.elapsed_time(end))
    t0 = time.perf_counter_ns()
    fn()
    return (time.perf_counter_ns() - t0) / 1e6


def time_pair(ours: Fn, theirs: Fn, device: str, *, warmup: int = 3, reps: int = 15) -> Timing:
    """Medians and minimums (ms) and the median of per-pair ratios, interleaved."""
    for _ in range(warmup):
        ours()
        theirs()
    _sync(device)
    a, b = [], []
    for i in range(reps):
        # alternate who goes first, so neither always runs on a warmer cache
        if i % 2:
            tb, ta = _time_once(theirs, device), _time_once(ours, device)
        else:
            ta, tb = _time_once(ours, device), _time_once(theirs, device)
        a.append(ta)
        b.append(tb)
    ratios = [x / y for x, y in zip(a, b, strict=True) if y > 0]
    return Timing(
        statistics.median(a), statistics.median(b), statistics.median(ratios), min(a), min(b)
    )


def peak_memory_mib(fn: Fn, device: str) -> float | None:
    """Peak bytes the torch allocator held during ``fn()`` beyond what it held when it
    started, in MiB (tensors only: Python objects and allocator caching do not count).

    CUDA: the allocator's own peak statistic. CPU: torch keeps no peak for its CPU
    allocator, so the profiler records every allocation and free (``profile_memory``) and
    the running sum of their sizes, in time order, gives the peak; None where this torch's
    profiler does not expose the raw events (a private attribute, hence the guard).
    """
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    try:
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        events.sort(key=lambda e: e.start_ns())
        held = peak = 0
        for e in events:
            held += e.nbytes()
            peak = max(peak, held)
    except (AttributeError, TypeError):
        return None
    return peak / 2**20


# ----------------------------------------------------------------------------- cases


def _loss_cases(device: str, scale: int) -> Iterator[tuple[str, Fn, Fn]]:
    import torch.nn.functional as TF

    import reimpl.nn.functional as F

    g = torch.Generator(device=device).manual_seed(0)
    n, c = 2048 * scale, 1000
    logits = torch.randn(n, c, device=device, generator=g)
    idx = torch.randint(0, c, (n,), device=device, generator=g)
    y = torch.randn(n, c, device=device, generator=g)
    u = torch.rand(n, c, device=device, generator=g)

    def fwd_bwd(
        fn: Callable[..., torch.Tensor], x: torch.Tensor, *args: object, **kw: object
    ) -> Fn:
        leaf = x.clone().requires_grad_()

        def run() -> None:
            fn(leaf, *args, **kw).backward()
            leaf.grad = None

        return run

    cases: list[tuple[str, str, tuple[object, ...], dict[str, object]]] = [
        ("cross_entropy", "cross_entropy", (idx,), {}),
        ("cross_entropy label_smoothing=0.1", "cross_entropy", (idx,), {"label_smoothing": 0.1}),
        ("binary_cross_entropy_with_logits", "binary_cross_entropy_with_logits", (u,), {}),
        (
            "binary_cross_entropy_with_logits pos_weight=(C,)",
            "binary_cross_entropy_with_logits",
            (u,),
            {"pos_weight": torch.rand(c, device=device, generator=g) + 0.5},
        ),
        ("mse_loss", "mse_loss", (y,), {}),
        ("smooth_l1_loss", "smooth_l1_loss", (y,), {}),
    ]
    for label, name, args, kw in cases:
        yield (
            f"{label} fwd+bwd {n}x{c}",
            fwd_bwd(getattr(F, name), logits, *args, **kw),
            fwd_bwd(getattr(TF, name), logits, *args, **kw),
        )
    if device.startswith("cuda"):
        # the memory-lean cross-entropy targets: large vocabularies, fp32 and bf16
        for rows, classes, dtype in ((8192, 32768, torch.float32), (8192, 131072, torch.bfloat16)):
            big = torch.randn(rows, classes, device=device, dtype=dtype, generator=g)
            tgt = torch.randint(0, classes, (rows,), device=device, generator=g)
            yield (
                f"cross_entropy fwd+bwd {rows}x{classes} {str(dtype)[6:]}",
                fwd_bwd(F.cross_entropy, big, tgt),
                fwd_bwd(TF.cross_entropy, big, tgt),
            )


def _linear_cross_entropy_cases(device: str, quick: bool) -> Iterator[tuple[str, Fn, Fn]]:
    """reimpl's chunked linear_cross_entropy against torch's (reference and chunked paths,
    torch >= 2.13) and against the naive cross_entropy(x @ W.T): time and peak memory.

    Sizes: the issue's N=4096, D=1024, V=32768 (float32) on CUDA, with a bfloat16 LLM-head
    size; on CPU N=2048, D=512, V=16384 (the issue's size takes ~20 s a call on 2 cores).
    """
    import torch.nn.functional as TF

    import reimpl.nn.functional as F

    if device.startswith("cuda"):
        sizes = [(4096, 1024, 32768, torch.float32), (8192, 2048, 131072, torch.bfloat16)]
    else:
        sizes = [(1024, 256, 8192, torch.float32) if quick else (2048, 512, 16384, torch.float32)]
    g = torch.Generator(device=device).manual_seed(0)
    torch_lce = getattr(TF, "linear_cross_entropy", None)
    options = getattr(torch.nn, "LinearCrossEntropyOptions", None)
    for n, d, v, dtype in sizes:
        x = torch.randn(n, d, device=device, generator=g).to(dtype)
        w = (torch.randn(v, d, device=device, generator=g) / d**0.5).to(dtype)
        t = torch.randint(0, v, (n,), device=device, generator=g)

        label = f"linear_cross_entropy fwd+bwd N={n} D={d} V={v} {str(dtype)[6:]}"
        ours = _fwd_bwd3(F.linear_cross_entropy, x, w, t)
        if torch_lce is not None:
            yield f"{label} vs torch", ours, _fwd_bwd3(torch_lce, x, w, t)
        if torch_lce is not None and options is not None:
            chunked = functools.partial(torch_lce, options=options())
            yield (
                f"{label} vs torch options=LinearCrossEntropyOptions()",
                ours,
                _fwd_bwd3(chunked, x, w, t),
            )
        yield (
            f"{label} vs cross_entropy(x @ W.T)",
            ours,
            _fwd_bwd3(lambda a, b, c: TF.cross_entropy(a @ b.t(), c), x, w, t),
        )


def _fwd_bwd3(fn: Callable[..., torch.Tensor], x: torch.Tensor, w: torch.Tensor, t: object) -> Fn:
    """``fn(x, W, t).backward()`` on leaf copies of x and W, their gradients dropped after."""
    xl, wl = x.clone().requires_grad_(), w.clone().requires_grad_()

    def run() -> None:
        fn(xl, wl, t).backward()
        xl.grad = wl.grad = None

    return run


def _regularizer_cases(device: str, scale: int) -> Iterator[tuple[str, Fn, Fn]]:
    import reimpl.nn as rnn

    if hasattr(rnn, "BatchNorm2d"):
        shape = (8 * scale, 64, 32, 32)
        x = torch.randn(*shape, device=device)
        ours_bn, torch_bn = rnn.BatchNorm2d(64).to(device), torch.nn.BatchNorm2d(64).to(device)

        def bn(mod: torch.nn.Module, x: torch.Tensor = x) -> Fn:
            leaf = x.clone().requires_grad_()

            def run() -> None:
                mod(leaf).sum().backward()
                leaf.grad = None

            return run

        def bn_eval(mod: torch.nn.Module, x: torch.Tensor = x) -> Fn:
            frozen = copy.deepcopy(mod).eval()

            def run() -> None:
                with torch.no_grad():
                    frozen(x)

            return run

        yield f"BatchNorm2d train fwd+bwd {shape}", bn(ours_bn), bn(torch_bn)
        yield f"BatchNorm2d eval fwd {shape}", bn_eval(ours_bn), bn_eval(torch_bn)
        # a ResNet stage on the CPU (the size issue 16 measured at 3.7x)
        resnet = torch.randn(32, 64, 28, 28, device=device)
        yield (
            f"BatchNorm2d train fwd+bwd {tuple(resnet.shape)}",
            bn(ours_bn, resnet),
            bn(torch_bn, resnet),
        )
        if hasattr(rnn, "InstanceNorm2d"):
            ours_in = rnn.InstanceNorm2d(64, affine=True).to(device)
            torch_in = torch.nn.InstanceNorm2d(64, affine=True).to(device)
            yield f"InstanceNorm2d(affine) train fwd+bwd {shape}", bn(ours_in), bn(torch_in)
    if hasattr(rnn, "Dropout"):
        x = torch.randn(2048 * scale, 1000, device=device)
        ours_do, torch_do = rnn.Dropout(0.5), torch.nn.Dropout(0.5)
        yield (f"Dropout(0.5) fwd {tuple(x.shape)}", lambda: ours_do(x), lambda: torch_do(x))


def _normalization_cases(device: str, quick: bool) -> Iterator[tuple[str, Fn, Fn]]:
    """LayerNorm/RMSNorm at transformer sizes ((batch·sequence, hidden) fp32) and GroupNorm
    at a ResNet-stage size (32 groups), each a training step's forward and backward with
    a fixed upstream gradient (weight and bias gradients included)."""
    import reimpl.nn as rnn

    rows = (8 if quick else 32) * 128
    layers = [
        ("LayerNorm", (1024,), (rows, 1024)),
        ("RMSNorm", (1024,), (rows, 1024)),
        ("GroupNorm", (32, 64), (8 if quick else 32, 64, 28, 28)),
    ]
    g = torch.Generator(device=device).manual_seed(0)
    for cls, args, shape in layers:
        if not hasattr(rnn, cls):
            continue
        x = torch.randn(*shape, device=device, generator=g)
        dy = torch.randn(*shape, device=device, generator=g)

        def step(mod: torch.nn.Module, x: torch.Tensor = x, dy: torch.Tensor = dy) -> Fn:
            leaf = x.clone().requires_grad_()

            def run() -> None:
                mod(leaf).backward(dy)
                leaf.grad = None
                mod.zero_grad(set_to_none=True)

            return run

        ours, theirs = getattr(rnn, cls)(*args).to(device), getattr(torch.nn, cls)(*args).to(device)
        yield f"{cls} train fwd+bwd {shape}", step(ours), step(theirs)


def _optimizer_cases(device: str, n_tensors: int, numel: int) -> Iterator[tuple[str, Fn, Fn]]:
    import reimpl.optim as ropt

    configs = [
        ("SGD momentum=0.9", "SGD", {"lr": 0.01, "momentum": 0.9}),
        ("Adagrad", "Adagrad", {"lr": 0.01}),
        ("RMSprop", "RMSprop", {"lr": 0.01}),
        ("Adam", "Adam", {"lr": 1e-3}),
        ("AdamW", "AdamW", {"lr": 1e-3}),
        ("NAdam", "NAdam", {"lr": 2e-3}),
        ("RAdam", "RAdam", {"lr": 1e-3}),
        ("Adamax", "Adamax", {"lr": 2e-3}),
        ("Adadelta", "Adadelta", {"lr": 1.0}),
        ("Rprop", "Rprop", {"lr": 1e-2}),
        ("ASGD", "ASGD", {"lr": 1e-2}),
        ("Adafactor", "Adafactor", {"lr": 1e-2}),
    ]
    g = torch.Generator(device=device).manual_seed(0)
    base = [torch.randn(numel, device=device, generator=g) for _ in range(n_tensors)]
    grads = [torch.randn(numel, device=device, generator=g) for _ in range(n_tensors)]
    for label, name, kw in configs:
        if not hasattr(ropt, name):
            continue
        for path in ("default", "foreach", "fused"):
            flags = {} if path == "default" else {path: True}
            label_path = f"{label} [{path}]"
            steps = []
            for cls in (getattr(ropt, name), getattr(torch.optim, name)):
                params = [torch.nn.Parameter(p.clone()) for p in base]
                for p, gr in zip(params, grads, strict=True):
                    p.grad = gr.clone()
                try:
                    steps.append(cls(params, **kw, **flags).step)
                except TypeError:
                    # torch has no fused variant (RMSprop, ...): compare with its foreach path
                    steps.append(cls(params, **kw, foreach=True).step)
                    label_path = f"{label} [fused; torch has none: vs torch foreach]"
            yield f"{label_path} {n_tensors}x{numel // 1_000_000}M", steps[0], steps[1]


def run(
    device: str,
    *,
    quick: bool = False,
    reps: int | None = None,
    only: str | None = None,
    failures: list[str] | None = None,
    into: list[Result] | None = None,
) -> list[Result]:
    """Every case's timing (and peak memory). ``failures``: see :func:`attempt`. ``into``:
    the list the results are appended to as they come (what a stopped run has done)."""
    cuda = device.startswith("cuda")
    scale = 1 if quick else 4 if cuda else 2
    n_tensors = (10 if quick else 100) if cuda else (2 if quick else 10)
    numel = 1_000_000
    reps = reps or (5 if quick else 15)
    gens = [  # (cases, whether to measure peak memory too)
        (_loss_cases(device, scale), False),
        (_linear_cross_entropy_cases(device, quick), True),
        (_regularizer_cases(device, scale), False),
        (_normalization_cases(device, quick), False),
        (_optimizer_cases(device, n_tensors, numel), False),
    ]
    out = [] if into is None else into
    for gen, memory in gens:
        for name, ours, theirs in gen:
            if only and only not in name:
                continue
            warmup = 1 if memory else 2 if quick else 3  # the memory cases are the slow ones
            got = attempt(name, failures, _measure, ours, theirs, device, warmup, reps, memory)
            if got is None:
                continue
            t, peaks = got
            res = Result(name, device, t.ours_ms, t.theirs_ms, t.ratio, reps)
            res.reimpl_min_ms, res.torch_min_ms = t.ours_min_ms, t.theirs_min_ms
            res.reimpl_peak_mib, res.torch_peak_mib = peaks
            line = row_line(name, t.ours_ms, t.theirs_ms, t.ratio)
            if memory:
                mib = [f"{m:.1f}" if m is not None else "?" for m in peaks]
                line += f"  peak MiB reimpl {mib[0]} torch {mib[1]}"
            out.append(res)
            print(line, flush=True)
    from reimpl_parity.bench_bound import bound_rows

    out.extend(bound_rows(device, n_tensors, numel, quick, reps, only, failures))
    if not cuda:
        from reimpl_parity.bench_dist import dist_rows

        out.extend(dist_rows(quick, reps, only))
    return out


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep what is freed (no heap trimming, no per-size mmap), so
    that one side of a pair freeing its temporaries does not make the other side's next
    allocations fault their pages in again. Without it, torch's foreach step right after
    one of our fused steps (which allocate nothing) took 2-3x its time in its own row: the
    big temporaries went back to the OS after every call. False where this is not glibc."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if platform.system() != "Linux" or name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # (glibc's malloc.h)
    return bool(mallopt(m_trim_threshold, 2**31 - 1) and mallopt(m_mmap_threshold, 2**30))


def attempt(
    name: str, failures: list[str] | None, fn: Callable[..., R], *args: Any, **kw: Any
) -> R | None:
    """``fn(*args, **kw)``; where it raises and ``failures`` is given, None, with the case
    named and its error in ``failures`` and printed (one broken case, say a kernel's first
    run on a new GPU, does not cost the others' figures). Else the error propagates."""
    try:
        return fn(*args, **kw)
    except Exception as e:
        if failures is None:
            raise
        failures.append(f"{name}: {type(e).__name__}: {e}")
        print(f"  {name:<62} FAILED {type(e).__name__}: {e}", flush=True)
        return None


def _measure(
    ours: Fn, theirs: Fn, device: str, warmup: int, reps: int, memory: bool
) -> tuple[Timing, tuple[float | None, float | None]]:
    """The pair's timing, and its peak memory where asked (a separate run of each)."""
    t = time_pair(ours, theirs, device, warmup=warmup, reps=reps)
    if not memory:
        return t, (None, None)
    return t, (peak_memory_mib(ours, device), peak_memory_mib(theirs, device))


def row_line(name: str, ours_ms: float, theirs_ms: float, ratio: float) -> str:
    """A timed pair as the bench prints it."""
    return f"  {name:<62} reimpl {ours_ms:9.3f} ms  torch {theirs_ms:9.3f} ms  ratio {ratio:5.2f}"


class _Stopped(BaseException):
    """SIGTERM arrived: the results so far are reported. (A BaseException, as
    KeyboardInterrupt: the per-case ``except Exception`` of :func:`attempt` lets it by.)"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="reimpl bench", description=__doc__)
    p.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    p.add_argument("--quick", action="store_true", help="small sizes, few repetitions")
    p.add_argument("--reps", type=int, help="timed pairs per case")
    p.add_argument("--only", help="run cases whose name contains this text")
    p.add_argument("--out", default="benchmarks/results", help="folder for JSON/Markdown/PNG")
    args = p.parse_args(argv)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if not torch.cuda.is_available():
        if args.device == "cuda":
            raise SystemExit("reimpl bench: no CUDA device")
        devices = ["cpu"]
    from reimpl_parity.bench_report import describe_device, write_reports

    keep_freed_memory()
    failures: list[str] = []

    def stop(signum: int, frame: object) -> None:
        raise _Stopped

    # a time limit's SIGTERM (the GPU session's): report the cases done, then stop
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        for dev in devices:
            print(f"{describe_device(dev)} · torch {torch.__version__}")
            results: list[Result] = []
            stopped, first = False, len(failures)
            try:
                run(dev, quick=args.quick, reps=args.reps, only=args.only, failures=failures,
                    into=results)  # fmt: skip
            except _Stopped:
                stopped = True
                failures.append(f"{dev}: stopped (SIGTERM) after {len(results)} results")
            for kind, path in write_reports(results, dev, Path(args.out), failures[first:]).items():
                print(f"wrote {kind}: {path}")
            if stopped:
                break
    finally:
        signal.signal(signal.SIGTERM, previous)
    for line in failures:
        print(f"FAILED {line}")
    return 1 if failures else 0
