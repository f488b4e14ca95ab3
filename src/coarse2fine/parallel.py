"""Data-parallel wrapping applied from outside the model (PyTorch's own engines only).

- world_size 1: the model as is (the same training code path runs);
- DDP: torch.nn.parallel.DistributedDataParallel;
- FSDP: torch.distributed.fsdp.fully_shard (FSDP2), one shard unit per transformer block plus the
  root, for presets too large to replicate.

Checkpoints hold full (unsharded) tensors keyed by parameter name, whatever the wrapping, so a run
saved by N FSDP or DDP processes resumes in M processes with either engine (or none).
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from coarse2fine.config import UserError
from coarse2fine.distributed import DistInfo


def wrap_model(model: nn.Module, info: DistInfo, fsdp: bool = False) -> nn.Module:
    if not info.enabled:
        return model
    if fsdp:
        return _shard(model)
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [info.local_rank] if info.device.type == "cuda" else None
    return DDP(model, device_ids=ids)


def wrap_shadow(model: nn.Module, info: DistInfo, fsdp: bool = False) -> nn.Module:
    """A copy that is never trained directly (the EMA): sharded like the trained model under FSDP,
    so a parameter-by-parameter update pairs shards with shards; replicated (unwrapped) otherwise."""
    return _shard(model) if (fsdp and info.enabled) else model


def _shard(model: nn.Module) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    for layer in model.layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def reshard(model: nn.Module) -> None:
    """Free the gathered parameters an FSDP2 forward leaves behind. The root unit keeps its parameters
    gathered after a forward (it expects a backward), so after an evaluation forward they would stay
    plain tensors and no longer pair with the trained model's shards. No-op without FSDP."""
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def _full_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # cpu_offload gathers shard by shard into CPU memory of rank 0 only (the other ranks get {})
    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full state dict without wrapper prefixes. Under FSDP this is a collective (call it on every
    rank) and only rank 0 receives the tensors; otherwise every rank gets its replica's weights."""
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(model, options=_full_options())
    return unwrap(model).state_dict()


def full_optim_state(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """Optimizer state keyed by parameter name (not by position), with full tensors: loadable at any
    world size and under DDP, FSDP or no wrapper. Collective under FSDP (rank 0 receives it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    opts = _full_options() if is_sharded(model) else StateDictOptions(full_state_dict=True)
    return get_optimizer_state_dict(model, opt, options=opts)


def load_optim_state(model: nn.Module, opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Inverse of full_optim_state (every rank passes the full state). Position-keyed states written
    by `opt.state_dict()` still load when the model is not sharded."""
    keys = list(state.get("state", {}))
    if keys and all(isinstance(k, int) for k in keys):
        if is_sharded(model):
            raise UserError("this train state stores the optimizer by position; it cannot be resumed under "
                             "FSDP — resume it once without --fsdp to convert it")
        opt.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, opt, state, options=StateDictOptions(full_state_dict=True))


def grad_norm_value(norm: torch.Tensor | None) -> float | None:
    """clip_grad_norm_'s result as a float (a replicated DTensor under FSDP)."""
    if norm is None:
        return None
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)


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
