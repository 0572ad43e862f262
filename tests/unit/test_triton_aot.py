"""Every Triton kernel we launch, compiled for the GPU the device sessions get (sm_90), here
on CPU. The launches the interpreter makes for a spread of calls (each optimizer kernel in
float32 and bfloat16, with a tensor lr and GradScaler's scale; cross-entropy with and
without class weights and smoothing; layer and RMS norm forward and backward; the linear
cross-entropy chunk) are recorded with their argument types and constexprs
(``reimpl_parity.triton_aot``), then compiled in a process where the kernels are Triton's
JIT functions. The interpreter proves the arithmetic; this proves Triton's compiler takes
each specialization a GPU run makes, before a GPU session spends its minutes on it."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from test_triton_optim import SPECS, _amp_case, run_parity
from test_triton_optim_rules import RULE_SPECS

import reimpl.nn.functional as F
from reimpl import kernels

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None
    or os.environ.get("TRITON_INTERPRET") != "1"
    or torch.cuda.is_available(),
    reason="records interpreted launches (CPU-only, TRITON_INTERPRET=1)",
)

KERNELS = Path(kernels.__file__).parent
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _launched_kernels() -> set[str]:
    """Every kernel our bindings launch (``name[grid](...)`` in the kernel modules)."""
    found: set[str] = set()
    for path in KERNELS.glob("triton_*.py"):
        found |= set(re.findall(r"\b(_\w+_kernel)\[", path.read_text()))
    return found


def _gpu_blocks(specs: list[dict]) -> list[dict]:
    """The interpreter's row kernels stop at blocks of 1024; on a GPU the bindings take
    longer ones (cross-entropy 4096, the norms 16384 with more warps): the same launches
    with the GPU's largest block."""
    from reimpl.kernels import triton_cross_entropy, triton_norm

    assert "4096 if x.is_cuda" in Path(triton_cross_entropy.__file__).read_text()
    wide = {"_ce_row_kernel": (4096, {}), "_norm_fwd_kernel": (triton_norm._MAX_BLOCK, None)}
    wide["_norm_bwd_kernel"] = wide["_norm_fwd_kernel"]
    out = []
    for spec in specs:
        if spec["kernel"] in wide and spec["constexprs"].get("BLOCK") == 1024:
            block, options = wide[spec["kernel"]]
            warps = {"num_warps": triton_norm._warps(block)} if options is None else options
            consts = dict(spec["constexprs"], BLOCK=block)
            for one in (True, False) if "ONE_BLOCK" in consts else (None,):
                if one is not None:  # (a row within the block, or a longer one in blocks)
                    consts = dict(consts, ONE_BLOCK=one)
                out.append(dict(spec, constexprs=consts, options={**spec["options"], **warps}))
    return out


def _norm_and_loss_calls() -> None:
    g = torch.Generator().manual_seed(0)
    for dtype in DTYPES:
        for rows, cols in ((6, 10), (3, 1500)):  # one block; several (the interpreter's 1024)
            x = torch.randn(rows, cols, generator=g).to(dtype).requires_grad_()
            w = torch.randn(cols, generator=g).to(dtype).requires_grad_()
            b = torch.randn(cols, generator=g).to(dtype).requires_grad_()
            for out in (
                F.layer_norm(x, (cols,), w, b),
                F.layer_norm(x, (cols,)),
                F.rms_norm(x, (cols,), w),
                F.rms_norm(x, (cols,)),
            ):
                out.float().square().sum().backward()
            t = torch.randint(0, cols, (rows,), generator=g)
            cw = torch.rand(cols, generator=g).to(dtype) + 0.1
            for kw in ({}, {"weight": cw, "label_smoothing": 0.2}, {"ignore_index": 1}):
                F.cross_entropy(x, t, **kw).float().backward()
        lx = torch.randn(5, 8, generator=g).to(dtype).requires_grad_()
        lw = torch.randn(12, 8, generator=g).to(dtype).requires_grad_()
        lt = torch.randint(0, 12, (5,), generator=g)
        F.linear_cross_entropy(lx, lw, lt, label_smoothing=0.1).float().backward()


def test_every_launch_compiles_for_sm90(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from reimpl_parity.triton_aot import recording

    monkeypatch.setenv("REIMPL_TRITON_CPU", "1")
    with recording() as specs, np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # (numpy's exp(-inf) arithmetic)
        for spec in SPECS + RULE_SPECS:
            for dtype in (torch.float32, torch.bfloat16):  # (float64: test_triton_optim's)
                run_parity(spec, dtype, lr_tensor=False, n_steps=1)
        for spec in SPECS:
            run_parity(spec, torch.float32, lr_tensor=True, n_steps=1)
            _amp_case(spec, 1.0)
        _norm_and_loss_calls()
    launched = {s["kernel"] for s in specs}
    missing = _launched_kernels() - launched
    assert not missing, f"kernels no call here launched (add a call that does): {missing}"

    path = tmp_path / "specs.json"
    path.write_text(json.dumps(specs + _gpu_blocks(specs)))
    n = len(specs) + len(_gpu_blocks(specs))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    res = subprocess.run(
        [sys.executable, "-W", "ignore", "-m", "reimpl_parity.triton_aot", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if res.returncode != 0 and "ptxas" in res.stdout + res.stderr and "not found" in res.stderr:
        pytest.skip("no ptxas for sm_90")
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-3000:]
    assert f"{n} of {n} compiled for sm_90" in res.stdout
