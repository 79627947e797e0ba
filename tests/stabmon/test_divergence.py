"""The divergence definition on constructed loss histories, and online/offline agreement.

Tests changed when the label became end-judged (outcomes, kinds, a recovery clause, the stall
judged at the end): a rise or a stall is decided ``settle_steps`` after its onset at the earliest,
so decision steps moved and short histories became ``undetermined``; a run that sat on the
plateau and then learned is no longer a divergence."""

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stabmon.divergence import DivergenceConfig, DivergenceTracker, RunLabel, find_divergence, label_run

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
    # Decided once the run had settle_steps to come back and did not.
    assert d.detected_at == 250 + DivergenceConfig().settle_steps
    label = label_run(losses)
    assert (label.outcome, label.kind, label.decision_step) == ("diverged", "blow-up", 350)


def test_blow_up_below_the_initial_loss_that_stays_up_diverges():
    losses = converging(400)
    losses[250:] = [4.0] * 150
    d = find_divergence(losses)
    assert d.diverged and d.step == 250 and d.detected_at == 350
    assert label_run(losses).kind == "late-rise"  # 4 nats: below the untrained loss, no plateau given
    # With the plateau known, ending above the band after a rise is still a rise, not a stall.
    assert label_run(losses, DivergenceConfig(plateau_loss=H1)).kind == "late-rise"


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
    assert d.diverged and d.step == 3 and "plateau" in d.reason
    assert d.detected_at == 3 + cfg.settle_steps
    assert label_run(losses, cfg).kind == "early"  # onset before step 20: nothing precedes it
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
    label = label_run(head + plateau + learning, cfg)
    assert label.outcome == "transient" and label.onset == 2 and label.excursions == 1
    # Learning that comes late is still learning: the stall is judged at the end (under the old
    # rule, 150 steps on the plateau made this a divergence whatever came after).
    late = head + [3.25 + rng.gauss(0, 0.05) for _ in range(200)] + learning
    late_label = label_run(late, cfg)
    assert late_label.outcome == "transient"
    # ... though a loss-based stop would have stopped it, on the plateau, as a stall.
    assert late_label.first_call is not None and late_label.first_call < len(head) + 200
    # Ending on the plateau instead is a divergence dated from the blow-up.
    stalled = label_run(head + [3.25 + rng.gauss(0, 0.05) for _ in range(300)], cfg)
    assert (stalled.outcome, stalled.kind, stalled.onset) == ("diverged", "early", 2)


def test_blow_up_after_progress_must_return_to_the_level_reached():
    """Late in a run, getting back means getting back to where the run was, not just below the
    plateau: a run at 2.5 knocked up to 7 nats that settles at 2.95 has not recovered."""
    cfg = DivergenceConfig(plateau_loss=H1)
    losses = converging(300) + [7.0] * 8 + [2.95] * 200
    label = label_run(losses, cfg)
    assert (label.outcome, label.kind, label.onset) == ("diverged", "blow-up", 300)
    assert "without coming back" in label.reason
    back = label_run(converging(300) + [7.0] * 8 + [2.6] * 200, cfg)  # within half the margin
    assert back.outcome == "transient" and back.onset == 300


def test_stall_after_real_progress_diverges():
    """A run that learned (loss 2.5) and is knocked back to a plateau 0.7 nats higher."""
    losses = converging(300) + [3.2 + 0.03 * math.cos(i) for i in range(300)]
    d = find_divergence(losses)
    assert d.diverged and d.step == 300
    assert label_run(losses).kind == "late-rise"
    assert label_run(losses, DivergenceConfig(plateau_loss=H1)).kind == "stall"  # it ends on the plateau


H1 = 3.25  # the byte-unigram entropy of the built-in corpus


def plateau_run(n_plateau: int, seed: int = 4):
    """A high-LR run: fast early drop, a wobble, then the unigram plateau, then learning again."""
    rng = random.Random(seed)
    head = [5.33, 4.68, 3.7, 4.29, 4.58, 4.33, 4.75, 4.69, 4.63, 4.13, 3.92]
    plateau = [3.3 + rng.gauss(0, 0.08) for _ in range(n_plateau)]
    tail = [3.2 - 0.6 * (1 - math.exp(-i / 80)) + rng.gauss(0, 0.08) for i in range(300)]
    return head + plateau + tail


def test_stall_on_the_unigram_plateau_is_judged_at_the_end():
    cfg = DivergenceConfig(plateau_loss=H1)
    stalled = plateau_run(250)[:261]  # the run ends on the plateau
    d = find_divergence(stalled, cfg)
    assert d.diverged and "plateau" in d.reason
    assert 9 <= d.step <= 14  # where the smoothed loss reached the plateau
    assert d.detected_at == d.step + cfg.settle_steps
    label = label_run(stalled, cfg)
    assert label.kind == "early"  # it reached the plateau before step 20
    # Without the data's plateau the definition cannot see the stall.
    assert not find_divergence(stalled).diverged
    # The same 250 steps on the plateau, then learning: not a divergence (it was, under a fixed
    # 150-step count), but a loss-based stop would have stopped it.
    learned = label_run(plateau_run(250), cfg)
    assert learned.outcome == "stable" and learned.first_call == d.detected_at


def test_a_stall_near_the_end_is_visible():
    """A run that learned, then was knocked onto the plateau 150 steps before its end: the old
    150-step count never saw it; judged at the end, it is a stall."""
    cfg = DivergenceConfig(plateau_loss=H1)
    rng = random.Random(7)
    losses = converging(450) + [3.25 + rng.gauss(0, 0.04) for _ in range(130)]
    label = label_run(losses, cfg)
    assert (label.outcome, label.kind, label.onset) == ("diverged", "stall", 450)
    assert label.decision_step == 550
    # The same stall 60 steps before the end is undetermined: the run may yet work it off.
    assert label_run(losses[:510], cfg).outcome == "undetermined"


def test_stall_decided_by_end_not_by_length():
    """149 or 150 steps on the plateau no longer decide anything: where the run ends does."""
    cfg = DivergenceConfig(plateau_loss=H1)
    for n in (149, 150):
        assert label_run(plateau_run(n), cfg).outcome == "stable"
        assert label_run(plateau_run(n)[: 11 + n], cfg).outcome == "diverged"


def test_crossing_the_plateau_is_not_divergence():
    cfg = DivergenceConfig(plateau_loss=H1)
    assert not find_divergence(plateau_run(60), cfg).diverged  # a short stay, then learning
    assert not find_divergence(converging(600, tau=60.0), cfg).diverged


def test_excursion_still_open_at_the_end_is_not_yet_divergence():
    cfg = DivergenceConfig()
    losses = converging(300) + [4.0] * 12
    assert not find_divergence(losses, cfg).diverged


def test_config_validation_and_margin():
    with pytest.raises(ValueError):
        DivergenceConfig(window=0)
    with pytest.raises(ValueError):
        DivergenceConfig(abs_margin=-1)
    with pytest.raises(ValueError):
        DivergenceConfig(recover_fraction=1.0)
    with pytest.raises(ValueError):
        DivergenceConfig(plateau_loss=float("nan"))
    cfg = DivergenceConfig(abs_margin=0.3, rel_margin=0.1)
    assert cfg.margin(2.0) == 0.3 and cfg.margin(10.0) == pytest.approx(1.0)
    assert cfg.recovery_level(2.0) == pytest.approx(2.15)


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
    end_window=st.integers(1, 25),
    abs_margin=st.floats(0.0, 2.0),
    recover_fraction=st.floats(0.0, 0.9),
    plateau_loss=st.one_of(st.none(), st.floats(0.5, 12.0)),
    settle_steps=st.integers(1, 40),
    early_steps=st.integers(0, 30),
)


def _prefix_labels(losses, cfg):
    tracker = DivergenceTracker(cfg)
    out = []
    for loss in losses:
        tracker.update(loss)
        out.append(tracker.label())
    return tracker, out


@settings(max_examples=300, deadline=None)
@given(losses=histories, cfg=configs)
def test_online_verdict_is_the_offline_label_of_every_prefix(losses, cfg):
    tracker, online = _prefix_labels(losses, cfg)
    for k, label in enumerate(online, 1):
        assert label == label_run(losses[:k], cfg)
    final = label_run(losses, cfg)
    assert tracker.label() == final and final.steps == len(losses)
    assert final.outcome in ("diverged", "transient", "stable", "undetermined")
    calls = [k for k, label in enumerate(online) if label.outcome == "diverged"]
    assert final.first_call == (calls[0] if calls else None)
    # The stop signal: set from the first call on, the same object after.
    assert tracker.diverged == bool(calls)
    if calls:
        assert tracker.result.detected_at == calls[0] and tracker.result.step == online[calls[0]].onset
    if not final.diverged:
        assert final.kind is None and final.decision_step is None
        assert not find_divergence(losses, cfg).diverged
        return
    # A divergence: decided online at or after its onset and never after the end; no verdict on a
    # prefix before the decision step called this divergence (an earlier episode may have been).
    assert final.kind in ("early", "blow-up", "stall", "late-rise")
    assert 0 <= final.onset <= final.decision_step <= len(losses) - 1
    assert online[final.decision_step].outcome == "diverged"
    assert all(
        online[k].outcome != "diverged" or online[k].onset != final.onset
        for k in range(final.onset, final.decision_step)
    )
    assert (final.kind == "early") == (final.onset < cfg.early_steps)
    d = find_divergence(losses, cfg)
    assert (d.diverged, d.step, d.detected_at) == (True, final.onset, final.decision_step)
    if any(not math.isfinite(v) for v in losses):
        return
    # Otherwise decided no sooner than settle_steps after the onset.
    assert final.decision_step >= final.onset + cfg.settle_steps
    # An excursion starts at a step whose loss is above the history's minimum.
    if "plateau" not in final.reason:
        assert losses[final.onset] > min(losses)


def test_excursion_starts_after_the_minimum_not_in_the_losses_before_it():
    """An early rise: the median window still holds the untrained losses from before the first
    drop when the smoothed loss crosses the threshold; the divergence starts after the drop."""
    losses = [5.5, 5.4, 4.0, 3.6, 3.5, 3.5] + [4.5] * 160
    d = find_divergence(losses)
    assert d.diverged and "pre-onset minimum" in d.reason
    assert d.step == 6
    # 60 steps after the onset the run may still come back: undetermined, not yet divergence.
    assert label_run(losses[:66]).outcome == "undetermined"


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


def test_a_bump_the_run_works_off_is_transient():
    """The case the old sustained-rise rule got wrong: a 0.36-nat bump held for 40 steps (longer
    than the old 25-step patience), that the run works off, ending among the best runs."""
    losses = converging(400)
    level = 2.5 + (INIT - 2.5) * math.exp(-150 / 40)  # the loss the run had reached at step 150
    for i in range(150, 190):
        losses[i] = level + 0.36
    label = label_run(losses, DivergenceConfig(plateau_loss=H1))
    assert (label.outcome, label.onset, label.excursions) == ("transient", 150, 1)
    assert label.kind is None and label.decision_step is None and label.first_call is None
    assert label.end_loss == pytest.approx(2.5, abs=0.05)
    # During the fast early descent the pre-onset minimum (the lowest 20-step median) lags the
    # loss, so the same bump at step 100 may not even count as an excursion; never a divergence.
    early = converging(400)
    for i in range(100, 140):
        early[i] = 2.5 + (INIT - 2.5) * math.exp(-100 / 40) + 0.36
    assert label_run(early, DivergenceConfig(plateau_loss=H1)).outcome in ("transient", "stable")


def test_noise_is_not_an_excursion():
    """Batches of 512 bytes: +-0.2 nats from step to step, with runs of hard batches."""
    rng = random.Random(11)
    losses = [v + rng.gauss(0, 0.2) for v in converging(400, noise=0.0)]
    for start in (120, 250):  # three hard batches in five, twice
        for i in (start, start + 2, start + 4):
            losses[i] += 0.6
    label = label_run(losses, DivergenceConfig(plateau_loss=H1))
    assert (label.outcome, label.excursions) == ("stable", 0), label.reason


def test_non_finite_is_diverged_at_once_whatever_comes_after():
    losses = converging(50)
    losses[30] = float("inf")
    label = label_run(losses + [2.5] * 10)
    assert (label.outcome, label.kind, label.onset, label.decision_step) == ("diverged", "blow-up", 30, 30)
    # In the first steps, an early divergence; no settling time for a dead run.
    early = label_run([5.5, 5.0, float("nan")])
    assert (early.outcome, early.kind, early.onset) == ("diverged", "early", 2)
    # The rise that led to it dates the divergence.
    rising = converging(200) + [4.0, 5.0, 6.0, 8.0, 12.0, float("nan")]
    assert label_run(rising).onset == 200


def test_an_early_blow_up_that_stays_up_is_early():
    losses = [5.55, 5.0, 12.0, 14.0, 13.0] + [12.0 + 0.1 * math.sin(i) for i in range(200)]
    label = label_run(losses)
    assert (label.outcome, label.kind, label.onset) == ("diverged", "early", 2)


def test_a_late_blow_up_and_a_late_rise():
    cfg = DivergenceConfig(plateau_loss=H1)
    blow = converging(300) + [9.0] * 150
    assert label_run(blow, cfg).kind == "blow-up"
    rise = converging(300) + [2.5 + 0.01 * i for i in range(150)]  # a slow climb to 4 nats
    label = label_run(rise, cfg)
    assert label.outcome == "diverged" and label.kind == "late-rise" and 300 < label.onset < 340


def test_undetermined_cases():
    cfg = DivergenceConfig(plateau_loss=H1)
    # Onset in the last settle_steps steps.
    recent = label_run(converging(300) + [9.0] * 50, cfg)
    assert recent.outcome == "undetermined" and recent.onset == 300 and "last 100" in recent.reason
    # Ending within edge_margin of the plateau's lower edge (3.0), from either side.
    for end in (2.97, 3.03):
        near = label_run(converging(400, floor=end, noise=0.0), cfg)
        assert near.outcome == "undetermined" and "lower edge" in near.reason, end
    assert label_run(converging(400, floor=2.9, noise=0.0), cfg).outcome == "stable"
    # On the plateau band, but never got down to it: too slow to tell a stall from slow learning.
    slow = label_run([5.5 - 0.004 * i for i in range(300)], cfg)
    assert slow.outcome == "undetermined" and "too slow" in slow.reason
    # An excursion not yet worked off, from a recent step, below its threshold by the end.
    losses = converging(300) + [3.2] * 15 + [2.72] * 20
    open_exc = label_run(losses, cfg)
    assert open_exc.outcome == "undetermined" and open_exc.onset == 300


def test_run_label_serialises_and_converts():
    label = label_run(converging(300) + [9.0] * 150)
    d = label.to_dict()
    assert d["outcome"] == "diverged" and d["kind"] == "blow-up" and d["onset"] == 300
    assert isinstance(label, RunLabel) and label.to_divergence() == find_divergence(
        converging(300) + [9.0] * 150
    )
