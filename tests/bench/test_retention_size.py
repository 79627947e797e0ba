"""The retention size measurement (docs/retention.md) on a tiny run: it deletes every point and
the vacuumed file is smaller than the one as written."""

from bench.retention_size import measure


def test_measure_on_a_tiny_run(tmp_path):
    out = measure(series=8, steps=400, workdir=tmp_path)
    assert out["values"] == out["points_deleted"] == 3200 and out["batches_deleted"] == 4
    assert out["bytes_after_prune"] == out["bytes_before"]  # freed pages stay until VACUUM
    assert out["bytes_after_vacuum"] < out["bytes_before"]
    assert out["bytes_per_value_after"] < out["bytes_per_value_before"]
