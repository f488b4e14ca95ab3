"""Data-parallel wrapping applied from outside the model (PyTorch's own engines only).

- world_size 1: the model as is (the same training code path runs);
- DDP: torch.nn.parallel.DistributedDataParallel;
- FSDP: torch.distributed.fsdp.fully_shard (FSDP2), one shard unit per transformer block plus the
  root, for presets too large to replicate.
"""
from __future__ import annotations

import contextlib

from torch import nn

from coarse2fine.distributed import DistInfo


def wrap_model(model: nn.Module, info: DistInfo, fsdp: bool = False) -> nn.Module:
    if not info.enabled:
        return model
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        for layer in model.layers:
            fully_shard(layer)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [info.local_rank] if info.device.type == "cuda" else None
    return DDP(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def no_sync(model: nn.Module, skip: bool):
    """Skip the gradient all-reduce on accumulation micro-steps (DDP); FSDP2 uses
    set_requires_gradient_sync; plain modules need nothing."""
    if not skip:
        return contextlib.nullcontext()
    if hasattr(model, "no_sync"):
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(False)
        return _ReenableSync(model)
    return contextlib.nullcontext()


class _ReenableSync(contextlib.AbstractContextManager):
    def __init__(self, model):
        self.model = model

    def __exit__(self, *exc):
        self.model.set_requires_gradient_sync(True)
        return False
