"""Training checkpoints without pickles: optimizer state as safetensors, bookkeeping as JSON, atomic writes.

Shared by the InDI and surrogate trainers. A killed training run leaves either the previous checkpoint or the
new one, never half of one (every file goes through a temporary sibling and ``os.replace``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

OPTIMIZER_FILE, STATE_FILE = "optimizer.safetensors", "training_state.json"


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """Write through a temporary sibling and ``os.replace`` it onto ``path``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_optimizer(directory: Path, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """``optimizer.safetensors`` (per-parameter tensors, flattened) + ``training_state.json`` (``state`` plus the
    optimizer's param groups). ``state`` must be JSON-able (iteration, losses, RNG state...)."""
    from safetensors.torch import save_file

    opt = optimizer.state_dict()
    tensors = {f"{idx}.{name}": torch.as_tensor(value).detach().reshape(-1).contiguous().clone()
               for idx, per_param in opt["state"].items() for name, value in per_param.items()}
    directory = Path(directory)
    atomic_write(directory / OPTIMIZER_FILE, lambda p: save_file(tensors, str(p)))
    payload = {**state, "param_groups": opt["param_groups"]}
    atomic_write(directory / STATE_FILE, lambda p: p.write_text(json.dumps(payload)))


def load_optimizer(directory: Path, parameters: Iterable[torch.nn.Parameter],
                   optimizer: torch.optim.Optimizer) -> dict:
    """Restore what :func:`save_optimizer` wrote into ``optimizer``; returns the JSON state."""
    from safetensors.torch import load_file

    directory = Path(directory)
    state = json.loads((directory / STATE_FILE).read_text())
    flat = load_file(str(directory / OPTIMIZER_FILE))
    params = list(parameters)
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        idx, name = key.split(".", 1)
        shape = () if name == "step" else params[int(idx)].shape
        per_param.setdefault(int(idx), {})[name] = value.reshape(shape)
    optimizer.load_state_dict({"state": per_param, "param_groups": state["param_groups"]})
    return state


def has_checkpoint(directory: Path) -> bool:
    directory = Path(directory)
    return (directory / STATE_FILE).exists() and (directory / OPTIMIZER_FILE).exists()
