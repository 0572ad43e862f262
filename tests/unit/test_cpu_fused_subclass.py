"""The fused CPU kernels take plain tensors only: FSDP2's DTensor parameters (wrappers
with no storage, ``data_ptr() == 0``) must go to the multi-tensor path, not the C kernel."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from reimpl.kernels import cpu_fused

pytestmark = pytest.mark.skipif(cpu_fused.library() is None, reason="no C compiler")


class _Sub(torch.Tensor):
    pass


def test_plain_tensors_and_parameters_are_usable() -> None:
    p = torch.nn.Parameter(torch.zeros(4))
    assert cpu_fused.usable([p], [torch.zeros(4)])


def test_tensor_subclass_is_refused() -> None:
    assert not cpu_fused.usable([torch.zeros(4).as_subclass(_Sub)], [torch.zeros(4)])


@pytest.mark.skipif(not dist.is_available() or dist.is_initialized(), reason="needs a fresh pg")
def test_dtensor_is_refused() -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        d = distribute_tensor(torch.randn(4, 4), mesh, [Shard(0)])
        assert d.data_ptr() == 0  # why: the kernel would write through a null pointer
        p = torch.nn.Parameter(d)
        assert not cpu_fused.usable([p], [torch.zeros(4, 4)])
    finally:
        dist.destroy_process_group()
