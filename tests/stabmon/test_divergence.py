"""The divergence definition on constructed loss histories, and online/offline agreement."""

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stabmon.divergence import DivergenceConfig, DivergenceTracker, find_divergence

INIT = math.log(256)  # an untrained byte model's loss


def converging(n: int, floor: float = 2.5, tau: float = 40.0, noise: float = 0.05, seed: int = 0):
    """Loss decaying from ln 256 towards ``floor`` with Gaussian noise."""
    rng = random.Random(seed)
    return [floor + (INIT - floor) * math.exp(-i / tau) + rng.gauss(0, noise) for i in range(n)]


def test_clean_convergence_is_not_divergence():
    d = find_divergence(converging(500))
    assert not d.diverged and d.step is None and d.detected_at is None


def test_slow_noisy_convergence_with_isolated_spikes_is_not_divergence():
    losses = converging(1000, tau=300.0, noise=0.15, seed=1)
    rng = random.Random(2)
    for i in rng.sample(range(20, 1000), 25):  # isolated single-step spikes, some huge
        losses[i] += rng.choice([1.0, 3.0, 12.0])
    assert not find_divergence(losses).diverged


def test_spike_that_recovers_is_not_divergence():
    losses = converging(400)
    for i in range(200, 215):  # a 15-step burst, well above the running minimum, then back
        losses[i] = 4.0
    assert not find_divergence(losses).diverged
    for i in range(300, 304):  # a 4-step spike above the untrained loss
        losses[i] = 9.0
    assert not find_divergence(losses).diverged


def test_blow_up_diverges_at_its_first_step():
    losses = converging(400)
    losses[250:] = [7.5 + 0.1 * math.sin(i) for i in range(150)]
    d = find_divergence(losses)
    assert d.diverged and d.step == 250
    # A blow-up that stays up is a sustained excursion (rule 3) long before its recovery window ends.
    cfg = DivergenceConfig()
    assert d.detected_at is not None and 250 <= d.detected_at < 250 + cfg.patience + cfg.window


def test_blow_up_below_the_initial_loss_that_stays_up_diverges():
    losses = converging(400)
    losses[250:] = [4.0] * 150
    d = find_divergence(losses)
    assert d.diverged and d.step == 250
    cfg = DivergenceConfig()
    assert d.detected_at == 250 + (cfg.window // 2) + cfg.patience - 1


def test_nan_diverges_at_the_nan_step():
    losses = converging(100)
    losses[57] = float("nan")
    d = find_divergence(losses)
    assert (d.diverged, d.step, d.detected_at) == (True, 57, 57)
    assert "non-finite" in d.reason
    assert find_divergence([3.0, float("inf")]).step == 1


def test_blow_up_then_stall_diverges():
    """The high-LR failure: a blow-up to 18 nats at step 3 that takes a few steps to come down,
    then a plateau near 3.2 (the byte-unigram entropy) while a stable run goes on to ~2.5."""
    head = [5.55, 5.2, 4.9, 18.0, 16.0, 13.0, 11.0, 9.0, 7.5, 6.0, 4.5, 3.8, 3.5, 3.3]
    rng = random.Random(3)
    losses = head + [3.2 + rng.gauss(0, 0.05) for _ in range(600)]
    cfg = DivergenceConfig(plateau_loss=H1)
    d = find_divergence(losses, cfg)
    assert d.diverged and d.step == 3 and "did not get back" in d.reason
    assert d.detected_at == 3 + cfg.recover_patience  # the recovery window decides, not the plateau
    # Without the plateau the definition cannot tell this stall from learning (the loss is
    # finite, below the untrained model's and flat): it needs the data's plateau, as rule 4 does.
    assert not find_divergence(losses).diverged


def test_blow_up_that_recovers_and_learns_is_not_divergence():
    """A QK-normalised run at a high LR without warmup: blown up at step 2, back on the plateau by
    step 12, and learning again (below the plateau band) well within the recovery window."""
    head = [5.55, 5.3, 9.0, 12.0, 11.0, 9.5, 8.0, 7.0, 6.5, 5.0, 4.0, 3.5, 3.3]
    rng = random.Random(5)
    plateau = [3.25 + rng.gauss(0, 0.05) for _ in range(60)]
    learning = [3.25 - 0.8 * (1 - math.exp(-i / 40)) + rng.gauss(0, 0.05) for i in range(300)]
    cfg = DivergenceConfig(plateau_loss=H1)
    assert not find_divergence(head + plateau + learning, cfg).diverged
    # The same blow-up with learning that comes too late is divergence at the blow-up's first step.
    late = head + [3.25 + rng.gauss(0, 0.05) for _ in range(cfg.recover_patience)] + learning
    d = find_divergence(late, cfg)
    assert d.diverged and d.step == 2


def test_blow_up_after_progress_must_return_to_the_level_reached():
    """Late in a run, getting back means getting back to where the run was, not just below the
    plateau: a run at 2.5 knocked up to 7 nats that settles at 2.95 has not recovered."""
    cfg = DivergenceConfig(plateau_loss=H1, patience=1000)  # keep rule 3 out of the way
    losses = converging(300) + [7.0] * 8 + [2.95] * 200
    d = find_divergence(losses, cfg)
    assert d.diverged and d.step == 300 and "did not get back" in d.reason
    assert not find_divergence(converging(300) + [7.0] * 8 + [2.6] * 200, cfg).diverged


def test_stall_after_real_progress_diverges():
    """A run that learned (loss 2.5) and is knocked back to a plateau 0.7 nats higher."""
    losses = converging(300) + [3.2 + 0.03 * math.cos(i) for i in range(300)]
    d = find_divergence(losses)
    assert d.diverged and d.step == 300


H1 = 3.25  # the byte-unigram entropy of the built-in corpus


def plateau_run(n_plateau: int, seed: int = 4):
    """A high-LR run: fast early drop, a wobble, then the unigram plateau, then learning again."""
    rng = random.Random(seed)
    head = [5.33, 4.68, 3.7, 4.29, 4.58, 4.33, 4.75, 4.69, 4.63, 4.13, 3.92]
    plateau = [3.3 + rng.gauss(0, 0.08) for _ in range(n_plateau)]
    tail = [3.2 - 0.6 * (1 - math.exp(-i / 80)) + rng.gauss(0, 0.08) for i in range(300)]
    return head + plateau + tail


def test_stall_on_the_unigram_plateau_diverges():
    cfg = DivergenceConfig(plateau_loss=H1)
    d = find_divergence(plateau_run(250), cfg)
    assert d.diverged and "plateau" in d.reason
    assert 9 <= d.step <= 14  # where the smoothed loss reached the plateau
    assert d.detected_at == d.step + cfg.plateau_patience - 1
    # Without the data's plateau the definition cannot see the stall.
    assert not find_divergence(plateau_run(250)).diverged


def test_crossing_the_plateau_is_not_divergence():
    cfg = DivergenceConfig(plateau_loss=H1)
    assert not find_divergence(plateau_run(60), cfg).diverged  # a short stay, then learning
    assert not find_divergence(converging(600, tau=60.0), cfg).diverged


def test_excursion_still_open_at_the_end_is_not_yet_divergence():
    cfg = DivergenceConfig()
    losses = converging(300) + [4.0] * (cfg.patience // 2)
    assert not find_divergence(losses, cfg).diverged


def test_config_validation_and_margin():
    with pytest.raises(ValueError):
        DivergenceConfig(window=0)
    with pytest.raises(ValueError):
        DivergenceConfig(abs_margin=-1)
    cfg = DivergenceConfig(abs_margin=0.3, rel_margin=0.1)
    assert cfg.margin(2.0) == 0.3 and cfg.margin(10.0) == pytest.approx(1.0)


def test_tracker_is_sticky_and_resettable():
    t = DivergenceTracker()
    assert t.update(3.0) is None
    first = t.update(float("nan"))
    assert first.diverged and t.diverged
    assert t.update(2.0) is first
    t.reset()
    assert not t.diverged and t.update(2.0) is None


loss_values = st.one_of(
    st.floats(min_value=0.0, max_value=20.0),
    st.sampled_from([float("nan"), float("inf")]),
)
histories = st.one_of(
    st.lists(st.floats(min_value=0.0, max_value=20.0), max_size=120),
    st.lists(loss_values, max_size=120),
    # Piecewise-constant histories hit the thresholds exactly and produce long excursions.
    st.lists(st.tuples(st.floats(min_value=0.5, max_value=12.0), st.integers(1, 40)), max_size=8).map(
        lambda segs: [v for v, n in segs for _ in range(n)]
    ),
)
configs = st.builds(
    DivergenceConfig,
    window=st.integers(1, 9),
    patience=st.integers(1, 30),
    blowup_patience=st.integers(1, 6),
    recover_patience=st.integers(1, 40),
    abs_margin=st.floats(0.0, 2.0),
    plateau_loss=st.one_of(st.none(), st.floats(0.5, 12.0)),
    plateau_patience=st.integers(1, 40),
)


@settings(max_examples=300, deadline=None)
@given(losses=histories, cfg=configs)
def test_online_fires_exactly_where_offline_reports(losses, cfg):
    offline = find_divergence(losses, cfg)
    tracker = DivergenceTracker(cfg)
    fired_at = None
    for i, loss in enumerate(losses):
        r = tracker.update(loss)
        if r is not None and fired_at is None:
            fired_at = i
            assert r == offline
    if not offline.diverged:
        assert fired_at is None
        return
    assert fired_at == offline.detected_at
    assert 0 <= offline.step <= offline.detected_at
    # Decidable from the prefix alone, and not decidable one step earlier.
    assert find_divergence(losses[: fired_at + 1], cfg) == offline
    assert not find_divergence(losses[:fired_at], cfg).diverged
    # A blow-up or an excursion starts at a step whose loss is above the history's minimum.
    start = losses[offline.step]
    if "plateau" not in offline.reason:
        assert not math.isfinite(start) or start > min(v for v in losses if math.isfinite(v))


def test_excursion_starts_after_the_minimum_not_in_the_losses_before_it():
    """An early rise: the median window still holds the untrained losses from before the first
    drop when the smoothed loss crosses the threshold; the divergence starts after the drop."""
    losses = [5.5, 5.4, 4.0, 3.6, 3.5, 3.5] + [4.5] * 60
    d = find_divergence(losses)
    assert d.diverged and "running minimum" in d.reason
    assert d.step == 6


def test_bursts_above_the_plateau_do_not_restart_the_stall():
    """A run that alternates between the plateau band and bursts above it for 200 steps has not
    learned anything: the stall counts from where it reached the band."""
    cfg = DivergenceConfig(plateau_loss=H1)
    head = [5.5, 4.8, 4.0, 3.6, 3.4]
    stall = [3.7 if (i // 10) % 4 == 3 else 3.3 for i in range(200)]  # 10-step bursts to 3.7
    d = find_divergence(head + stall, cfg)
    assert d.diverged and "plateau" in d.reason and d.step <= 6
    # In the band only while not yet there: a slow descent from above does not count.
    slow = [5.5 - 0.01 * i for i in range(200)] + converging(100, floor=2.5, tau=20.0)
    assert not find_divergence(slow, cfg).diverged
