"""The trainer: determinism, the LR schedule, pre-clip grad norms, callbacks, evaluation,
divergence stops, the result's JSON, monitoring through a sink, and the ``stabmon train`` CLI."""

import json
import math
import subprocess
import sys

import pytest
import torch

from trainer_hooks.lab.optim import lr_at, param_groups
from trainer_hooks.lab.train import TrainConfig, Trainer, train


def cfg(corpus, **kw) -> TrainConfig:
    base = dict(
        preset="tiny", data=corpus, steps=12, lr=3e-3, warmup=3, batch_size=4, eval_every=0, eval_batches=2
    )
    base.update(kw)
    return TrainConfig(**base)


def test_same_seed_same_losses(corpus):
    a = Trainer(cfg(corpus)).run()
    b = Trainer(cfg(corpus)).run()
    assert a.losses == b.losses and len(a.losses) == 12
    assert a.grad_norms == b.grad_norms
    c = Trainer(cfg(corpus, seed=1)).run()
    assert c.losses != a.losses


def test_short_run_learns(corpus):
    r = Trainer(cfg(corpus, steps=60, batch_size=8, lr=1e-2, warmup=5)).run()
    assert sum(r.losses[-5:]) / 5 < r.losses[0] - 1.0
    assert not r.diverged and r.stopped_by is None and r.steps_run == 60


def test_lr_schedule_and_scale(corpus):
    t = Trainer(cfg(corpus, steps=10, warmup=4, lr=1e-2, min_lr_ratio=0.1))
    for _ in range(6):
        t.step()
    assert t.lrs[:4] == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2])
    assert t.lrs[4] == pytest.approx(1e-2)
    t.lr_scale = 0.5
    t.step()
    assert t.lrs[-1] == pytest.approx(0.5 * lr_at(6, 1e-2, 4, 10, 1e-3))
    assert t.optimizer.param_groups[0]["lr"] == t.lrs[-1]


def test_lr_at():
    assert lr_at(0, 1.0, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_at(9, 1.0, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_at(10, 1.0, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_at(55, 1.0, 10, 100, 0.1) == pytest.approx(0.55)
    assert lr_at(100, 1.0, 10, 100, 0.1) == 0.1 == lr_at(500, 1.0, 10, 100, 0.1)
    after = [lr_at(s, 1.0, 10, 100, 0.1) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(after[:-1], after[1:], strict=True))
    assert lr_at(0, 1.0, 0, 100, 0.1) == 1.0


def test_param_groups_decay_matrices_only(corpus):
    t = Trainer(cfg(corpus))
    decay, no_decay = param_groups(t.model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    n = len(decay["params"]) + len(no_decay["params"])
    assert n == len(list(t.model.parameters()))  # the tied embedding appears once
    assert any(p is t.model.tok_emb.weight for p in decay["params"])


def test_reported_grad_norm_is_pre_clip(corpus):
    clipped = Trainer(cfg(corpus, grad_clip=1e-4, steps=1)).run()
    free = Trainer(cfg(corpus, grad_clip=0.0, steps=1)).run()
    assert clipped.grad_norms[0] == pytest.approx(free.grad_norms[0], rel=1e-6)
    assert clipped.grad_norms[0] > 1e-2


def test_callbacks_see_steps_and_can_stop(corpus):
    seen = []

    def cb(info):
        seen.append((info.step, info.loss, info.lr, info.grad_norm, info.tokens_per_s, info.trainer))
        return "stop" if info.step == 4 else None

    t = Trainer(cfg(corpus), callbacks=[cb])
    r = t.run()
    assert [s[0] for s in seen] == [0, 1, 2, 3, 4]
    assert r.steps_run == 5 and r.stopped_by == "callback"
    assert all(s[5] is t and s[4] > 0 and math.isfinite(s[1]) for s in seen)
    assert [s[1] for s in seen] == r.losses
    assert r.val_loss is not None  # a stopped run is still evaluated


def test_evaluation_schedule_and_perplexity(corpus):
    vals = []
    r = Trainer(cfg(corpus, eval_every=5, steps=12), callbacks=[lambda i: vals.append(i.val_loss)]).run()
    assert [s for s, _ in r.val_history] == [5, 10, 12]
    assert [v is not None for v in vals] == [i in (4, 9, 11) for i in range(12)]
    assert r.val_loss == r.val_history[-1][1]
    assert r.val_ppl == pytest.approx(math.exp(r.val_loss))


def _poison(step):
    def cb(info):
        if info.step == step:
            with torch.no_grad():
                info.trainer.model.ln_f.weight.fill_(float("nan"))

    return cb


def test_stop_on_divergence(corpus):
    r = Trainer(cfg(corpus, stop_on_divergence=True, steps=20), callbacks=[_poison(5)]).run()
    assert r.diverged and r.diverged_at == 6 and r.stopped_by == "divergence" and r.steps_run == 7
    d = json.loads(r.to_json(history=True))  # valid JSON despite the NaNs
    assert d["final_loss"] == "nan" and d["diverged_at"] == 6 and d["losses"][6] == "nan"
    assert d["val_loss"] == "nan" and d["val_ppl"] == "nan"
    kept_going = Trainer(cfg(corpus, steps=10), callbacks=[_poison(5)]).run()
    assert kept_going.diverged and kept_going.steps_run == 10 and kept_going.stopped_by is None
    # The label's fields: a non-finite loss is a divergence decided at once; before step 20, early.
    assert (r.outcome, r.divergence_kind, r.onset, r.decision_step, r.first_call) == (
        "diverged",
        "early",
        6,
        6,
        6,
    )
    assert d["outcome"] == "diverged" and d["divergence_kind"] == "early" and d["decision_step"] == 6


def test_result_label_matches_the_offline_label(corpus):
    from stabmon.divergence import DivergenceConfig, label_run

    r = Trainer(cfg(corpus, steps=30)).run()
    offline = label_run(r.losses, DivergenceConfig(plateau_loss=r.plateau_loss))
    assert (r.outcome, r.divergence_kind, r.onset, r.decision_step) == (
        offline.outcome,
        offline.kind,
        offline.onset,
        offline.decision_step,
    )
    assert r.diverged == offline.diverged and r.divergence_reason == offline.reason


def test_result_json_fields(corpus):
    d = json.loads(Trainer(cfg(corpus, steps=3)).run().to_json())
    for key in (
        "variant",
        "lr",
        "steps_run",
        "final_loss",
        "min_loss",
        "val_loss",
        "val_ppl",
        "diverged",
        "diverged_at",
        "tokens_per_s",
        "num_params",
    ):
        assert key in d
    assert "losses" not in d


def test_bad_config(corpus):
    with pytest.raises(ValueError, match="lr"):
        Trainer(cfg(corpus, lr=-1.0))
    with pytest.raises(ValueError, match="variant"):
        Trainer(cfg(corpus, variant="nope"))
    with pytest.raises(ValueError, match="fields"):
        Trainer(cfg(corpus, model={"layers": 3}))


def test_train_with_sink_attaches_monitoring(corpus):
    from trainer_hooks.client import MemorySink

    sink = MemorySink()
    r = train(cfg(corpus, steps=4, variant="qk_norm"), sink=sink)
    assert sink.closed and r.steps_run == 4
    steps = sorted({rec["step"] for rec in sink.records})
    assert steps == [0, 1, 2, 3]
    assert [v for _, v in sink.series("loss")] == r.losses
    keys = set().union(*(rec["values"] for rec in sink.records))
    assert "layer.0.qkv.l2_mean" in keys or any(k.startswith("layer.0.qkv.") for k in keys)
    assert any(k.startswith("layer.1.attn.logit") for k in keys)


@pytest.mark.integration
def test_cli_train_json(corpus, tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "stabmon_cli",
            "train",
            "--variant",
            "qk_norm_cap",
            "--preset",
            "tiny",
            "--lr",
            "3e-3",
            "--steps",
            "4",
            "--warmup",
            "2",
            "--batch-size",
            "2",
            "--data",
            corpus,
            "--threads",
            "1",
            "--json",
            "--out",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["variant"] == "qk_norm_cap" and d["steps_run"] == 4 and d["lr"] == 3e-3
    assert d["diverged"] is False and d["diverged_at"] is None and d["val_ppl"] > 1
    assert (tmp_path / "run" / "step_4.pt").is_file()
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert len(saved["losses"]) == 4


def test_cli_rejects_bad_options(corpus):
    from typer.testing import CliRunner

    from stabmon_cli import app

    runner = CliRunner()
    bad = runner.invoke(app, ["train", "--variant", "nope", "--preset", "tiny", "--data", corpus])
    assert bad.exit_code != 0 and "unknown variant 'nope'" in bad.output
    bad = runner.invoke(app, ["train", "--preset", "tiny", "--checkpoint-every", "5"])
    assert bad.exit_code != 0 and "--out" in bad.output
    bad = runner.invoke(app, ["train", "--preset", "tiny", "--data", corpus + ".missing"])
    assert bad.exit_code != 0 and "no such file" in bad.output
