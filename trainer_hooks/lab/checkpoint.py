"""Checkpoints that resume a run exactly.

A checkpoint holds everything that decides the rest of a run: model and optimizer state, the
step counter, the LR multiplier, the data sampler's generator, the torch (and CUDA) RNG
states, and the loss / grad-norm / validation history (the divergence tracker is rebuilt from
the loss history, so its verdict after a resume is the one an uninterrupted run reaches). On
CPU a resumed run reproduces an uninterrupted one bit for bit. Files are written to a temporary
name and renamed, so a crash mid-save never leaves a truncated checkpoint, and loaded with
``weights_only=True``: a checkpoint is data, never code.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1


def save_state(path: str | os.PathLike, state: dict) -> Path:
    """``torch.save`` via a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_state(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path} is not a stabmon checkpoint (format {FORMAT_VERSION})")
    return state


def trainer_state(trainer: Any) -> dict:
    """Everything needed to continue ``trainer`` (a :class:`~trainer_hooks.lab.train.Trainer`)
    exactly where it is."""
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {
        "format": FORMAT_VERSION,
        "step": trainer.step_num,
        "lr_scale": trainer.lr_scale,
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "sampler": trainer.batches.state_dict(),
        "rng": rng,
        "history": {
            "losses": list(trainer.losses),
            "grad_norms": list(trainer.grad_norms),
            "lrs": list(trainer.lrs),
            "val": [list(v) for v in trainer.val_history],
        },
        "model_config": asdict(trainer.model.config),
    }


def restore_trainer(trainer: Any, state: dict) -> None:
    """Load ``state`` (from `trainer_state`) into a trainer built from the same configuration."""
    saved, current = state["model_config"], asdict(trainer.model.config)
    if saved != current:
        diff = {k: (saved.get(k), current.get(k)) for k in current if saved.get(k) != current.get(k)}
        raise ValueError(f"checkpoint was saved for a different model (saved, current): {diff}")
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.batches.load_state_dict(state["sampler"])
    torch.set_rng_state(state["rng"]["torch"])
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    trainer.step_num = int(state["step"])
    trainer.lr_scale = float(state["lr_scale"])
    h = state["history"]
    trainer.losses = list(h["losses"])
    trainer.grad_norms = list(h["grad_norms"])
    trainer.lrs = list(h["lrs"])
    trainer.val_history = [tuple(v) for v in h["val"]]
    trainer.tracker.reset()
    trainer.tracker.extend(trainer.losses)


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The highest-step ``step_*.pt`` in ``directory``, if any."""
    found = sorted(Path(directory).glob("step_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    return found[-1] if found else None
