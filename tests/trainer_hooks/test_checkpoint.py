"""Checkpoints: a resumed run reproduces the uninterrupted one exactly on CPU (losses, grad
norms, weights, the divergence verdict), and bad checkpoints fail clearly."""

import pytest
import torch

from trainer_hooks.lab.checkpoint import latest_checkpoint, load_state, save_state
from trainer_hooks.lab.data import stdlib_sources
from trainer_hooks.lab.train import TrainConfig, Trainer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_bytes(b"".join(p.read_bytes() for p in stdlib_sources()[:30]))
    return str(path)


def cfg(corpus, out, **kw) -> TrainConfig:
    # Dropout > 0, so the torch RNG state matters too.
    base = dict(
        preset="tiny",
        data=corpus,
        steps=16,
        lr=3e-3,
        warmup=4,
        batch_size=4,
        eval_every=8,
        eval_batches=2,
        out=str(out),
        checkpoint_every=6,
        model={"dropout": 0.1},
    )
    base.update(kw)
    return TrainConfig(**base)


def test_resume_reproduces_the_uninterrupted_run(corpus, tmp_path):
    full = Trainer(cfg(corpus, tmp_path / "full"))
    result = full.run()
    assert sorted(p.name for p in (tmp_path / "full").glob("step_*.pt")) == [
        "step_12.pt",
        "step_16.pt",
        "step_6.pt",
    ]

    resumed = Trainer(
        cfg(corpus, tmp_path / "resumed", seed=123)
    )  # the checkpoint overrides the seed's state
    resumed.load_checkpoint(tmp_path / "full" / "step_6.pt")
    assert resumed.step_num == 6 and resumed.losses == result.losses[:6]
    r2 = resumed.run()
    assert r2.losses == result.losses
    assert r2.grad_norms == result.grad_norms
    assert r2.val_history == result.val_history
    for (name, a), b in zip(
        full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_resume_keeps_lr_scale_and_divergence(corpus, tmp_path):
    t = Trainer(cfg(corpus, tmp_path, checkpoint_every=0))
    for _ in range(3):
        t.step()
    t.lr_scale = 0.25
    t.tracker.update(float("nan"))  # a diverged history
    t.losses.append(float("nan"))
    path = t.save_checkpoint(tmp_path / "x.pt")
    u = Trainer(cfg(corpus, tmp_path, checkpoint_every=0))
    u.load_checkpoint(path)
    assert u.lr_scale == 0.25 and u.current_lr == pytest.approx(0.25 * t.current_lr / t.lr_scale)
    assert u.divergence is not None and u.divergence.step == 3


def test_checkpoint_for_another_model_is_refused(corpus, tmp_path):
    t = Trainer(cfg(corpus, tmp_path, checkpoint_every=0))
    path = t.save_checkpoint(tmp_path / "a.pt")
    other = Trainer(cfg(corpus, tmp_path, checkpoint_every=0, variant="qk_norm"))
    with pytest.raises(ValueError, match="different model"):
        other.load_checkpoint(path)


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_state(tmp_path / "none.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not a stabmon checkpoint"):
        load_state(tmp_path / "foreign.pt")
    save_state(tmp_path / "ok.pt", {"format": 1, "x": [1.0, float("nan")]})
    assert load_state(tmp_path / "ok.pt")["x"][0] == 1.0
    assert not list(tmp_path.glob("*.tmp"))


def test_latest_checkpoint(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    for n in (9, 10, 2):
        (tmp_path / f"step_{n}.pt").touch()
    assert latest_checkpoint(tmp_path).name == "step_10.pt"
