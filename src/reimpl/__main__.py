"""``reimpl`` command line.

``reimpl check`` runs the parity tables against the installed torch; ``reimpl bench`` times
reimpl against torch; ``reimpl demo`` trains a small classifier with torch's components and
with reimpl's and compares the curves (``reimpl bench --help``, ``reimpl demo --help``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

import torch


def _devices(choice: str) -> list[str]:
    cuda = torch.cuda.is_available()
    if choice == "all":
        return ["cpu", "cuda"] if cuda else ["cpu"]
    if choice == "cuda" and not cuda:
        raise SystemExit("reimpl check: --device cuda asked for, but torch sees no CUDA device")
    return [choice]


def _dtype(name: str) -> torch.dtype:
    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype):
        raise argparse.ArgumentTypeError(f"unknown dtype {name!r}")
    return dt


def check(args: argparse.Namespace) -> int:
    from reimpl_parity.cases import ALL
    from reimpl_parity.harness import check_case

    families = args.components or list(ALL)
    unknown = [f for f in families if f not in ALL]
    if unknown:
        raise SystemExit(f"reimpl check: unknown component(s) {unknown}; choose from {list(ALL)}")
    examples = 3 if args.quick else 200 if args.thorough else 20
    jobs = [
        (fam, case, dt, dev)
        for dev in _devices(args.device)
        for fam in families
        for case in ALL[fam]
        if dev in case.devices
        for dt in case.dtypes
        if not args.dtypes or dt in args.dtypes
    ]
    rows = []
    start = time.perf_counter()
    for i, (fam, case, dt, dev) in enumerate(jobs, 1):
        if sys.stderr.isatty() or args.progress:
            bar = "#" * (30 * i // len(jobs))
            print(f"\r[{bar:<30}] {i}/{len(jobs)} {case.name[:40]:<40}", end="", file=sys.stderr)
        n = 1 if fam.endswith("errors") else examples
        rep = check_case(
            case, dt, dev, max_examples=n, derandomize=not args.thorough, raise_on_failure=False
        )
        rows.append((fam, rep))
    if sys.stderr.isatty() or args.progress:
        print(file=sys.stderr)
    failed = [r for _, r in rows if not r.ok or (args.strict and r.torch_side is not None)]
    torch_side = [r for _, r in rows if r.ok and r.torch_side is not None]
    head = (
        f"{'component':<44} {'device':<6} {'dtype':<9} {'cases':>5} "
        f"{'max abs':>9} {'max rel':>9}  status"
    )
    print(head)
    print("-" * len(head))
    for _fam, r in rows:
        dname = str(r.dtype).replace("torch.", "")
        status = r.status
        print(
            f"{r.case:<44} {r.device:<6} {dname:<9} {r.examples:>5} {r.diff.max_abs:>9.2e} "
            f"{r.diff.max_rel:>9.2e}  {status}"
        )
    secs = time.perf_counter() - start
    print(
        f"\n{len(rows) - len(failed)} passed, {len(failed)} failed "
        f"(torch {torch.__version__}, {secs:.1f}s)"
    )
    if torch_side:
        print(
            f"{len(torch_side)} with torch-side differences: torch {torch.__version__} raised "
            "where reimpl computes (fails only with --strict)"
        )
    for r in failed:
        print(f"\n{r.status} {r.case} [{r.dtype}, {r.device}]\n{r.failure or r.error or ''}")
    for r in torch_side:
        print(f"\ntorch-side {r.case} [{r.dtype}, {r.device}]\n{r.torch_side}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "torch": torch.__version__,
                    "results": [
                        {
                            "component": fam,
                            "case": r.case,
                            "device": r.device,
                            "dtype": str(r.dtype).replace("torch.", ""),
                            "examples": r.examples,
                            "max_abs": r.diff.max_abs,
                            "max_rel": r.diff.max_rel,
                            "ok": r.ok,
                            "status": r.status,
                            "failure": r.failure,
                            "error": r.error,
                            "torch_side": r.torch_side,
                        }
                        for fam, r in rows
                    ],
                },
                fh,
                indent=1,
            )
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="reimpl", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="run the parity tables against the installed torch")
    c.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    c.add_argument("--dtypes", nargs="+", type=_dtype, help="e.g. float32 bfloat16")
    c.add_argument("--components", nargs="+", help="families, e.g. losses optim")
    speed = c.add_mutually_exclusive_group()
    speed.add_argument("--quick", action="store_true", help="3 examples per case")
    speed.add_argument("--thorough", action="store_true", help="200 random examples per case")
    c.add_argument("--json", metavar="PATH", help="write the results as JSON")
    c.add_argument("--progress", action="store_true", help="progress bar even when not a tty")
    c.add_argument(
        "--strict",
        action="store_true",
        help="also fail on torch-side differences (torch raised where reimpl computes)",
    )
    c.set_defaults(func=check)
    b = sub.add_parser(
        "bench", help="time reimpl against torch (see benchmarks/README.md)", add_help=False
    )
    b.set_defaults(func=None)
    d = sub.add_parser(
        "demo", help="train a small classifier with torch's and reimpl's parts", add_help=False
    )
    d.set_defaults(func=None)
    args, rest = p.parse_known_args(argv)
    if args.command == "bench":
        from reimpl_parity.bench import main as bench_main

        return bench_main(rest)
    if args.command == "demo":
        from reimpl_parity.demo import main as demo_main

        return demo_main(rest)
    if rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
