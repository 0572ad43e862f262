"""The Triton optimizer kernels compiled on a GPU (``-m cuda``; skipped without one),
against torch: its ``fused=True`` where torch has it (Adam, AdamW, SGD, Adagrad), else its
per-tensor loop (``foreach=False``), after every step, on larger tensors than the
interpreter tests take (specs and machinery from ``test_triton_optim`` and
``test_triton_optim_rules``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

import pytest
import torch
from test_triton_optim import LOW, SPECS, TORCH_FUSED, Spec, _amp_case, _close, _id, _torch_opt
from test_triton_optim_rules import NAMED as RULE_NAMED
from test_triton_optim_rules import RULE_SPECS
from torch import Tensor

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton not installed"
)


def _cuda_run(spec: Spec, dtype: torch.dtype, lr_tensor: bool, amp: bool) -> None:
    dev = "cuda"
    gen = torch.Generator(device=dev).manual_seed(0)
    sizes = (1, 7, 1500, 100_003)
    params = [torch.randn(n, generator=gen, device=dev).to(dtype) for n in sizes]
    refs = [p.clone() for p in params]
    fused = spec.torch_cls in TORCH_FUSED
    lr = spec.kwargs["lr"]
    opt = _torch_opt(spec, refs, torch.tensor(lr, device=dev) if lr_tensor else lr, fused)
    st = spec.init_state(params)
    our_lr: float | Tensor = torch.tensor([lr], device=dev) if lr_tensor else lr
    for k in range(max(5, spec.n_steps)):
        grads = [torch.randn(n, generator=gen, device=dev).to(dtype) for n in sizes]
        amp_kw: dict[str, Tensor] = {}
        if amp:
            scale = torch.tensor([256.0], device=dev)
            found = torch.tensor([float(k == 2)], device=dev)
            grads = [g * 256 for g in grads]
            opt.grad_scale, opt.found_inf = scale.reshape(()), found.reshape(())
            amp_kw = {"grad_scale": scale, "found_inf": found}
        for r, g in zip(refs, grads, strict=True):
            r.grad = g.clone()
        opt.step()
        spec.ours(params, grads, st, lr=our_lr, **amp_kw)
        for i, r in enumerate(refs):
            _close(params[i], r, dtype, f"step {k} param {i}")
            assert r.grad is not None
            _close(grads[i], r.grad, dtype, f"step {k} grad {i}")
            for key, vals in st.items():
                _close(vals[i], opt.state[r][key], vals[i].dtype if key in spec.scalars else dtype,
                       f"step {k} {key} {i}")  # fmt: skip


@pytest.mark.cuda
@pytest.mark.parametrize("lr_tensor", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, *LOW], ids=str)
@pytest.mark.parametrize("spec", SPECS + RULE_SPECS, ids=_id)
def test_cuda_matches_torch_fused(spec: Spec, dtype: torch.dtype, lr_tensor: bool) -> None:
    if spec.torch_cls not in TORCH_FUSED and dtype in LOW:
        pytest.skip("torch's unfused 16-bit path rounds after every op; checked on CPU")
    _cuda_run(spec, dtype, lr_tensor, amp=False)


@pytest.mark.cuda
@pytest.mark.parametrize("spec", [s for s in SPECS if s.torch_cls in TORCH_FUSED], ids=_id)
def test_cuda_amp_matches_torch_fused(spec: Spec) -> None:
    _cuda_run(spec, torch.float32, lr_tensor=False, amp=True)


@pytest.mark.cuda
@pytest.mark.parametrize("found", [0.0, 1.0])
@pytest.mark.parametrize("spec", list(RULE_NAMED.values()), ids=_id)
def test_cuda_amp_rules(spec: Spec, found: float) -> None:
    """Families torch does not fuse take no grad_scale/found_inf there: a scaled step must
    equal an unscaled one, and found_inf skip everything (the per-tensor kernels too)."""
    _amp_case(spec, found, device="cuda")


@pytest.mark.cuda
def test_cuda_adam_100_tensors_of_1m() -> None:
    """100 x 1M float32 params (the benchmark's size, where the kernel's grid spans many
    tensors): one Adam step equals torch's fused one. The time is printed for the log; the
    benchmark (``reimpl bench --device cuda``) measures it, with torch interleaved."""
    from reimpl.kernels.triton_optim import adam_

    n, size = 100, 1 << 20
    gen = torch.Generator(device="cuda").manual_seed(0)
    p, g, m, v = (
        [torch.randn(size, generator=gen, device="cuda") for _ in range(n)] for _ in "pgmv"
    )
    v = [x.abs() for x in v]
    steps = [torch.full((1,), 3.0, device="cuda") for _ in range(n)]
    refs = [x.clone().requires_grad_() for x in p]
    ref_opt = torch.optim.Adam(refs, lr=1e-3, fused=True)
    for r, gr, mr, vr in zip(refs, g, m, v, strict=True):
        r.grad = gr.clone()
        ref_opt.state[r] = {
            "step": torch.tensor(3.0, device="cuda"),  # (fused: on the param's device)
            "exp_avg": mr.clone(),
            "exp_avg_sq": vr.clone(),
        }
    kw: dict[str, Any] = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0}
    adam_(p, g, m, v, [], steps, lr=1e-3, amsgrad=False, maximize=False,
          decoupled_weight_decay=False, **kw)  # fmt: skip
    ref_opt.step()
    for i in (0, 57, 99):
        torch.testing.assert_close(p[i], refs[i].detach(), msg=f"param {i}")
        torch.testing.assert_close(m[i], ref_opt.state[refs[i]]["exp_avg"], msg=f"m {i}")
        torch.testing.assert_close(v[i], ref_opt.state[refs[i]]["exp_avg_sq"], msg=f"v {i}")
    ms = _cuda_time(lambda: adam_(p, g, m, v, [], steps, lr=1e-3, amsgrad=False, maximize=False,
                                  decoupled_weight_decay=False, **kw))  # fmt: skip
    print(f"adam_ 100 x 1M fp32: {ms:.3f} ms/step ({28 * n * size / ms / 1e9:.0f} GB/s)")


def _cuda_time(fn: Callable[[], None], reps: int = 20) -> float:
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps
