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


#: constructor keywords a reimpl class has beyond torch's -> why
EXTRA_KEYWORDS = {
    "fused": "every reimpl optimizer has a fused path; torch has none for some (Adadelta, "
    "Adamax, NAdam, RAdam, RMSprop, Rprop, Adafactor)",
}


def _params(cls: type, drop: set[str]) -> list[tuple[str, object, str]]:
    sig = inspect.signature(cls)
    return [
        (p.name, p.kind, repr(p.default)) for p in sig.parameters.values() if p.name not in drop
    ]


@pytest.mark.parametrize(("ours", "theirs"), PAIRS, ids=[o.__name__ for o, _ in PAIRS])
def test_constructor_is_torchs(ours: type, theirs: type) -> None:
    """The installed torch's constructor parameters, in order, with its kinds and defaults:
    what that torch takes, reimpl takes; a keyword only a later torch has (the norms' bias=
    before 2.12) is not in the signature here either."""
    extra = set(EXTRA_KEYWORDS) - set(inspect.signature(theirs).parameters)
    assert _params(ours, extra) == _params(theirs, set())


NORM_ARGS = {
    **{f"{k}{d}d": (3,) for k in ("BatchNorm", "InstanceNorm") for d in (1, 2, 3)},
    **{f"Lazy{k}{d}d": () for k in ("BatchNorm", "InstanceNorm") for d in (1, 2, 3)},
    "SyncBatchNorm": (3,),
    "GroupNorm": (1, 3),
}


@pytest.mark.parametrize("name", NORM_ARGS)
def test_norm_bias_keyword_as_torchs(name: str) -> None:
    """bias= (torch 2.12 on; GroupNorm's 2.13): taken where the installed torch takes it,
    refused with torch's TypeError where it does not."""
    args = NORM_ARGS[name]
    ours, theirs = getattr(reimpl.nn, name), getattr(torch.nn, name)
    if "bias" in inspect.signature(theirs).parameters:
        assert ours(*args, bias=False).bias is None
        return
    with pytest.raises(TypeError):
        theirs(*args, bias=False)
    with pytest.raises(TypeError, match="bias"):
        ours(*args, bias=False)
    assert ours(*args).state_dict().keys() == theirs(*args).state_dict().keys()  # (bias kept)
