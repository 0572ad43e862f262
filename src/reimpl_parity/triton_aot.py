"""Compile the Triton kernels for a GPU on a machine without one.

The interpreter (``TRITON_INTERPRET=1``) runs a kernel's Python body on CPU tensors: it
proves the arithmetic, not that Triton's compiler accepts the kernel. A GPU session is short
and rare, so a kernel that fails to compile there costs it. Triton compiles ahead of time
for a named target without a device (its wheel carries ``ptxas``), so:

* :func:`recording` notes each interpreted launch: the kernel, the type of every argument
  (a tensor's element type, an int's width) and the value of every ``tl.constexpr``, i.e.
  the specialization a GPU run would compile;
* ``python -m reimpl_parity.triton_aot SPECS.json`` (where ``TRITON_INTERPRET`` is off, so
  the kernels are Triton's JIT functions) compiles each one down to a cubin for the target
  (sm_90: the H100/H200 the GPU sessions get), and names every one that fails.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import json
import sys
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["compile_spec", "recording", "spec_of"]

_TYPES = {
    torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
    torch.float64: "fp64", torch.int64: "i64", torch.int32: "i32", torch.int16: "i16",
    torch.int8: "i8", torch.uint8: "u8", torch.bool: "i1",
}  # fmt: skip


def _type(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return "*" + _TYPES[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -(2**31) <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"no Triton type for a kernel argument of type {type(value).__name__}")


def _const(value: Any) -> Any:
    """A constexpr as JSON: a Triton element type (``ELT=tl.bfloat16``) by its name."""
    name = getattr(value, "name", None)
    return {"tl.dtype": name} if type(value).__name__ == "dtype" and name else value


def _unconst(value: Any) -> Any:
    import triton.language as tl

    return tl.dtype(value["tl.dtype"]) if isinstance(value, dict) else value


def spec_of(
    fn: Any, constexprs: list[str], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """One launch as JSON-able data: kernel, per-argument types, constexpr values, options."""
    params = inspect.signature(fn)
    options = {k: v for k, v in kwargs.items() if k not in params.parameters}  # num_warps...
    call = params.bind(*args, **{k: v for k, v in kwargs.items() if k not in options})
    call.apply_defaults()
    sig: dict[str, str] = {}
    consts: dict[str, Any] = {}
    for name, value in call.arguments.items():
        value = getattr(value, "value", value)  # a tl.constexpr default
        if name in constexprs or value is None:
            sig[name], consts[name] = "constexpr", _const(value)
        else:
            sig[name] = _type(value)
    return {
        "module": fn.__module__,
        "kernel": fn.__name__,
        "signature": sig,
        "constexprs": consts,
        "options": options,
    }


@contextlib.contextmanager
def recording() -> Iterator[list[dict[str, Any]]]:
    """Record the spec of every interpreted launch while open (deduplicated, in order)."""
    from triton.runtime import interpreter

    seen: list[dict[str, Any]] = []
    old = interpreter.GridExecutor.__call__

    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        spec = spec_of(self.fn, list(self.constexprs), args, kwargs)
        if spec not in seen:
            seen.append(spec)
        return old(self, *args, **kwargs)

    interpreter.GridExecutor.__call__ = call
    try:
        yield seen
    finally:
        interpreter.GridExecutor.__call__ = old


def compile_spec(spec: dict[str, Any], arch: int = 90) -> Any:
    """Compile one recorded launch for ``cuda`` sm_``arch`` (Triton's JIT, no device)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = getattr(importlib.import_module(spec["module"]), spec["kernel"])
    if not isinstance(kernel, triton.runtime.JITFunction):
        raise RuntimeError(f"{spec['kernel']} is not a JIT function here (TRITON_INTERPRET?)")
    names = list(spec["signature"])
    consts = {(names.index(k),): _unconst(v) for k, v in spec["constexprs"].items()}
    src = ASTSource(fn=kernel, signature=spec["signature"], constexprs=consts)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=spec["options"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reimpl_parity.triton_aot", description=__doc__)
    p.add_argument("specs", help="JSON list of recorded launches")
    p.add_argument("--arch", type=int, default=90, help="CUDA compute capability (90: sm_90)")
    args = p.parse_args(argv)
    with open(args.specs, encoding="utf-8") as f:
        specs = json.load(f)
    failed = 0
    for spec in specs:
        what = f"{spec['kernel']} {spec['constexprs']} {spec['signature']}"
        try:
            compiled = compile_spec(spec, args.arch)
        except Exception as e:
            failed += 1
            print(f"FAILED {what}\n  {type(e).__name__}: {str(e)[:2000]}", flush=True)
            continue
        print(f"ok {len(compiled.asm['cubin']):7d} B cubin  {what}", flush=True)
    print(f"{len(specs) - failed} of {len(specs)} compiled for sm_{args.arch}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
