"""The on-disk spool: order, acks, reload, torn lines, rejection, the size bound and thinning."""

import json

import pytest

from trainer_hooks.client.batching import seal
from trainer_hooks.client.spool import Spool, SpoolInUseError


def _batch(steps, ranks=(0,), size=1):
    pts = [
        json.dumps({"step": s, "rank": r, "values": {f"k{i}": float(s) for i in range(size)}})
        for s in steps
        for r in ranks
    ]
    return seal(pts)


def test_fifo_ack_and_truncate_when_empty(tmp_path):
    sp = Spool(tmp_path, "run.0")
    b1, b2 = _batch([0]), _batch([1])
    assert (sp.append(b1), sp.append(b2)) == (1, 2)
    assert sp.pending_batches == 2 and sp.pending_points == 2
    head = sp.peek()
    assert head[0] == b1.batch_id and json.loads(head[1])["points"][0]["step"] == 0
    assert sp.done_through() == 0
    assert sp.ack(b1.batch_id) and sp.done_through() == 1
    assert sp.peek()[0] == b2.batch_id
    assert sp.ack(b2.batch_id) and sp.path.stat().st_size == 0
    assert not sp.ack(b2.batch_id)
    sp.close()
    assert list(tmp_path.iterdir()) == []  # an empty spool leaves nothing behind


def test_reload_replays_unacked_in_order(tmp_path):
    sp = Spool(tmp_path, "run.0")
    bs = [_batch([i]) for i in range(4)]
    for b in bs:
        sp.append(b)
    sp.ack(bs[0].batch_id)
    sp.close()
    sp2 = Spool(tmp_path, "run.0")
    got = []
    while (h := sp2.peek()) is not None:
        got.append(h[0])
        sp2.ack(h[0])
    assert got == [b.batch_id for b in bs[1:]]
    sp2.close()


def test_torn_and_corrupt_lines_are_ignored_on_load(tmp_path):
    sp = Spool(tmp_path, "r.0")
    b = _batch([7])
    sp.append(b)
    sp.close()
    with open(sp.path, "ab") as f:
        f.write(b"garbage\n" + _batch([8]).body.encode()[:20])  # corrupt line + torn write
    sp2 = Spool(tmp_path, "r.0")
    assert sp2.corrupt_lines == 1 and sp2.pending_batches == 1 and sp2.peek()[0] == b.batch_id
    sp2.close()


def test_second_spool_on_the_same_file_is_refused(tmp_path):
    sp = Spool(tmp_path, "r.0")
    with pytest.raises(SpoolInUseError, match="in use"):
        Spool(tmp_path, "r.0")
    sp.close()
    Spool(tmp_path, "r.0").close()


def test_reject_moves_the_batch_with_its_reason(tmp_path):
    sp = Spool(tmp_path, "r.0")
    b = _batch([1, 2])
    sp.append(b)
    sp.reject(b.batch_id, sp.peek()[1], 422, "bad key")
    assert sp.pending_batches == 0
    rec = json.loads(sp.rejected_path.read_text())
    assert rec["status"] == 422 and rec["detail"] == "bad key" and rec["body"]["batch_id"] == b.batch_id
    assert [p["step"] for p in rec["body"]["points"]] == [1, 2]
    sp.close()


def test_ack_lines_are_compacted(tmp_path):
    sp = Spool(tmp_path, "r.0")
    bs = [_batch([i], size=200) for i in range(400)]
    for b in bs:
        sp.append(b)
    for b in bs[:-1]:
        sp.ack(b.batch_id)
    # Dead bytes were rewritten away well before the file reached the sum of all batches.
    assert sp.path.stat().st_size < 1024 * 1024 + 2 * sp.pending_bytes + 10_000
    assert sp.peek()[0] == bs[-1].batch_id
    sp.close()


def test_full_spool_thins_oldest_steps_keeps_newest_and_counts(tmp_path):
    one = len(_batch(range(10), ranks=(0, 1), size=20).body) + 1
    sp = Spool(tmp_path, "r.0", max_bytes=6 * one)
    written = 0
    for k in range(20):
        sp.append(_batch(range(10 * k, 10 * k + 10), ranks=(0, 1), size=20))
        written += 20
        assert sp.pending_bytes <= 6 * one
    assert sp.thinned_points > 0
    assert sp.pending_points + sp.thinned_points == written
    pts = []
    while (h := sp.peek()) is not None:
        pts += json.loads(h[1])["points"]
        sp.ack(h[0])
    steps = [p["step"] for p in pts]
    assert steps == sorted(steps)  # still in order
    # The newest batch is complete, both ranks of every kept step survive together,
    # and old history is sparser than recent history.
    assert set(range(190, 200)) <= set(steps)
    assert all(steps.count(s) == 2 for s in set(steps))
    old = [s for s in set(steps) if s < 100]
    assert 0 < len(old) < 50
    sp.close()


def test_a_single_batch_over_the_bound_is_kept(tmp_path):
    sp = Spool(tmp_path, "r.0", max_bytes=10)
    b1, b2 = _batch([0]), _batch([1])
    sp.append(b1)
    sp.append(b2)  # the oldest single-step segment is dropped, the newest never
    assert sp.pending_batches == 1 and sp.peek()[0] == b2.batch_id and sp.thinned_points == 1
    sp.close()


def test_bound_applies_on_reload(tmp_path):
    sp = Spool(tmp_path, "r.0")
    for i in range(10):
        sp.append(_batch(range(10 * i, 10 * i + 10)))
    total = sp.pending_bytes
    sp.close()
    sp2 = Spool(tmp_path, "r.0", max_bytes=total // 2)
    assert sp2.pending_bytes <= total // 2 and sp2.thinned_points > 0
    sp2.close()


@pytest.mark.parametrize("kw", [{"max_bytes": 0}, {"keep_every": 1}])
def test_bad_settings_are_refused(tmp_path, kw):
    with pytest.raises(ValueError):
        Spool(tmp_path, "r.0", **kw)


def test_split_replaces_a_batch_by_two_halves_in_place(tmp_path):
    sp = Spool(tmp_path, "r.0")
    b1, b2 = _batch(range(5)), _batch([9])
    sp.append(b1)
    sp.append(b2)
    assert sp.split(b1.batch_id) and not sp.split(b2.batch_id)
    heads = []
    while (h := sp.peek()) is not None:
        heads.append([p["step"] for p in json.loads(h[1])["points"]])
        assert sp.done_through() == (0 if len(heads) < 3 else 1)
        sp.ack(h[0])
    assert heads == [[0, 1], [2, 3, 4], [9]]
    sp.close()


def test_a_status_update_is_delivered_after_the_batches_before_it_and_survives_reload(tmp_path):
    sp = Spool(tmp_path, "r.0")
    b1, b2 = _batch([0]), _batch([1])
    sp.append(b1)
    sp.append(b2)
    seq = sp.append_update({"status": "finished", "summary": {"loss": 1.5}})
    assert seq == 3 and sp.pending_batches == 3 and sp.pending_points == 2 and sp.pending_updates == 1
    sp.close()
    sp2 = Spool(tmp_path, "r.0")  # a later process
    assert sp2.pending_updates == 1
    heads = []
    while (h := sp2.peek()) is not None:
        heads.append((h.kind, json.loads(h.body)))
        sp2.ack(h.batch_id)
    assert [k for k, _ in heads] == ["points", "points", "update"]
    assert heads[2][1] == {"status": "finished", "summary": {"loss": 1.5}}  # the PATCH body itself
    assert sp2.pending_updates == 0 and sp2.done_through() == 3
    sp2.close()
    assert list(tmp_path.iterdir()) == []


def test_thinning_never_drops_a_status_update_nor_the_newest_batch(tmp_path):
    one = len(_batch(range(10), size=20).body) + 1
    sp = Spool(tmp_path, "r.0", max_bytes=4 * one)
    for k in range(6):
        sp.append(_batch(range(10 * k, 10 * k + 10), size=20))
    sp.append_update({"status": "stopped"})
    newest = _batch(range(60, 70), size=20)
    sp.append(newest)
    sp.close()
    # Reloaded with a bound the update cannot help meet: batches thin, the update stays.
    sp2 = Spool(tmp_path, "r.0", max_bytes=one)
    assert sp2.thinned_points > 0 and sp2.pending_updates == 1
    kinds, steps = [], []
    while (h := sp2.peek()) is not None:
        kinds.append(h.kind)
        if h.kind == "points":
            steps += [p["step"] for p in json.loads(h.body)["points"]]
        sp2.ack(h.batch_id)
    assert kinds[-2:] == ["update", "points"] and kinds.count("update") == 1
    assert steps[-10:] == list(range(60, 70))  # the newest batch is whole
    sp2.close()


def test_a_status_update_is_never_split_and_is_rejected_with_its_body(tmp_path):
    sp = Spool(tmp_path, "r.0")
    sp.append_update({"status": "diverged"})
    h = sp.peek()
    assert not sp.split(h.batch_id)
    sp.reject(h.batch_id, h.body, 422, "bad status")
    rec = json.loads(sp.rejected_path.read_text())
    assert rec["body"] == {"status": "diverged"} and sp.pending_updates == 0
    sp.close()
