"""``reimpl demo``: train one small classifier twice — torch's components, then reimpl's.

scikit-learn's digits (8×8 images, 10 classes; shipped with scikit-learn, no download) and
an MLP with BatchNorm and Dropout, trained with CrossEntropyLoss(label_smoothing),
SGD with momentum (or Adam), StepLR and a weight EMA. Both runs start from the same seed,
so the only difference is whose losses/regularizers/optimizer/scheduler/EMA are used;
the loss curves should agree to rounding. Writes PNGs of the curves, of the seed's three
LR schedules and of an exponential weighted average over a noisy series.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch


@dataclass
class Run:
    name: str
    losses: list[float] = field(default_factory=list)  # mean training loss per epoch
    lrs: list[float] = field(default_factory=list)
    test_acc: float = 0.0
    ema_acc: float = 0.0


def _namespaces(kind: str) -> SimpleNamespace:
    if kind == "torch":
        import torch.optim.swa_utils as swa

        return SimpleNamespace(
            nn=torch.nn, optim=torch.optim, sched=torch.optim.lr_scheduler, swa=swa
        )
    import reimpl.nn
    import reimpl.optim
    from reimpl.optim import lr_scheduler, swa_utils

    return SimpleNamespace(nn=reimpl.nn, optim=reimpl.optim, sched=lr_scheduler, swa=swa_utils)


def load_digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError as e:
        raise SystemExit("reimpl demo needs scikit-learn: pip install 'reimpl[demo]'") from e
    data = sk_digits()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.int64)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    cut = int(0.8 * len(x))
    return x[perm[:cut]], y[perm[:cut]], x[perm[cut:]], y[perm[cut:]]


def train(
    kind: str,
    data: tuple[torch.Tensor, ...],
    *,
    epochs: int,
    optimizer: str,
    seed: int = 0,
    batch: int = 64,
) -> Run:
    ns = _namespaces(kind)
    x_tr, y_tr, x_te, y_te = data
    torch.manual_seed(seed)  # same initial weights and dropout masks in both runs
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 128),
        ns.nn.BatchNorm1d(128),
        torch.nn.ReLU(),
        ns.nn.Dropout(0.2),
        torch.nn.Linear(128, 10),
    )
    criterion = ns.nn.CrossEntropyLoss(label_smoothing=0.1)
    if optimizer == "adam":
        opt = ns.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    else:
        opt = ns.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    sched = ns.sched.StepLR(opt, step_size=max(epochs // 3, 1), gamma=0.5)
    ema = ns.swa.AveragedModel(
        model, multi_avg_fn=ns.swa.get_ema_multi_avg_fn(0.95), use_buffers=True
    )
    order = torch.Generator().manual_seed(seed + 1)  # batch order, apart from the model's RNG
    run = Run(kind)
    for _ in range(epochs):
        model.train()
        run.lrs.append(float(opt.param_groups[0]["lr"]))
        total, n = 0.0, 0
        for idx in torch.randperm(len(x_tr), generator=order).split(batch):
            opt.zero_grad()
            loss = criterion(model(x_tr[idx]), y_tr[idx])
            loss.backward()
            opt.step()
            ema.update_parameters(model)
            total += loss.item() * len(idx)
            n += len(idx)
        sched.step()
        run.losses.append(total / n)
    model.eval()
    ema.eval()
    with torch.no_grad():
        run.test_acc = float((model(x_te).argmax(1) == y_te).float().mean())
        run.ema_acc = float((ema(x_te).argmax(1) == y_te).float().mean())
    return run


def plot(theirs: Run, ours: Run, out: Path) -> list[Path]:
    from reimpl.plot import _pyplot, plot_ewa, plot_lr_schedules

    plt = _pyplot()
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    epochs = range(1, len(theirs.losses) + 1)
    ax.plot(epochs, theirs.losses, "o-", label="torch", lw=3, alpha=0.5)
    ax.plot(epochs, ours.losses, "x--", label="reimpl")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.set_title("Same seed, torch's components vs reimpl's (digits, MLP)")
    ax.legend()
    fig.tight_layout()
    paths = [out / "demo_loss_curves.png", out / "lr_schedules.png", out / "ewa.png"]
    fig.savefig(paths[0])
    plt.close(fig)
    plt.close(plot_lr_schedules(path=paths[1]))
    plt.close(plot_ewa(path=paths[2]))
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="reimpl demo", description=__doc__)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    p.add_argument("--out", default="demo_out", help="folder for the PNGs")
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args(argv)
    data = load_digits()
    theirs = train("torch", data, epochs=args.epochs, optimizer=args.optimizer)
    ours = train("reimpl", data, epochs=args.epochs, optimizer=args.optimizer)
    print(f"{'epoch':>5} {'lr':>8} {'torch loss':>12} {'reimpl loss':>12} {'|diff|':>10}")
    worst = 0.0
    for i, (a, b) in enumerate(zip(theirs.losses, ours.losses, strict=True), 1):
        worst = max(worst, abs(a - b))
        print(f"{i:>5} {theirs.lrs[i - 1]:>8.4f} {a:>12.6f} {b:>12.6f} {abs(a - b):>10.2e}")
    print(
        f"test accuracy: torch {theirs.test_acc:.4f}, reimpl {ours.test_acc:.4f}; "
        f"EMA model: torch {theirs.ema_acc:.4f}, reimpl {ours.ema_acc:.4f}"
    )
    print(f"largest loss difference: {worst:.3g}")
    if not args.no_plots:
        try:
            for path in plot(theirs, ours, Path(args.out)):
                print(f"wrote {path}")
        except ImportError as e:
            print(f"no pictures: {e}", file=sys.stderr)
    return 0


def results(epochs: int = 2, optimizer: str = "sgd") -> tuple[Any, Any]:
    """Both runs, for tests."""
    data = load_digits()
    return (
        train("torch", data, epochs=epochs, optimizer=optimizer),
        train("reimpl", data, epochs=epochs, optimizer=optimizer),
    )
