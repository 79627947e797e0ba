"""Injected incidents, the data switch and the optimizer knobs: each happens at its step, where
the optimizer, the batch or the gradient shows it, and nothing changes without it."""

import json
from dataclasses import replace

import pytest
import torch

from trainer_hooks.lab.incidents import (
    Incident,
    byte_permutation,
    corrupt_batches,
    grad_scale,
    lr_spike,
)
from trainer_hooks.lab.train import TrainConfig, Trainer


def cfg(corpus, **kw) -> TrainConfig:
    base = dict(
        preset="tiny", data=corpus, steps=12, lr=1e-2, warmup=3, batch_size=4, eval_every=0, eval_batches=2
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def plain(corpus):
    torch.set_num_threads(1)
    return Trainer(cfg(corpus, grad_clip=0.0)).run()


def _batches(trainer, n):
    out = []
    for _ in range(n):
        out.append(trainer.next_batch())
        trainer.step_num += 1
    return out


def test_lr_spike_multiplies_the_lr_the_optimizer_sees_for_its_steps(corpus, plain):
    seen = []
    spike = lr_spike(step=5, factor=30.0, steps=2)
    r = Trainer(
        cfg(corpus, grad_clip=0.0, incident=spike),
        callbacks=[lambda info: seen.append(info.trainer.optimizer.param_groups[0]["lr"])],
    ).run()
    for step in range(12):
        factor = 30.0 if step in (5, 6) else 1.0
        assert seen[step] == pytest.approx(factor * plain_lr(corpus, step)), step
    # Nothing before it changes; the loss of the spiked step itself is computed before its update.
    assert r.losses[:6] == plain.losses[:6] and r.losses[6] != plain.losses[6]
    assert (r.incident_step, r.incident["kind"], r.incident["factor"]) == (5, "lr_spike", 30.0)
    assert Trainer(cfg(corpus, grad_clip=0.0, incident=spike)).current_lr == plain_lr(corpus, 0)


def plain_lr(corpus, step):
    c = cfg(corpus).resolved()
    from trainer_hooks.lab.optim import lr_at

    return lr_at(step, c.lr, c.warmup, c.steps, c.lr * c.min_lr_ratio)


def test_corrupt_batches_replace_the_batches_of_their_steps_only(corpus):
    clean = _batches(Trainer(cfg(corpus)), 8)
    for mode in ("random", "repeat"):
        got = _batches(Trainer(cfg(corpus, incident=corrupt_batches(step=3, steps=2, mode=mode))), 8)
        for step, ((x, y), (cx, cy)) in enumerate(zip(got, clean, strict=True)):
            if step in (3, 4):
                assert not torch.equal(x, cx), (mode, step)
                assert x.shape == cx.shape and x.dtype == cx.dtype
                assert torch.equal(x[:, 1:], y[:, :-1])  # still inputs with their next-byte targets
                if mode == "repeat":
                    assert x.unique().numel() == 1 and y.unique().numel() == 1
                else:
                    assert x.unique().numel() > 100  # uniform bytes, not text
            else:  # the sampler advanced the same: every other batch is untouched
                assert torch.equal(x, cx) and torch.equal(y, cy), (mode, step)


def test_corrupt_batches_show_in_the_loss_at_their_step(corpus, plain):
    r = Trainer(cfg(corpus, grad_clip=0.0, incident=corrupt_batches(step=8, steps=1))).run()
    assert r.losses[:8] == plain.losses[:8]
    assert r.losses[8] > plain.losses[8] + 0.5  # random bytes: the text it learned does not help


def test_grad_scale_multiplies_the_recorded_grad_norm(corpus, plain):
    r = Trainer(cfg(corpus, grad_clip=0.0, incident=grad_scale(step=4, factor=100.0, steps=3))).run()
    assert r.grad_norms[:4] == plain.grad_norms[:4] and r.losses[:5] == plain.losses[:5]
    assert r.grad_norms[4] == pytest.approx(100 * plain.grad_norms[4], rel=1e-4)
    assert all(r.grad_norms[s] > 20 * plain.grad_norms[s] for s in (5, 6))
    assert r.grad_norms[7] < 20 * plain.grad_norms[7]


def test_data_switch_transforms_batches_from_its_step(corpus):
    clean = _batches(Trainer(cfg(corpus)), 6)
    perm = byte_permutation(0)
    assert not bool((perm == torch.arange(256)).any()) and sorted(perm.tolist()) == list(range(256))
    permuted = _batches(Trainer(cfg(corpus, data_switch_step=3)), 6)
    shuffled = _batches(Trainer(cfg(corpus, data_switch_step=3, data_switch="shuffle")), 6)
    for step in range(6):
        (cx, cy), (px, py), (sx, sy) = clean[step], permuted[step], shuffled[step]
        if step < 3:
            assert torch.equal(px, cx) and torch.equal(sx, cx)
            continue
        assert torch.equal(px, perm[cx]) and torch.equal(py, perm[cy])
        window = torch.cat([cx, cy[:, -1:]], dim=1)
        shuffled_window = torch.cat([sx, sy[:, -1:]], dim=1)
        assert not torch.equal(shuffled_window, window)
        assert torch.equal(shuffled_window.sort(dim=1).values, window.sort(dim=1).values)  # same bytes


def test_a_permuted_distribution_shows_in_the_loss(corpus):
    base = cfg(corpus, steps=40, lr=1e-2, warmup=5, batch_size=8)
    plain = Trainer(base).run()
    switched = Trainer(replace(base, data_switch_step=30)).run()
    assert switched.losses[:30] == plain.losses[:30]
    assert min(switched.losses[30:33]) > max(plain.losses[30:33]) + 0.5
    assert switched.data_switch_step == 30


def test_z_loss_shrinks_the_log_partition_and_leaves_the_reported_loss_cross_entropy(corpus):
    def log_z(trainer):
        x, _ = trainer.batches.val_batches(1)[0]
        with torch.no_grad():
            logits, _ = trainer.model(x)
        return torch.logsumexp(logits, dim=-1).mean().item()

    base = cfg(corpus, steps=30, lr=1e-2, warmup=3)
    a, b = Trainer(base), Trainer(replace(base, z_loss=1e-2))
    ra, rb = a.run(), b.run()
    assert ra.losses[0] == rb.losses[0]  # the same forward: the z-loss is not in the reported loss
    assert ra.losses[1] != rb.losses[1]  # ... but it is in the gradient
    assert log_z(b) < log_z(a) - 0.5


def test_optimizer_knobs_reach_adamw(corpus):
    t = Trainer(cfg(corpus, beta2=0.999, weight_decay=0.0))
    groups = t.optimizer.param_groups
    assert all(g["betas"] == (0.9, 0.999) for g in groups)
    assert [g["weight_decay"] for g in groups] == [0.0, 0.0]
    d = Trainer(cfg(corpus)).optimizer.param_groups
    assert d[0]["betas"] == (0.9, 0.95) and d[0]["weight_decay"] == 0.1


def test_config_validation_and_the_incident_in_result_json(corpus, tmp_path):
    for bad in (dict(beta2=1.0), dict(z_loss=-1.0), dict(weight_decay=-0.1), dict(data_switch="nope")):
        with pytest.raises(ValueError):
            cfg(corpus, **bad)
    with pytest.raises(ValueError, match="never happens"):
        cfg(corpus, incident=lr_spike(12, 10.0)).resolved()
    with pytest.raises(ValueError):
        Incident("lr_spike", 3, factor=0.0)
    with pytest.raises(ValueError):
        corrupt_batches(3, mode="zeros")
    with pytest.raises(ValueError):
        Incident("meteor", 3)
    # A dict (from a JSON config) becomes an Incident, and the config round-trips through JSON.
    c = cfg(corpus, steps=6, out=str(tmp_path), incident={"kind": "grad_scale", "step": 2, "factor": 10.0})
    assert c.incident == grad_scale(2, 10.0)
    assert (
        TrainConfig(**json.loads(json.dumps(c.to_dict())) | {"divergence": c.divergence}).incident
        == c.incident
    )
    Trainer(c).run()
    d = json.loads((tmp_path / "result.json").read_text())
    assert d["incident_step"] == 2 and d["incident"]["kind"] == "grad_scale" and d["data_switch_step"] is None
