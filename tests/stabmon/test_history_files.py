"""`stabmon.history` on real files that the real libraries write: TensorBoard's writer, the Hugging
Face Trainer's state, stabmon's own JSON-lines sink, and CSV/TSV exports."""

from __future__ import annotations

import json
import math

import pytest

from stabmon.history import HistoryError, discover, parse_map, read_history
from trainer_hooks.client import JsonlSink


def _tb(logdir, steps, loss=lambda s: 3.0 - 0.01 * s, extra=None):
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(logdir))
    for s in steps:
        w.add_scalar("train/loss", loss(s), s)
        w.add_scalar("train/learning_rate", 1e-3, s)
        w.add_scalar("layers/0/fc2/l2_mean", 1.0 + s, s)
        if extra:
            extra(w, s)
    w.close()


def test_tensorboard_logdir_with_a_restart_keeps_the_later_segment(tmp_path):
    pytest.importorskip("tensorboard")
    import torch

    _tb(tmp_path / "run", range(0, 30), extra=lambda w, s: s == 5 and w.add_histogram("w", torch.ones(4), s))
    # the job resumes from its step-20 checkpoint: a second event file whose steps go back
    _tb(tmp_path / "run", range(20, 40), loss=lambda s: math.nan if s == 35 else 2.0)
    h = read_history(tmp_path / "run")
    assert (h.name, h.format) == ("run", "tensorboard")
    assert h.keys == ["layer.0.fc2.l2_mean", "loss", "lr"]
    steps, losses = h.series("loss")
    assert steps == list(range(40))
    assert losses[19] == pytest.approx(3.0 - 0.19) and losses[20] == 2.0 and math.isnan(losses[35])
    assert h.restarts == 1 and h.non_finite == 1
    text = "\n".join(h.notes)
    assert "went back from step 29 to 20" in text and "dropped 30 earlier values" in text
    assert "tfevents" in text  # the restart names the file and event
    assert "skipped tag 'w': not a scalar" in text
    assert "train/loss -> loss" in text and "layers/0/fc2/l2_mean -> layer.0.fc2.l2_mean" in text


def test_tensorboard_truncated_file_is_read_up_to_the_damage_and_says_so(tmp_path):
    pytest.importorskip("tensorboard")
    _tb(tmp_path / "run", range(10))
    (event,) = (tmp_path / "run").iterdir()
    event.write_bytes(event.read_bytes()[:-7])
    h = read_history(tmp_path / "run")
    # the last record written was step 9's layer norm: it alone is lost
    assert h.series("loss")[0] == list(range(10)) and h.series("layer.0.fc2.l2_mean")[0] == list(range(9))
    assert any("truncated or corrupted record" in n for n in h.notes)


def test_hf_trainer_state_log_history(tmp_path):
    from transformers import TrainerState

    log = [{"epoch": 0.1 * s, "grad_norm": 1.5, "learning_rate": 1e-4, "loss": 4.0 - 0.1 * s, "step": s}
           for s in range(1, 6)]  # fmt: skip
    log.insert(3, {"eval_loss": 3.5, "eval_runtime": 0.2, "step": 3})
    log.append({"train_runtime": 12.5, "train_loss": 3.8, "total_flos": 1e9, "step": 5})
    state = TrainerState(global_step=5, max_steps=5, logging_steps=1, log_history=log)
    ckpt = tmp_path / "my-run" / "checkpoint-5"
    ckpt.mkdir(parents=True)
    state.save_to_json(str(ckpt / "trainer_state.json"))

    (path,) = discover([tmp_path])
    h = read_history(path)
    assert (h.name, h.format) == ("my-run", "hf_trainer_state")
    assert h.records[2] == (3, {"epoch": pytest.approx(0.3), "grad_norm": 1.5, "lr": 1e-4, "loss": 3.7,
                                "val_loss": 3.5, "eval_runtime": 0.2})  # fmt: skip
    assert h.config["max_steps"] == 5 and h.config["trainer_summary"]["train_loss"] == 3.8
    assert "train_loss" not in h.keys
    assert any("kept in the run's config as trainer_summary" in n for n in h.notes)


def test_csv_export_maps_names_skips_text_and_keeps_unknown_columns(tmp_path):
    path = tmp_path / "wandb_export.csv"
    path.write_text(
        "_step,train/loss,train/grad_norm,run name,tokens per s,_runtime\n"
        "0,5.5,2.0,a,100,1.0\n"
        "1,5.0,,a,101,2.0\n"
        "2,nan,inf,a,,3.0\n"
        "2,4.9,1.0,a,99,3.5\n"
        "10,4.0,1.0,a,98,4.0\n"
    )
    h = read_history(path, names={"tokens per s": "throughput"})
    assert h.keys == ["grad_norm", "loss", "throughput"]
    assert h.records[1] == (1, {"loss": 5.0, "throughput": 101.0})  # an empty cell is a missing value
    assert h.records[2] == (2, {"loss": 4.9, "grad_norm": 1.0, "throughput": 99.0})
    assert h.duplicates == 2 and h.non_finite == 2
    text = "\n".join(h.notes)
    assert "skipped column 'run name': not numeric" in text and "skipped '_runtime'" in text
    assert "logged twice at the same step (first at " + str(path) + ":5)" in text
    assert "gap" in text and "from step 2 to 10" in text


def test_tsv_and_cleaned_keys(tmp_path):
    path = tmp_path / "log.tsv"
    path.write_text("iteration\tlm loss\tval/ppl@1k\n1\t3.0\t20\n2\t2.9\t19\n")
    h = read_history(path)
    assert h.format == "tsv" and h.keys == ["loss", "val.ppl_1k"]
    assert any("val/ppl@1k -> val.ppl_1k" in n for n in h.notes)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("step,loss\n0,1.0\n1,oops\n", ":3: column 'loss': 'oops' is not a number"),
        ("0,1.0\n1,2.0\n", ":1: no header row"),
        ("epoch_idx,loss\n0,1.0\n", ":1: no step column among 'epoch_idx', 'loss'"),
        ("step,loss\n0,1.0,7\n", ":2: 3 cells where the header has 2"),
        ("step,loss\n0.5,1.0\n", ":2: step '0.5' is not a whole number"),
        ("step,loss,train/loss\n0,1.0,2.0\n", "'train/loss' and 'loss' both map to the series 'loss'"),
        ("", "the file is empty"),
        ("step,loss,loss\n0,1.0,2.0\n", ":1: column 'loss' appears twice in the header"),
    ],
)
def test_bad_csv_is_a_clear_error_naming_file_and_line(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(HistoryError) as e:
        read_history(path)
    assert str(e.value).startswith(str(path)) and message in str(e.value)


def test_stabmons_own_jsonl_and_flat_objects(tmp_path):
    sink = JsonlSink(tmp_path / "run.jsonl")
    sink.write({"step": 0, "rank": 0, "values": {"loss": 5.0, "layer.1.qkv.l2_max": 2.0}})
    sink.write({"step": 0, "rank": 1, "values": {"loss": 5.1}})
    sink.write({"step": 1, "rank": 0, "values": {"loss": float("inf")}})
    sink.close()
    with open(tmp_path / "run.jsonl", "a") as f:
        f.write('{"step": 2, "rank": 0, "val')  # killed mid-line
    h = read_history(tmp_path / "run.jsonl")
    assert h.records[0] == (0, {"loss": 5.0, "layer.1.qkv.l2_max": 2.0})
    assert math.isinf(h.records[1][1]["loss"]) and len(h.records) == 2
    assert any("ranks other than 0" in n for n in h.notes)
    assert any("truncated last line" in n for n in h.notes)

    flat = tmp_path / "flat.jsonl"
    flat.write_text(
        json.dumps({"global_step": 1, "train": {"loss": 3.0, "lr": 0.1}, "note": "hi"}) + "\n"
        '{"global_step": 2, "train": {"loss": NaN, "lr": 0.1}}\n'
    )
    h = read_history(flat)
    assert h.keys == ["loss", "lr"] and math.isnan(h.records[1][1]["loss"])
    assert any("skipped field 'note'" in n for n in h.notes)


def test_bad_jsonl_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"step": 0, "loss": 1}\n{"step": 1, loss}\n{"step": 2, "loss": 1}\n')
    with pytest.raises(HistoryError, match=r"bad.jsonl:2: not JSON"):
        read_history(path)
    path.write_text('{"loss": 1}\n')
    with pytest.raises(HistoryError, match=r"bad.jsonl:1: no step field"):
        read_history(path)


def test_paths_that_are_not_runs(tmp_path):
    with pytest.raises(HistoryError, match="no such file"):
        read_history(tmp_path / "nope.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(HistoryError, match="no TensorBoard event files or trainer_state.json under it"):
        discover([tmp_path / "empty"])
    (tmp_path / "state.json").write_text('{"global_step": 3}')
    with pytest.raises(HistoryError, match="neither a Hugging Face trainer_state.json"):
        read_history(tmp_path / "state.json")
    with pytest.raises(HistoryError, match="--map 'x=1bad'"):
        read_history(tmp_path / "state.json", names=parse_map(["x=1bad"]))


def test_name_table_patterns_and_explicit_map():
    from stabmon.history import NameMap

    names = NameMap(parse_map(["junk=-", "train/ppl=ppl"]))
    assert [names.key(s) for s in ("lm_loss", "learning_rate", "eval/loss", "Train/Grad_Norm")] == [
        "loss", "lr", "val_loss", "grad_norm",
    ]  # fmt: skip
    assert names.key("blocks.11.attn.logit_max") == "layer.11.attn.logit_max"
    assert names.key("stabmon/layer.2.qkv.l2_mean") == "layer.2.qkv.l2_mean"
    assert names.key("layer.2.qkv.l2_max") == "layer.2.qkv.l2_max"
    assert names.key("rank1/loss") is None and names.key("junk") is None and names.key("Wall time") is None
    assert names.key("train/ppl") == "ppl" and names.key("3rd/metric") == "_3rd.metric"
    text = "\n".join(names.notes())
    assert "skipped 'junk': skipped by --map" in text and "rank 1's series" in text
    assert "3rd/metric -> _3rd.metric" in text
