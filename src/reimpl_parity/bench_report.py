"""The reports of ``reimpl bench``: JSON (every field of every result), a Markdown table
(reimpl against torch, then the fused steps against the memory bound) and a PNG chart of
the ratios, each stamped with the device, the torch version and the date."""

from __future__ import annotations

import datetime as _dt
import json
import platform
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from reimpl_parity.bench import Result


def describe_device(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def write_reports(
    results: list[Result], device: str, outdir: Path, failed: Sequence[str] = ()
) -> dict[str, Path]:
    """``{device}.json`` / ``.md`` / ``.png`` in ``outdir``; ``failed``: the cases that raised
    (named in the JSON and the Markdown, so a published run says what it lacks)."""
    outdir.mkdir(parents=True, exist_ok=True)
    stamp = {
        "device": describe_device(device),
        "torch": torch.__version__,
        "date": _dt.date.today().isoformat(),
    }
    tag = "cuda" if device.startswith("cuda") else "cpu"
    paths = {"json": outdir / f"{tag}.json", "md": outdir / f"{tag}.md"}
    paths["json"].write_text(
        json.dumps(
            {**stamp, "results": [asdict(r) for r in results], "failed": list(failed)}, indent=1
        )
    )
    pairs = [r for r in results if r.kind == "pair"]
    lines = [f"Device: {stamp['device']} · torch {stamp['torch']} · {stamp['date']}", ""]
    cuda = tag == "cuda"  # (each CUDA call after 256 MiB written to flush L2: min too)
    if pairs:
        lines += [
            f"| case | reimpl ms{' (min)' * cuda} | torch ms{' (min)' * cuda} | "
            "ratio reimpl/torch |",
            "|---|---:|---:|---:|",
            *(
                f"| {r.case} | {_ms(r.reimpl_ms, r.reimpl_min_ms, cuda)} | "
                f"{_ms(r.torch_ms, r.torch_min_ms, cuda)} | {r.ratio:.2f} |"
                for r in pairs
            ),
        ]
    bounds = [r for r in results if r.kind == "bound"]
    if bounds:
        lines += [
            "",
            "Fused steps against the memory bound (bytes a step must move over the bandwidth "
            "of an in-place add measured in the same run, interleaved; 1.00 = at the bound):",
            "",
            "| case | step ms | bound ms | bandwidth GB/s | ratio step/bound |",
            "|---|---:|---:|---:|---:|",
            *(
                f"| {r.case} | {r.reimpl_ms:.3f} | {r.torch_ms:.3f} | "
                f"{r.bandwidth_gbs or 0:.1f} | {r.ratio:.2f} |"
                for r in bounds
            ),
        ]
    peaks = [r for r in results if r.reimpl_peak_mib is not None and r.torch_peak_mib is not None]
    if peaks:
        lines += [
            "",
            "Peak memory of one call beyond what was held before it (torch allocator, MiB):",
            "",
            "| case | reimpl MiB | torch MiB |",
            "|---|---:|---:|",
            *(f"| {r.case} | {r.reimpl_peak_mib:.1f} | {r.torch_peak_mib:.1f} |" for r in peaks),
        ]
    if failed:
        lines += ["", "Cases that failed (not timed):", "", *(f"- {f}" for f in failed)]
    paths["md"].write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install reimpl[bench]): no PNG chart")
        return paths
    fig, ax = plt.subplots(figsize=(11, 0.32 * len(pairs) + 1.5))
    names = [r.case for r in pairs]
    ratios = [r.ratio for r in pairs]
    ax.barh(names, ratios, color=["tab:green" if x <= 1.0 else "tab:orange" for x in ratios])
    ax.axvline(1.0, color="k", lw=1)
    ax.invert_yaxis()
    ax.set_xlabel("time ratio reimpl / torch (lower is faster)")
    ax.set_title(f"{stamp['device']} · torch {stamp['torch']} · {stamp['date']}", fontsize=9)
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    paths["png"] = outdir / f"{tag}.png"
    fig.savefig(paths["png"], dpi=110)
    plt.close(fig)
    return paths


def _ms(median: float, least: float | None, with_min: bool) -> str:
    return f"{median:.3f} ({least:.3f})" if with_min and least is not None else f"{median:.3f}"
