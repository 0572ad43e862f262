"""Malformed optimizer state never reaches a native kernel (issue: memory safety).

Each path runs in a child process (``reimpl_parity.malformed``) over every optimizer that
has it, so a kernel that writes past a buffer fails this test with the case it died in
instead of killing the run (and a new child carries on with the optimizers after it).
Held to torch: on the for-loop, foreach and single paths reimpl's outcome (exception
type, or the updated parameters) is torch's on the same path; on the fused paths it is
torch's fused kernel's where that kernel survives the case, else torch's for-loop's,
except the refusals each case names with its reason (``Malformed.fused_refuses``).
"""

from __future__ import annotations

import builtins
import json
import os
import subprocess
import sys

import pytest
import torch

from reimpl.kernels import cpu_fused, cpu_pointwise, guard, triton_installed
from reimpl_parity.malformed import CASES, FUSED_PATHS, OPTIMS, PATHS, units

FUSED_ATOL = 1e-5  # one pass per element in another order (float32 params of size ~1)
_BY_NAME = {c.name: c for c in CASES}  # the cases the fused paths run


def _run_children(path: str, opts: list[str]) -> tuple[list[dict], dict[str, str]]:
    """The outcome rows of ``opts`` on ``path``, and for each optimizer a child died in,
    the case and how. A child that dies is followed by one for the optimizers after it."""
    env = dict(os.environ)
    if path == "triton":
        env.update(TRITON_INTERPRET="1", REIMPL_TRITON_CPU="1", REIMPL_DISABLE_CPU_FUSED="1")
    rows: list[dict] = []
    deaths: dict[str, str] = {}
    todo = list(opts)
    while todo:
        res = subprocess.run(
            [sys.executable, "-m", "reimpl_parity.malformed", path, *todo],
            capture_output=True,
            text=True,
            timeout=900,
            env=env,
        )
        lines = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
        rows += [x["done"] for x in lines if "done" in x]
        if res.returncode == 0:
            break
        started = [x["start"] for x in lines if "start" in x]
        where = started[-1] if started else {"optim": todo[0], "case": "?", "key": "?"}
        deaths[where["optim"]] = (
            f"{where['optim']} on the {path} path died (exit {res.returncode}) in case "
            f"'{where['case']}' on {where['key']}:\n{res.stderr[-3000:]}"
        )
        todo = todo[todo.index(where["optim"]) + 1 :]
    return rows, deaths


def _expected_fused(row: dict) -> str:
    if row["torch_path"] == "fused" or row["torch_loop"] != "ok":
        return row["torch"] if row["torch_path"] == "fused" else row["torch_loop"]
    return "RuntimeError" if _BY_NAME[row["case"]].fused_refuses else "ok"


def _is_a(ours: str, want: str) -> bool:
    """Same outcome, or an exception that ``except want`` catches (NotImplementedError is a
    RuntimeError: the layout check raises it, where torch's ops raise one or the other)."""
    if ours == want or "ok" in (ours, want):
        return ours == want
    a, b = getattr(builtins, ours, None), getattr(builtins, want, None)
    return isinstance(a, type) and isinstance(b, type) and issubclass(a, b)


def _wrong(path: str, row: dict) -> str | None:
    """What is wrong with one case's outcome, or None."""
    opt = OPTIMS[row["optim"]]
    fused = path in FUSED_PATHS
    want = _expected_fused(row) if fused else row["torch"]
    if row["case"] in opt.refuses:  # a torch mistake we do not copy (see why_refuses)
        want = "RuntimeError"
    where = f"{opt.name} {path} '{row['case']}' on {row['key']}"
    if not _is_a(row["ours"], want):
        return f"{where}: reimpl {row['ours']} ({row['ours_msg']}), expected {want}"
    if "max_diff" in row and row["max_diff"] > (FUSED_ATOL if fused else 0.0):
        return f"{where}: params differ from torch's by {row['max_diff']:.3g}"
    # our own refusals name the parameter (index 1 is the malformed one) and the key
    if fused and row["ours"] in ("RuntimeError", "NotImplementedError"):
        msg = row["ours_msg"]
        if f"'{row['key']}'" not in msg or "parameter 1" not in msg:
            return f"{where}: message does not name parameter 1 and the key: {msg}"
    return None


_TRITON = triton_installed() and os.environ.get("REIMPL_DISABLE_TRITON") != "1"


@pytest.mark.parametrize("path", [p for p in PATHS if p != "triton" or _TRITON])
def test_malformed_state_raises_like_torch_and_never_crashes(path: str) -> None:
    if path == "fused" and cpu_fused.library() is None:
        pytest.skip("no C compiler: the fused path is the multi-tensor one")
    if path == "triton" and torch.cuda.is_available():
        pytest.skip("the interpreter run is for CPU-only machines")
    opts = [name for name, opt in OPTIMS.items() if path in opt.paths]
    rows, deaths = _run_children(path, opts)
    wrong = list(deaths.values())
    for name in opts:  # every case ran, in each child that did not die
        ran, planned = sum(row["optim"] == name for row in rows), len(units(OPTIMS[name]))
        if name not in deaths and ran != planned:
            wrong.append(f"{name} {path}: {ran} of {planned} cases ran")
    wrong += [w for row in rows if (w := _wrong(path, row))]
    assert not wrong, "\n".join(wrong)


# ------------------------------------------------------------- the builders themselves


@pytest.mark.skipif(cpu_fused.library() is None, reason="no C compiler")
def test_cpu_batch_builder_checks_every_call() -> None:
    p = [torch.zeros(8), torch.zeros(8)]
    g = [torch.zeros(8), torch.zeros(8)]
    opts = cpu_fused.AdagradOpts(wd=0.0, eps=1e-10, maximize=False)
    call = cpu_fused.call
    with pytest.raises(RuntimeError, match=r"state 'sum' of parameter 1 has shape \(4,\)"):
        call("adagrad", "t", [("param", p), ("grad", g), ("sum", [torch.zeros(8), torch.zeros(4)])],
             opts, per=[[0.1, 0.1]])  # fmt: skip
    with pytest.raises(RuntimeError, match="state 'sum' of parameter 0 is not contiguous"):
        call("adagrad", "t", [("param", p), ("grad", g), ("sum", [torch.zeros(16)[::2], g[1]])],
             opts, per=[[0.1, 0.1]])  # fmt: skip
    with pytest.raises(RuntimeError, match="shares memory"):
        call("adagrad", "t", [("param", p), ("grad", g), ("sum", [p[0], torch.zeros(8)])],
             opts, per=[[0.1, 0.1]])  # fmt: skip
    with pytest.raises(RuntimeError, match="shares memory"):  # a param overlapping a grad
        call("adagrad", "t", [("param", p), ("grad", [p[0], g[1]]), ("sum", [g[0], g[1] + 1])],
             opts, per=[[0.1, 0.1]])  # fmt: skip
    with pytest.raises(ValueError, match="per-tensor values"):
        call("adagrad", "t", [("param", p), ("grad", g), ("sum", [g[0] + 1, g[1] + 1])],
             opts, per=[[0.1]])  # fmt: skip
    with pytest.raises(TypeError, match="AdagradOpts"):
        sums = [torch.zeros(8), torch.zeros(8)]
        call("adagrad", "t", [("param", p), ("grad", g), ("sum", sums)], cpu_fused.SGDOpts())


@pytest.mark.skipif(cpu_fused.library() is None, reason="no C compiler")
def test_pointwise_kernels_check_their_operands() -> None:
    x = torch.randn(6)
    with pytest.raises(RuntimeError, match="target has 5 elements, the kernel walks 6"):
        cpu_pointwise.forward("mse", x, torch.randn(5), 1.0, "sum")
    with pytest.raises(RuntimeError, match=r"target must be .* of torch\.float32"):
        cpu_pointwise.forward("mse", x, torch.randn(6, dtype=torch.float64), 1.0, "sum")
    with pytest.raises(RuntimeError, match=r"target must be a plain dense .* strides \(2,\)"):
        cpu_pointwise.forward("mse", x, torch.randn(12)[::2], 1.0, "sum")
    with pytest.raises(RuntimeError, match="takes float32/float64"):
        h = torch.randn(6).half()
        cpu_pointwise.forward("mse", h, h.clone(), 1.0, "sum")
    short = torch.randn(6)
    short.untyped_storage().resize_(8)  # (a view's storage shrunk under it)
    with pytest.raises(RuntimeError, match="storage smaller than its elements"):
        cpu_pointwise.forward("mse", x, short, 1.0, "sum")
    # the input and the target may be one tensor (both only read)
    assert float(cpu_pointwise.forward("mse", x, x, 1.0, "sum")) == 0.0
    with pytest.raises(RuntimeError):  # (expand_as refuses it before the kernel's check)
        cpu_pointwise.backward("mse", x, x, torch.randn(2, 3)[0], 1.0, None, True)


def test_overlap_check_finds_any_overlapping_pair() -> None:
    buf = torch.zeros(100)
    roles = [
        ("param", [buf[0:10], buf[20:30], buf[40:50]]),
        ("grad", [buf[60:70], buf[5:15].clone(), buf[70:80]]),
        ("s", [buf[80:90], buf[90:100], buf[10:20]]),
    ]
    guard.check_operands("t", roles, device_type="cpu")  # all disjoint
    roles[1] = ("grad", [buf[60:70], buf[25:35], buf[70:80]])  # grad 1 overlaps param 1
    with pytest.raises(
        RuntimeError, match="parameter 1 shares memory with the gradient of parameter 1"
    ):
        guard.check_operands("t", roles, device_type="cpu")
    roles[1] = ("grad", [buf[60:70], buf[61:71], buf[70:80]])  # grads may overlap each other
    guard.check_operands("t", roles, device_type="cpu")
    roles[2] = ("s", [buf[80:90], buf[89:99], buf[10:20]])
    with pytest.raises(RuntimeError, match="state 's' of parameter 1 shares memory"):
        guard.check_operands("t", roles, device_type="cpu")


def test_storage_too_small_is_refused() -> None:
    t = torch.zeros(16)
    view = t[8:]
    t.untyped_storage().resize_(8 * t.element_size())  # the view now points past the end
    with pytest.raises(RuntimeError, match="storage smaller than its elements"):
        guard.check_operands("t", [("param", [view])], device_type="cpu")


_OUT_OF_BOUNDS = """
import ctypes, torch
from reimpl.kernels import cpu_fused
lib = cpu_fused.library()
p, g, s = torch.zeros(64), torch.zeros(64), torch.zeros(8)  # the state is too small
b = cpu_fused.Batch(k=1, n=(ctypes.c_int64 * 1)(64))
for r, t in enumerate((p, g, s)):
    b.t[r] = (ctypes.c_void_p * 1)(t.data_ptr())
b.per[0] = (ctypes.c_double * 1)(0.1)
opts = cpu_fused.AdagradOpts(wd=0.0, eps=1e-10, maximize=0)
lib.adagrad_f32(ctypes.byref(b), ctypes.byref(opts))  # the guard bypassed on purpose
print("not caught")
"""


@pytest.mark.skipif(
    not cpu_fused.sanitizing(), reason="only in the sanitizer run (nox -s sanitize)"
)
def test_sanitizer_run_is_live() -> None:
    """The sanitizer build really checks: a kernel called around the guard with a state
    smaller than its parameter is stopped by AddressSanitizer (so a clean sanitizer run
    means something)."""
    assert cpu_fused.library() is not None, "the sanitizer build failed"
    res = subprocess.run(
        [sys.executable, "-c", _OUT_OF_BOUNDS], capture_output=True, text=True, timeout=300
    )
    assert res.returncode != 0 and "AddressSanitizer" in res.stderr, res.stderr[-2000:]
