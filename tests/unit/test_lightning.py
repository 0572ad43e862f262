"""A real client: a Lightning Trainer run with reimpl's loss, BatchNorm, Dropout, optimizer
and ReduceLROnPlateau, configured exactly as for torch's (``"monitor": ...``), logs the
same losses and learning rates as the same run with torch's classes.

Lightning decides to hand the monitored metric to ``scheduler.step`` with
``isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)``: without class
identity it would fail or step reimpl's scheduler without the metric.
"""

from __future__ import annotations

import warnings
from types import ModuleType
from typing import Any

import pytest
import torch

import reimpl.nn
import reimpl.optim

L = pytest.importorskip("lightning")


def _module(nn: ModuleType, optim: ModuleType, sched: ModuleType) -> Any:
    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(
                torch.nn.Linear(6, 16),
                nn.BatchNorm1d(16),
                torch.nn.ReLU(),
                nn.Dropout(0.3),
                torch.nn.Linear(16, 3),
            )
            self.loss = nn.CrossEntropyLoss(label_smoothing=0.1)
            self.seen: list[tuple[float, float]] = []

        def training_step(self, batch: Any, _: int) -> torch.Tensor:
            x, y = batch
            loss = self.loss(self.net(x), y)
            self.log("train_loss", loss, on_step=False, on_epoch=True)
            return loss

        def on_train_epoch_end(self) -> None:
            lr = self.trainer.optimizers[0].param_groups[0]["lr"]
            self.seen.append((float(self.trainer.callback_metrics["train_loss"]), lr))

        def configure_optimizers(self) -> Any:
            opt = optim.SGD(self.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-3)
            plateau = sched.ReduceLROnPlateau(opt, factor=0.5, patience=0, threshold=0.5)
            return {
                "optimizer": opt,
                "lr_scheduler": {"scheduler": plateau, "monitor": "train_loss"},
            }

    return Tiny()


def _run(nn: ModuleType, optim: ModuleType, sched: ModuleType) -> list[tuple[float, float]]:
    L.seed_everything(0, workers=True)
    model = _module(nn, optim, sched)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 6, generator=g)
    y = torch.randint(0, 3, (64,), generator=g)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    trainer = L.Trainer(
        max_epochs=6,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice about workers and logging
        trainer.fit(model, data)
    return model.seen


def test_lightning_run_logs_torchs_losses_and_lrs() -> None:
    theirs = _run(torch.nn, torch.optim, torch.optim.lr_scheduler)
    ours = _run(reimpl.nn, reimpl.optim, reimpl.optim.lr_scheduler)
    assert len(ours) == len(theirs) == 6
    assert len({lr for _, lr in theirs}) > 1, "the plateau scheduler never acted: a weak test"
    for epoch, ((loss, lr), (t_loss, t_lr)) in enumerate(zip(ours, theirs, strict=True)):
        assert lr == t_lr, f"epoch {epoch}: lr {lr}, torch {t_lr}"
        assert loss == pytest.approx(t_loss, rel=1e-6, abs=1e-7), f"epoch {epoch}"
