"""How close the fused optimizer steps come to the memory bound of the machine they run on.

An elementwise optimizer step on large tensors does a few flops per element and must move
every byte of its operands once: Adam reads param, grad and both moments (16 B per fp32
param) and writes param and moments back in place (12 B), 28 B in all; SGD with momentum
and Adagrad read param, grad and one state and write two (20 B). No kernel can take less
than those bytes over the machine's bandwidth, so the ratio of a step's time to that bound
says how much is left to gain (1.0: at the bound).

The bandwidth is measured in the same run, interleaved with the step, on an operation
with the same access pattern and no arithmetic to speak of: ``a.add_(b)`` over as many
elements as the step's tensors hold (reads 8 B, writes 4 B in place per element: 12 B;
a write into memory not read first would also pay the cache line's read, which a copy
kernel may or may not avoid, so a copy is not used). The bound of a step moving ``B`` bytes
per element is then the add's time times ``B / 12``.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from reimpl_parity.bench import Result, attempt, time_pair

#: (label, optimizer, kwargs, bytes moved per fp32 element in one step)
STEPS = [
    ("Adam", "Adam", {"lr": 1e-3}, 28),
    ("AdamW", "AdamW", {"lr": 1e-3}, 28),
    ("SGD momentum=0.9", "SGD", {"lr": 0.01, "momentum": 0.9}, 20),
    ("Adagrad", "Adagrad", {"lr": 0.01}, 20),
]
ADD_BYTES = 12  # a.add_(b): read a and b, write a


def bound_cases(
    device: str, n_tensors: int, numel: int
) -> Iterator[tuple[str, object, object, float]]:
    """(label, reimpl's fused step, the in-place add over as many elements, the factor
    turning the add's time into the step's bound), for each optimizer in :data:`STEPS`."""
    import reimpl.optim as ropt

    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n_tensors * numel, device=device, generator=g)
    b = torch.randn(n_tensors * numel, device=device, generator=g)

    def add() -> None:
        a.add_(b)

    for label, name, kw, nbytes in STEPS:
        params = [
            torch.nn.Parameter(torch.randn(numel, device=device, generator=g))
            for _ in range(n_tensors)
        ]
        for p in params:
            p.grad = torch.randn(numel, device=device, generator=g)
        opt = getattr(ropt, name)(params, fused=True, **kw)
        yield (
            f"{label} [fused] {n_tensors}x{numel // 1_000_000}M, {nbytes} B/param",
            opt.step,
            add,
            nbytes / ADD_BYTES,
        )


def bound_rows(
    device: str,
    n_tensors: int,
    numel: int,
    quick: bool,
    reps: int,
    only: str | None,
    failures: list[str] | None = None,
) -> list[Result]:
    """The fused steps against the memory bound; ``failures``: see :func:`bench.attempt`."""
    out = []
    for name, step, add, factor in bound_cases(device, n_tensors, numel):
        label = f"{name} vs memory bound"
        if only and only not in label:
            continue
        warmup = 2 if quick else 3
        t = attempt(label, failures, time_pair, step, add, device, warmup=warmup, reps=reps)
        if t is None:
            continue
        bound_ms = t.theirs_ms * factor
        gbs = ADD_BYTES * n_tensors * numel / (t.theirs_ms / 1e3) / 1e9
        res = Result(label, device, t.ours_ms, bound_ms, t.ratio / factor, reps, kind="bound")
        res.bandwidth_gbs = gbs
        out.append(res)
        print(
            f"  {label:<62} step {t.ours_ms:9.3f} ms  bound {bound_ms:9.3f} ms  "
            f"ratio {res.ratio:5.2f}  ({gbs:.1f} GB/s)",
            flush=True,
        )
    return out
