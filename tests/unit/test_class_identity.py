"""Class identity: every exported reimpl class is an instance of the torch class it
replaces (so torch's ``update_bn``, ``convert_sync_batchnorm``, ``ChainedScheduler`` and
Lightning's / HF's isinstance checks treat it as torch's), while no torch computation is
inherited: every method that the torch class -- or a torch class between it and
``nn.Module`` / ``Optimizer`` / ``LRScheduler`` -- defines itself resolves, on the reimpl
class, to a function defined in reimpl, or sits on ALLOWED with its reason.
"""

from __future__ import annotations

import inspect

import pytest
import torch

import reimpl.nn
import reimpl.optim
from reimpl.optim import lr_scheduler, swa_utils

#: the bases whose own methods are the shared machinery (param_groups, hooks, state_dict,
#: module registration...), not the math of any component
STOP = (torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler, object)

#: (torch class name or "*", method) -> why inheriting torch's is fine: pure bookkeeping
ALLOWED: dict[tuple[str, str], str] = {
    ("*", "__constants__"): "a list of names for TorchScript, no code",
    **{
        ("LazyModuleMixin", name): "torch's lazy-module protocol: hooks, the uninitialized "
        "tensors in state_dict, the class swap (shapes and resets are reimpl's)"
        for name in (
            "_save_to_state_dict",
            "_lazy_load_hook",
            "has_uninitialized_params",
            "_infer_parameters",
            "_replicate_for_data_parallel",
        )
    },
}

NAMESPACES = [
    (reimpl.nn, torch.nn),
    (reimpl.optim, torch.optim),
    (lr_scheduler, torch.optim.lr_scheduler),
    (swa_utils, torch.optim.swa_utils),
]


def _exported() -> list[tuple[type, type]]:
    pairs = []
    for ours_ns, torch_ns in NAMESPACES:
        for name in getattr(ours_ns, "__all__", dir(ours_ns)):
            ours = getattr(ours_ns, name)
            if not inspect.isclass(ours) or not ours.__module__.startswith("reimpl"):
                continue
            theirs = getattr(torch_ns, name, None)
            if theirs is None or not inspect.isclass(theirs):
                continue
            pairs.append((ours, theirs))
    return pairs


PAIRS = _exported()


def test_every_exported_class_has_a_torch_counterpart() -> None:
    names = {o.__name__ for o, _ in PAIRS}
    for must in (
        "BatchNorm2d",
        "CrossEntropyLoss",
        "Dropout",
        "Adam",
        "ReduceLROnPlateau",
        "SWALR",
        "KLDivLoss",
        "MultiMarginLoss",
        "TripletMarginWithDistanceLoss",
        "PairwiseDistance",
        "CosineSimilarity",
        "InstanceNorm2d",
        "LazyBatchNorm2d",
        "LazyInstanceNorm3d",
        "LocalResponseNorm",
        "LayerNorm",
        "RMSNorm",
        "GroupNorm",
    ):
        assert must in names


@pytest.mark.parametrize(("ours", "theirs"), PAIRS, ids=[o.__name__ for o, _ in PAIRS])
def test_is_a_torch_class(ours: type, theirs: type) -> None:
    assert issubclass(ours, theirs), f"reimpl's {ours.__name__} must subclass {theirs}"


def _inherited_torch_methods(ours: type, theirs: type) -> list[str]:
    """Methods of torch's classes (up to STOP) that resolve to torch's code on ``ours``."""
    leaks = []
    for klass in theirs.__mro__:
        if klass in STOP or not klass.__module__.startswith("torch"):
            continue
        for name, value in vars(klass).items():
            if not (callable(value) or isinstance(value, (staticmethod, classmethod, property))):
                continue
            if name in ("__init_subclass__", "__subclasshook__", "__class_getitem__"):
                continue
            if (klass.__name__, name) in ALLOWED or ("*", name) in ALLOWED:
                continue
            owner = next(c for c in ours.__mro__ if name in vars(c))
            if not owner.__module__.startswith("reimpl"):
                leaks.append(f"{klass.__name__}.{name} (resolves to {owner.__module__})")
    return leaks


@pytest.mark.parametrize(("ours", "theirs"), PAIRS, ids=[o.__name__ for o, _ in PAIRS])
def test_no_torch_method_is_inherited(ours: type, theirs: type) -> None:
    if not issubclass(ours, theirs):
        pytest.fail(f"{ours.__name__} does not subclass {theirs} yet")
    leaks = _inherited_torch_methods(ours, theirs)
    assert not leaks, f"reimpl's {ours.__name__} inherits torch code: " + ", ".join(leaks)
