"""Reader for TensorBoard event files: the scalars of one run's logdir, through TensorBoard's reader.

A run's directory holds one or more ``events.out.tfevents.*`` files (a resumed job starts a new
one); they are read in name order, which is creation order, with the ``tensorboard`` package's
own record reader (``RawEventFileLoader``: framing and checksums) and event protobuf, imported
only here, on first use. Scalars come as ``simple_value`` (``SummaryWriter.add_scalar``, Keras,
stabmon's own mirror) or as rank-0 numeric tensors (TF2's ``tf.summary.scalar``); histograms,
images and text are skipped and reported. A restarted job's steps go backwards in the new file;
:mod:`stabmon.history.assemble` keeps the later segment and says so. A file that ends in a
truncated or corrupted record (a job killed mid-write) is read up to it, and the note says how
many bytes were left unread.
"""

from __future__ import annotations

from pathlib import Path

from stabmon.history.assemble import assemble
from stabmon.history.model import History, HistoryError, Row
from stabmon.history.names import NameMap
from stabmon.wire import MAX_STEP

_NUMERIC_DTYPES = {1, 2, 3, 4, 5, 6, 9, 19}  # float, double, int32, uint8, int16, int8, int64, half


def is_event_file(path: Path) -> bool:
    return path.is_file() and "tfevents" in path.name


def event_files(path: Path) -> list[Path]:
    """The event files of one run: ``path`` itself, or those directly in the directory ``path``."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.iterdir() if is_event_file(p))


def _reader():
    try:
        from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.util.tensor_util import make_ndarray
    except ImportError:
        raise HistoryError(
            "reading TensorBoard event files needs the tensorboard package: "
            "pip install 'stabmon[tensorboard]' (or tensorboard)"
        ) from None
    return RawEventFileLoader, Event, make_ndarray


def read_tensorboard(path: Path, names: NameMap, *, name: str, step_column: str | None = None) -> History:
    """The scalar history of the run in ``path`` (a logdir or one event file)."""
    files = event_files(path)
    if not files:
        raise HistoryError(f"{path}: no TensorBoard event files (events.out.tfevents.*) in it")
    loader_cls, event_cls, make_ndarray = _reader()
    rows: list[Row] = []
    skipped: dict[str, str] = {}
    notes: list[str] = []
    for fi, file in enumerate(files):
        size = file.stat().st_size
        read = 0
        for ei, raw in enumerate(loader_cls(str(file)).Load()):
            read += len(raw) + 16  # length (8) + its checksum (4) + data + its checksum (4)
            try:
                event = event_cls.FromString(raw)
            except Exception as e:  # a record that passed its checksum but is no Event
                raise HistoryError(f"{file}: event {ei} is not a TensorBoard event ({e})") from None
            if not event.HasField("summary"):
                continue
            values: dict[str, float] = {}
            for v in event.summary.value:
                kind = v.WhichOneof("value")
                if kind == "simple_value":
                    values[v.tag] = v.simple_value
                elif kind == "tensor" and v.tensor.dtype in _NUMERIC_DTYPES and not v.tensor.tensor_shape.dim:
                    values[v.tag] = float(make_ndarray(v.tensor).item())
                elif v.tag not in skipped:
                    skipped[v.tag] = kind or "empty"
            if not 0 <= event.step <= MAX_STEP:
                raise HistoryError(f"{file}: event {ei}: step {event.step} is outside [0, 2**53]")
            if values:
                rows.append((event.step, values, (fi, ei, next(iter(values)))))
        if read < size:
            notes.append(
                f"{file}: the last {size - read} of {size} bytes are a truncated or corrupted record "
                "and were not read"
            )
    for tag, kind in skipped.items():
        notes.append(f"skipped tag {tag!r}: not a scalar ({kind})")

    def where(loc: tuple[int, int, str]) -> str:
        fi, ei, tag = loc
        return f"{files[fi]}: event {ei} (tag {tag!r})"

    return assemble(rows, names, name=name, source=str(path), fmt="tensorboard", where=where, notes=notes)
