"""The training loop as a library: `TrainConfig`, `Trainer`, and `train(cfg, sink, callbacks)`.

`Trainer` owns the model, AdamW, the seeded batch sampler and the run's history; `step()` does
one optimizer step and returns a `StepInfo`, `evaluate()` scores the fixed validation batches,
`save_checkpoint`/`load_checkpoint` resume a run exactly, and `run()` loops, evaluating,
checkpointing, tracking divergence (`stabmon.divergence`, the project's single definition) and
calling each callback after every step; a callback returning ``"stop"`` ends the run.
``lr_scale`` multiplies the scheduled LR (rollback-on-alert lowers it after restoring a
checkpoint). `train()` builds a trainer, optionally attaches stabmon monitoring to a sink, runs
it and returns a JSON-friendly `TrainResult`. On CPU, the same config and seed give the same
loss sequence; on CUDA the forward pass runs under bf16 autocast.

`TrainConfig` also holds the knobs of divergence mechanisms (weight decay, beta2, z-loss, a data
switch, an injected incident: `trainer_hooks.lab.incidents`); at their defaults nothing changes.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from stabmon.divergence import DivergenceConfig, DivergenceTracker
from trainer_hooks.lab import checkpoint
from trainer_hooks.lab.config import preset, preset_defaults
from trainer_hooks.lab.data import ByteBatches, ByteCorpus
from trainer_hooks.lab.incidents import DATA_SWITCHES, Incident, corrupt_batch, scale_grads, switch_batch
from trainer_hooks.lab.model import GPT
from trainer_hooks.lab.optim import lr_at, make_optimizer, set_lr
from trainer_hooks.lab.result import TrainResult, perplexity

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """One training run. Fields left at None take the preset's `TrainDefaults`."""

    variant: str = "baseline"
    preset: str = "small"
    lr: float | None = None
    """Peak learning rate."""
    steps: int | None = None
    warmup: int | None = None
    min_lr_ratio: float = 0.1
    """The cosine decays to ``lr * min_lr_ratio``."""
    batch_size: int | None = None
    weight_decay: float = 0.1
    """AdamW weight decay on the matrices (and the tied embedding); 0 lets the output logits
    drift, one of the mechanisms of high-LR divergence."""
    beta2: float = 0.95
    """AdamW's second-moment decay (beta1 is 0.9). At 0.99-0.999 the second moments of rarely
    updated parameters adapt slowly, so a shift in the data distribution (``data_switch_step``)
    can make their updates large."""
    z_loss: float = 0.0
    """Coefficient of the z-loss, ``z_loss * mean(log Z ** 2)`` with ``log Z`` the log-partition
    (logsumexp) of the LM head's logits, added to the training objective (PaLM); 0 is off. It
    keeps the output logits from drifting. The reported loss is the cross-entropy alone."""
    grad_clip: float = 1.0
    """Clip the global grad norm to this; 0 disables clipping (the norm is reported either way)."""
    seed: int = 0
    data: str | None = None
    """A text file or directory; None uses the built-in standard-library corpus."""
    out: str | None = None
    """Directory for checkpoints and ``result.json``; None writes nothing."""
    eval_every: int | None = None
    """Evaluate every this many steps (0: only at the end)."""
    eval_batches: int | None = None
    checkpoint_every: int = 0
    """Save ``out/step_{n}.pt`` every this many steps (0: only at the end, when ``out`` is set)."""
    monitor_every: int = 1
    """Record activation statistics every this many steps when monitoring is attached."""
    stop_on_divergence: bool = False
    """Stop at the first step at which the divergence verdict on the losses so far is
    ``diverged`` (`stabmon.divergence`: the run's ``first_call``)."""
    divergence: DivergenceConfig = field(default_factory=DivergenceConfig)
    plateau_from_data: bool = True
    """Fill ``divergence.plateau_loss`` (when unset) with the corpus's byte-unigram entropy, so a
    run that ends on that plateau counts as diverged (a stall, `stabmon.divergence`)."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``..."""
    threads: int | None = None
    """torch intra-op threads; None leaves torch's setting alone."""
    model: dict[str, Any] = field(default_factory=dict)
    """`GPTConfig` overrides, e.g. ``{"softmax_cap": 30.0, "n_layer": 2}``."""
    name: str | None = None
    data_switch_step: int | None = None
    """From this optimizer step on, training batches are transformed by ``data_switch``: an
    abrupt change of the token distribution (`trainer_hooks.lab.incidents.switch_batch`).
    Validation batches are not: they keep scoring the original text."""
    data_switch: str = "permute"
    """``permute`` (relabel every byte by a fixed permutation) or ``shuffle`` (shuffle the bytes
    within each sequence)."""
    incident: Incident | None = None
    """An injected incident (`trainer_hooks.lab.incidents`): ``lr_spike``, ``corrupt_batches`` or
    ``grad_scale`` at a known step, recorded in the result so lead times can be measured from
    it. A dict (from a JSON config) is converted."""

    def __post_init__(self) -> None:
        self.incident = Incident.coerce(self.incident)
        if self.weight_decay < 0 or self.z_loss < 0:
            raise ValueError(f"weight_decay and z_loss must be >= 0, got {self.weight_decay}, {self.z_loss}")
        if not 0.0 <= self.beta2 < 1.0:
            raise ValueError(f"beta2 must be in [0, 1), got {self.beta2}")
        if self.data_switch not in DATA_SWITCHES:
            raise ValueError(f"data_switch is one of {', '.join(DATA_SWITCHES)}, got {self.data_switch!r}")
        if self.data_switch_step is not None and self.data_switch_step < 0:
            raise ValueError(f"data_switch_step must be >= 0, got {self.data_switch_step}")

    def resolved(self) -> TrainConfig:
        """A copy with the preset defaults filled in, validated."""
        defaults = preset_defaults(self.preset)
        filled = {
            f.name: getattr(defaults, f.name) for f in fields(defaults) if getattr(self, f.name, None) is None
        }
        cfg = replace(self, **filled)
        if cfg.steps < 1 or cfg.batch_size < 1 or cfg.eval_batches < 1:
            raise ValueError("steps, batch_size and eval_batches must be >= 1")
        if cfg.lr <= 0 or cfg.warmup < 0 or cfg.grad_clip < 0 or cfg.eval_every < 0:
            raise ValueError("lr must be > 0; warmup, grad_clip and eval_every must be >= 0")
        if cfg.monitor_every < 1 or cfg.checkpoint_every < 0:
            raise ValueError("monitor_every must be >= 1 and checkpoint_every >= 0")
        preset(cfg.preset, variant=cfg.variant, **cfg.model)  # validates the model settings
        for what, at in (
            ("incident", cfg.incident and cfg.incident.step),
            ("data_switch_step", cfg.data_switch_step),
        ):
            if at is not None and at >= cfg.steps:
                raise ValueError(f"{what} at step {at} never happens in a run of {cfg.steps} steps")
        if cfg.name is None:
            cfg.name = f"{cfg.variant}-lr{cfg.lr:g}-s{cfg.seed}"
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class StepInfo:
    step: int
    """0-based index of the optimizer step just taken (an index into the loss history)."""
    loss: float
    lr: float
    grad_norm: float
    """Global grad norm before clipping."""
    tokens_per_s: float
    trainer: Trainer
    val_loss: float | None = None
    """Set on steps after which an evaluation ran."""


Callback = Callable[[StepInfo], Any]


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Trainer:
    def __init__(self, cfg: TrainConfig, callbacks: Iterable[Callback] = ()) -> None:
        self.cfg = cfg = cfg.resolved()
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        self.device = _device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.model = GPT(preset(cfg.preset, variant=cfg.variant, **cfg.model)).to(self.device)
        self.optimizer = make_optimizer(
            self.model, cfg.lr, cfg.weight_decay, betas=(0.9, cfg.beta2), device_type=self.device.type
        )
        self.corpus = ByteCorpus(cfg.data, self.model.config.block_size)
        self.batches = ByteBatches(self.corpus, cfg.batch_size, cfg.seed, self.device)
        self.callbacks: list[Callback] = list(callbacks)
        if cfg.plateau_from_data and cfg.divergence.plateau_loss is None:
            cfg.divergence = replace(cfg.divergence, plateau_loss=self.corpus.unigram_entropy())
        self.tracker = DivergenceTracker(cfg.divergence)
        self.lr_scale = 1.0
        self.step_num = 0
        self.losses: list[float] = []
        self.grad_norms: list[float] = []
        self.lrs: list[float] = []
        self.val_history: list[tuple[int, float]] = []
        self.stopped_by: str | None = None
        self._tokens_per_step = cfg.batch_size * self.model.config.block_size
        self._train_time = 0.0

    def _amp(self):
        # bf16 autocast on CUDA; disabled on CPU, which keeps CPU runs exact.
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    @property
    def current_lr(self) -> float:
        c = self.cfg
        return lr_at(self.step_num, c.lr, c.warmup, c.steps, c.lr * c.min_lr_ratio) * self.lr_scale

    def _incident(self, kind: str) -> Incident | None:
        inc = self.cfg.incident
        return inc if inc is not None and inc.is_active(kind, self.step_num) else None

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch of this step: the sampler's, then the data switch's and a corrupting
        incident's transforms (the sampler advances the same either way)."""
        c, step = self.cfg, self.step_num
        x, y = self.batches.next()
        if c.data_switch_step is not None and step >= c.data_switch_step:
            x, y = switch_batch(x, y, c.data_switch, c.seed, step)
        if (inc := self._incident("corrupt_batches")) is not None:
            x, y = corrupt_batch(x, y, inc.mode, c.seed, step)
        return x, y

    def step(self) -> StepInfo:
        """One optimizer step on the next training batch."""
        t0 = time.perf_counter()
        self.model.train()
        lr = self.current_lr
        if (spike := self._incident("lr_spike")) is not None:
            lr *= spike.factor
        set_lr(self.optimizer, lr)
        x, y = self.next_batch()
        with self._amp():
            logits, loss = self.model(x, y)
        objective = loss
        if self.cfg.z_loss > 0:  # only then: runs without it stay bit-identical
            objective = loss + self.cfg.z_loss * torch.logsumexp(logits.float(), dim=-1).pow(2).mean()
        self.optimizer.zero_grad(set_to_none=True)
        objective.backward()
        if (scaled := self._incident("grad_scale")) is not None:
            scale_grads(self.model.parameters(), scaled.factor)
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        self.optimizer.step()
        loss_value, grad_norm_value = loss.item(), grad_norm.item()  # one host sync per step
        dt = time.perf_counter() - t0
        self._train_time += dt
        step = self.step_num
        self.step_num += 1
        self.losses.append(loss_value)
        self.grad_norms.append(grad_norm_value)
        self.lrs.append(lr)
        return StepInfo(step, loss_value, lr, grad_norm_value, self._tokens_per_step / max(dt, 1e-9), self)

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over the fixed validation batches (NaN if the model produces NaN)."""
        was_training = self.model.training
        self.model.eval()
        total = 0.0
        batches = self.batches.val_batches(self.cfg.eval_batches)
        for x, y in batches:
            with self._amp():
                _, loss = self.model(x, y)
            total += loss.item()
        self.model.train(was_training)
        val = total / len(batches)
        self.val_history.append((self.step_num, val))
        return val

    def training_state(self) -> dict:
        """Everything needed to continue exactly here (model, optimizer, sampler, RNG, history).
        Its tensors alias the live ones: deep-copy it to keep it in memory."""
        return checkpoint.trainer_state(self)

    def restore_training_state(self, state: dict) -> None:
        """Continue from ``state`` (from :meth:`training_state` or :meth:`read_checkpoint`)."""
        checkpoint.restore_trainer(self, state)

    def read_checkpoint(self, path: str | Path) -> dict:
        return checkpoint.load_state(path, map_location=self.device)

    def save_checkpoint(self, path: str | Path) -> Path:
        return checkpoint.save_state(path, self.training_state())

    def load_checkpoint(self, path: str | Path) -> None:
        self.restore_training_state(self.read_checkpoint(path))

    @property
    def divergence(self):
        """The first call of the divergence tracker (the stop signal); None if never called."""
        return self.tracker.result

    @property
    def label(self):
        """The divergence verdict on the losses so far (`stabmon.divergence.RunLabel`)."""
        return self.tracker.label()

    def _due(self, every: int) -> bool:
        return every > 0 and self.step_num % every == 0

    def run(self) -> TrainResult:
        """Train until ``steps``, a divergence (with ``stop_on_divergence``) or a callback's ``"stop"``."""
        cfg = self.cfg
        out = Path(cfg.out) if cfg.out else None
        t0 = time.perf_counter()
        while self.step_num < cfg.steps:
            info = self.step()
            if self._due(cfg.eval_every) or self.step_num == cfg.steps:
                info.val_loss = self.evaluate()
            if out is not None and self._due(cfg.checkpoint_every) and self.step_num < cfg.steps:
                self.save_checkpoint(out / f"step_{self.step_num}.pt")
            diverged = self.tracker.update(info.loss) is not None
            stop = False
            for cb in self.callbacks:
                if cb(info) == "stop":
                    stop, self.stopped_by = True, "callback"
            if diverged and cfg.stop_on_divergence and self.stopped_by is None:
                stop, self.stopped_by = True, "divergence"
            if stop:
                break
        if self.stopped_by is not None and (not self.val_history or self.val_history[-1][0] != self.step_num):
            self.evaluate()
        result = self.result(time.perf_counter() - t0)
        if out is not None:
            self.save_checkpoint(out / f"step_{self.step_num}.pt")
            (out / "result.json").write_text(result.to_json(history=True))
        return result

    def result(self, wall_s: float = 0.0) -> TrainResult:
        cfg = self.cfg
        finite = [v for v in self.losses if math.isfinite(v)]
        val = self.val_history[-1][1] if self.val_history else None
        label = self.tracker.label()
        return TrainResult(
            name=cfg.name,
            variant=cfg.variant,
            preset=cfg.preset,
            lr=cfg.lr,
            seed=cfg.seed,
            steps=cfg.steps,
            steps_run=self.step_num,
            final_loss=self.losses[-1] if self.losses else math.nan,
            min_loss=min(finite) if finite else math.nan,
            val_loss=val,
            val_ppl=perplexity(val) if val is not None and not math.isnan(val) else val,
            diverged=label.diverged,
            diverged_at=label.onset if label.diverged else None,
            divergence_reason=label.reason,
            stopped_by=self.stopped_by,
            tokens_per_s=self._tokens_per_step * self.step_num / self._train_time
            if self._train_time
            else 0.0,
            wall_s=wall_s,
            num_params=self.model.num_params(),
            plateau_loss=cfg.divergence.plateau_loss,
            outcome=label.outcome,
            divergence_kind=label.kind,
            onset=label.onset,
            decision_step=label.decision_step,
            first_call=label.first_call,
            incident=asdict(cfg.incident) if cfg.incident is not None else None,
            incident_step=cfg.incident.step if cfg.incident is not None else None,
            data_switch_step=cfg.data_switch_step,
            losses=list(self.losses),
            grad_norms=list(self.grad_norms),
            val_history=list(self.val_history),
        )


def _monitor_callback(mon) -> Callback:
    """Forward each step to the monitor; a monitoring failure is logged once, never raised."""
    failed = False

    def callback(info: StepInfo) -> None:
        nonlocal failed
        extra = {"val_loss": info.val_loss} if info.val_loss is not None else {}
        try:
            mon.step(
                loss=info.loss, lr=info.lr, grad_norm=info.grad_norm, tokens_per_s=info.tokens_per_s, **extra
            )
        except Exception:
            if not failed:
                log.exception("monitoring failed; training continues without it")
            failed = True

    return callback


def train(
    cfg: TrainConfig, sink=None, callbacks: Iterable[Callback] = (), resume: str | Path | None = None
) -> TrainResult:
    """Run ``cfg``; with a ``sink``, stream activation statistics to it via stabmon's hooks."""
    trainer = Trainer(cfg, callbacks)
    if resume is not None:
        trainer.load_checkpoint(resume)
    if sink is None:
        return trainer.run()
    from trainer_hooks.hooks import attach

    mon = attach(
        trainer.model,
        sink=sink,
        every=trainer.cfg.monitor_every,
        optimizer=trainer.optimizer,
        start_step=trainer.step_num,
    )
    trainer.callbacks.insert(0, _monitor_callback(mon))
    try:
        return trainer.run()
    finally:
        mon.remove()
        sink.close()
