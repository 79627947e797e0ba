"""The closed loop (`trainer_hooks.actions`): alerts recorded from another thread act at the next
step boundary; stop saves a checkpoint and ends the run; rollback restores a pre-warning
checkpoint with a lower LR. The end-to-end case drives the policy with the real detector
(`stabmon.detect`, run in-process with the collector's alert semantics) on a tiny model whose
baseline run diverges at a high learning rate."""

from __future__ import annotations

import logging
import statistics
import threading
from itertools import count

import pytest
import torch

from stabmon.detect import Detector
from trainer_hooks.actions import AlertPolicy, PolicyConfig, policy_from
from trainer_hooks.lab.train import TrainConfig, Trainer, train

# A tiny baseline at peak LR 1.0, no clipping, a long warmup and no decay after it: fine for ~60
# steps, then the loss blows up as the LR ramps (a divergence by stabmon.divergence from step ~67).
# The LR stays at its peak, so the run does not work the blow-up off as the cosine would let it,
# and it runs long enough after the blow-up (>= 100 steps) for the label to be decided.
DIVERGING = dict(
    variant="baseline",
    preset="tiny",
    lr=1.0,
    warmup=100,
    steps=200,
    min_lr_ratio=1.0,
    grad_clip=0.0,
    eval_every=0,
)
ROLLBACK_RULES = ("loss_spike", "grad_spike", "non_finite")


class DetectorAlerts:
    """A sink that runs the detector in-process and keeps alerts the way the collector does:
    one open alert per rule, opened at its first finding, escalated while firing, resolved when
    the rule is absent. New (id, severity, status) go to ``on_alert``, like the client's."""

    def __init__(self, on_alert=None) -> None:
        self.detector = Detector()
        self.state = self.detector.new_state()
        self.on_alert = on_alert
        self.open: dict[str, dict] = {}
        self.history: list[dict] = []
        self._ids = count(1)

    def write(self, record: dict) -> None:
        step = record["step"]
        firing = {f.rule: f for f in self.detector.observe(self.state, step, record["values"])}
        for rule, f in firing.items():
            a = self.open.get(rule)
            if a is None:
                a = {"id": next(self._ids), "rule": rule, "severity": f.severity, "status": "open",
                     "step": step, "last_step": step, "message": f.message}  # fmt: skip
                self.open[rule] = a
                self.history.append(a)
                self._emit(a)
            else:
                a["last_step"] = step
                if f.severity == "critical" and a["severity"] == "warning":
                    a["severity"] = "critical"
                    self._emit(a)
        for rule in [r for r in self.open if r not in firing]:
            a = self.open.pop(rule)
            a["status"] = "resolved"

    def _emit(self, alert: dict) -> None:
        if self.on_alert is not None:
            self.on_alert(dict(alert))

    @property
    def alerts(self) -> list[dict]:
        return [dict(a) for a in self.open.values()]

    def flush(self, timeout=None) -> None:
        pass

    def close(self) -> None:
        pass


def alert(aid=1, severity="critical", step=5, last_step=None, rule="loss_spike", status="open") -> dict:
    return {"id": aid, "rule": rule, "severity": severity, "status": status, "step": step,
            "last_step": step if last_step is None else last_step, "message": "test alert"}  # fmt: skip


def inject_at(policy: AlertPolicy, when: dict[int, dict]):
    """A trainer callback (placed before the policy) that delivers alerts from another thread,
    as the client's sender thread does, after the given trainer steps."""

    def callback(info):
        if info.step in when:
            t = threading.Thread(target=policy, args=(when.pop(info.step),))
            t.start()
            t.join()

    return callback


@pytest.fixture(scope="module")
def diverged_without_policy():
    # Module scope runs before the per-test one-thread fixture: pin the threads here too, so
    # this run and the one it is compared with compute identically up to the first alert.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(TrainConfig(**DIVERGING), sink=DetectorAlerts())
    finally:
        torch.set_num_threads(threads)


def test_rollback_turns_a_blow_up_into_a_run_that_keeps_training(diverged_without_policy):
    """The plain run blows up; with rollback it does not, and ends far lower. At these learning
    rates the tiny baseline still ends on the unigram plateau (a stall, by the label), so the
    claim is about the blow-up, not about reaching a good loss."""
    plain = diverged_without_policy
    assert plain.diverged and plain.divergence_kind == "blow-up", (plain.outcome, plain.divergence_reason)

    policy = AlertPolicy(on_critical="rollback", rules=ROLLBACK_RULES, checkpoint_every=10, max_rollbacks=3)
    alerts = DetectorAlerts(on_alert=policy)
    result = train(TrainConfig(**DIVERGING), sink=alerts, callbacks=[policy])

    rollbacks = [e for e in policy.events if e.action == "rollback"]
    assert policy.rollbacks >= 1 and rollbacks
    first = rollbacks[0].detail
    # Back to a checkpoint taken before the first warning of the episode, with a lower LR.
    assert first["to_step"] <= first["first_warning_step"] < first["from_step"]
    assert first["lr_scale"] == pytest.approx(0.5)
    assert result.divergence_kind != "blow-up", (result.outcome, result.divergence_reason)
    # The new lineage's smoothed loss never gets worse than the untrained model's (a spike may).
    after = result.losses[first["to_step"] :]
    assert max(statistics.median(after[i : i + 5]) for i in range(len(after) - 4)) < result.losses[0] + 1.0
    assert result.steps_run == DIVERGING["steps"] and result.stopped_by is None
    assert result.final_loss < plain.final_loss
    print(
        f"\nrollback: {[(e.detail['from_step'], e.detail['to_step'], e.alert['rule']) for e in rollbacks]}; "
        f"plain run diverged at step {plain.diverged_at} (final loss {plain.final_loss:.3f}), "
        f"with rollback final loss {result.final_loss:.3f} (min {result.min_loss:.3f}), "
        f"first acting alert at step {min(a['step'] for a in alerts.history if a['rule'] in ROLLBACK_RULES)}"
    )


def test_stop_on_critical_saves_a_checkpoint_and_ends_the_run(tmp_path):
    policy = AlertPolicy(on_critical="stop", stop_dir=str(tmp_path))
    trainer = Trainer(TrainConfig(preset="tiny", steps=30, eval_every=0))
    trainer.callbacks = [inject_at(policy, {11: alert(step=11)}), policy]
    result = trainer.run()
    assert result.stopped_by == "callback" and result.steps_run == 12  # the step finished, then stop
    assert policy.stopped and policy.run_status == "stopped"
    (event,) = [e for e in policy.events if e.action == "stop"]
    ckpt = tmp_path / "stopped_step_12.pt"
    assert event.detail["checkpoint"] == str(ckpt) and ckpt.is_file()
    resumed = Trainer(TrainConfig(preset="tiny", steps=30, eval_every=0))
    resumed.load_checkpoint(ckpt)
    assert resumed.step_num == 12


def test_warnings_are_logged_once_and_do_not_act(caplog):
    policy = AlertPolicy(on_warning="log", on_critical="stop")
    trainer = Trainer(TrainConfig(preset="tiny", steps=12, eval_every=0))
    warn = alert(severity="warning", rule="norm_growth")
    trainer.callbacks = [
        inject_at(policy, {3: warn, 4: dict(warn, last_step=4), 5: dict(warn, last_step=5)}),
        policy,
    ]
    policy.source = type("Src", (), {"alerts": [warn]})()  # polled open alerts repeat every step
    with caplog.at_level(logging.WARNING, logger="stabmon.actions"):
        result = trainer.run()
    assert result.stopped_by is None and result.steps_run == 12
    assert len([r for r in caplog.records if "norm_growth" in r.getMessage()]) == 1


def test_rollback_restores_the_exact_pre_warning_state():
    policy = AlertPolicy(on_critical="rollback", checkpoint_every=5, lr_factor=0.25)
    saved = {}

    def snapshot(info):  # the parameters after 10 steps, as the checkpoint should hold them
        if info.trainer.step_num == 10:
            saved.update({k: v.clone() for k, v in info.trainer.model.state_dict().items()})

    trainer = Trainer(TrainConfig(preset="tiny", steps=40, eval_every=0))
    restored = {}

    def after_rollback(info):
        if policy.rollbacks == 1 and not restored:
            restored["step"] = info.trainer.step_num
            restored["params"] = {k: v.clone() for k, v in info.trainer.model.state_dict().items()}

    # First warning at (global) step 12: the newest checkpoint that never ran step 12 is step 10.
    trainer.callbacks = [
        snapshot,
        inject_at(policy, {12: alert(step=12, last_step=13)}),
        policy,
        after_rollback,
    ]
    result = trainer.run()
    assert policy.rollbacks == 1 and restored["step"] == 10
    for k, v in saved.items():
        torch.testing.assert_close(restored["params"][k], v, rtol=0, atol=0)
    assert trainer.lr_scale == pytest.approx(0.25)
    assert result.steps_run == 40 and len(result.losses) == 40  # history follows the new lineage
    (event,) = [e for e in policy.events if e.action == "rollback"]
    assert event.detail == {
        "from_step": 13,
        "to_step": 10,
        "first_warning_step": 12,
        "lr_scale": 0.25,
        "rollback": 1,
    }


def test_alerts_about_abandoned_steps_are_ignored_after_a_rollback():
    policy = AlertPolicy(on_critical="rollback", checkpoint_every=5, max_rollbacks=5)
    trainer = Trainer(TrainConfig(preset="tiny", steps=30, eval_every=0))
    # Rollback at global step 12; then an in-flight alert about global step 12 (abandoned)
    # arrives: it must not roll back again.
    trainer.callbacks = [inject_at(policy, {12: alert(aid=1, step=12)}), policy]
    late = {"sent": False}

    def late_alert(info):
        if policy.rollbacks == 1 and not late["sent"]:
            late["sent"] = True
            policy(alert(aid=2, step=11, last_step=12))

    trainer.callbacks.append(late_alert)
    trainer.run()
    assert policy.rollbacks == 1 and late["sent"]
    assert policy.trainer_step(13) == 10  # global step 13 re-ran trainer step 10


def test_without_a_checkpoint_before_the_warning_the_fallback_applies(tmp_path):
    policy = AlertPolicy(on_critical="rollback", checkpoint_every=50, stop_dir=str(tmp_path))
    trainer = Trainer(TrainConfig(preset="tiny", steps=30, eval_every=0))
    trainer.callbacks = [inject_at(policy, {6: alert(step=4)}), policy]
    result = trainer.run()
    assert policy.rollbacks == 0 and policy.stopped and result.steps_run == 7


def test_rollbacks_are_bounded_then_after_max_rollbacks_applies(tmp_path):
    policy = AlertPolicy(on_critical="rollback", checkpoint_every=2, max_rollbacks=1, stop_dir=str(tmp_path))
    trainer = Trainer(TrainConfig(preset="tiny", steps=40, eval_every=0))
    trainer.callbacks = [inject_at(policy, {6: alert(aid=1, step=6)}), policy]
    second = {"sent": False}

    def again(info):
        if policy.rollbacks == 1 and not second["sent"] and info.step == 8:
            second["sent"] = True
            policy(alert(aid=2, step=10))  # global step 10: after the rollback

    trainer.callbacks.insert(1, again)
    result = trainer.run()
    assert policy.rollbacks == 1 and policy.stopped and result.stopped_by == "callback"


def test_on_disk_checkpoints_are_pruned(tmp_path):
    policy = AlertPolicy(
        on_critical="rollback", checkpoint_every=3, keep_checkpoints=2, checkpoint_dir=str(tmp_path)
    )
    trainer = Trainer(TrainConfig(preset="tiny", steps=20, eval_every=0), callbacks=[policy])
    trainer.run()
    assert policy.checkpoint_steps == [15, 18]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rollback_step_15.pt", "rollback_step_18.pt"]


def test_no_checkpoints_unless_an_action_can_roll_back():
    policy = AlertPolicy(on_critical="stop")
    Trainer(TrainConfig(preset="tiny", steps=10, eval_every=0), callbacks=[policy]).run()
    assert policy.checkpoint_steps == []


def test_config_validation_and_presets():
    assert PolicyConfig.named("rollback").on_critical == "rollback"
    assert PolicyConfig.named("log").on_critical == "log"
    assert policy_from("stop").config.on_critical == "stop"
    assert policy_from({"on_warning": "stop"}).config.on_warning == "stop"
    with pytest.raises(ValueError, match="unknown alert policy"):
        PolicyConfig.named("panic")
    with pytest.raises(ValueError, match="on_critical must be one of"):
        PolicyConfig(on_critical="explode")
    with pytest.raises(ValueError, match="lr_factor"):
        PolicyConfig(lr_factor=0.0)
    with pytest.raises(ValueError, match="after_max_rollbacks"):
        PolicyConfig(after_max_rollbacks="rollback")
    # An unreadable alert is logged and ignored: it never raises into the client's thread.
    AlertPolicy()(object())


def test_a_resolved_episode_does_not_pull_a_later_rollback_back():
    """A warning at step 5 that resolved long before must not make a rollback at step 30 return
    to step 5; one that came shortly before would (same episode)."""

    class OpenAlerts:  # what client.alerts returns: the currently open alerts
        alerts: list = []

    source = OpenAlerts()
    policy = AlertPolicy(
        on_critical="rollback", checkpoint_every=5, keep_checkpoints=10, episode_gap=10, source=source
    )

    def script(info):
        source.alerts = {5: [alert(aid=1, severity="warning", step=5)], 30: [alert(aid=2, step=30)]}.get(
            info.step, []
        )

    trainer = Trainer(TrainConfig(preset="tiny", steps=35, eval_every=0))
    trainer.callbacks = [script, policy]
    trainer.run()
    (event,) = [e for e in policy.events if e.action == "rollback"]
    assert event.detail["first_warning_step"] == 30 and event.detail["to_step"] == 25


def test_pushed_alerts_end_an_episode_after_episode_gap_steps():
    policy = AlertPolicy(on_critical="rollback", checkpoint_every=5, keep_checkpoints=10, episode_gap=10)
    trainer = Trainer(TrainConfig(preset="tiny", steps=40, eval_every=0))
    warn = alert(aid=1, severity="warning", step=5)
    trainer.callbacks = [inject_at(policy, {5: warn, 33: alert(aid=2, step=33)}), policy]
    trainer.run()
    (event,) = [e for e in policy.events if e.action == "rollback"]
    assert event.detail["to_step"] == 30  # not 5: the warning's episode ended at step 16
