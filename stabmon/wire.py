"""The wire contract between the training side and the collector.

Both sides import these definitions (pydantic only, no torch, no web stack), so
the payload schema, the series-key grammar and the non-finite encoding cannot drift.

Series keys
-----------
Every statistic is one series, named by a dotted key:

- ``layer.{i}.{site}.{stat}``: a per-layer statistic. ``site`` is one of
  :data:`SITES` (``qkv``, ``q``, ``k``, ``v``, ``proj``, ``fc1``, ``fc2``, ``attn``);
  ``stat`` is e.g. ``l2_mean``, ``l2_max``, ``logit_max``, ``logit_bound``, ``entropy_mean``.
  Example: ``layer.3.fc2.l2_mean``, ``layer.0.attn.logit_max``.
- a run-level name without a layer: ``loss``, ``lr``, ``grad_norm``, ``val_loss``, or
  anything the user passes to ``monitor.step(**extra)`` (``tokens_per_s``, ...).

Training-side signals beyond the output norms (see the block "Signals" below):

- ``layer.{i}.{site}.grad_norm`` / ``param_norm``: L2 norm of the gradient / of the parameters
  (weight and bias) of a site's module; sites are the projections above and the block's norm
  layers :data:`NORM_SITES` (``attn_norm``, ``mlp_norm``, ``qkv_norm``, ``q_norm``, ``k_norm``,
  ``proj_norm``, ``fc2_norm``), whose parameters are their gains.
- ``layer.{i}.{site}.update_rms``: Adam's ``sqrt(mean((g / (sqrt(v_hat) + eps))^2))`` over the
  site's parameters (about 1 in steady state, larger when a gradient outgrows its running second
  moment); ``layer.{i}.{site}.update_ratio``: ``||delta w|| / ||w||`` of the step just taken.
- ``layer.{i}.attn.entropy_min_head``: the smallest per-head mean attention entropy (one head
  collapsing); ``layer.{i}.resid.max_abs``: the largest |x| of the residual stream after block i.
- run-level ``lm_head.logit_max_abs``, ``lm_head.logz_mean``, ``lm_head.logz_max`` (the LM head's
  largest |logit| and the mean and max log-partition ``logsumexp`` over sampled positions), and
  ``final_norm.{stat}`` (the final normalisation's gain, with the same stats as a site).

Keys match :data:`KEY_PATTERN`: ASCII letters, digits and ``_``, in dot-separated parts,
at most :data:`MAX_KEY_LEN` characters.

Values
------
JSON has no NaN or infinity, and a diverging run produces both; they are data, not
errors. A value is a JSON number, or one of the strings ``"nan"``, ``"inf"``, ``"-inf"``.
:func:`encode_value` and :func:`decode_value` convert between floats and that form.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal, Protocol, TypedDict, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, field_validator

# ---------------------------------------------------------------------------
# Limits. They are part of the contract: the collector rejects anything beyond
# them with a 4xx that names the limit, and the client never builds a batch past them.
# ---------------------------------------------------------------------------
MAX_KEY_LEN = 128
MAX_VALUES_PER_POINT = 2048
MAX_POINTS_PER_BATCH = 10_000
MAX_BATCH_ID_LEN = 128
MAX_NAME_LEN = 200
MAX_STEP = 2**53  # exact in a float64 / JSON number

KEY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$"
_KEY_RE = re.compile(KEY_PATTERN)
_LAYER_KEY_RE = re.compile(r"^layer\.(\d+)\.([A-Za-z0-9_]+)\.([A-Za-z0-9_]+)$")

SITES = ("qkv", "q", "k", "v", "proj", "fc1", "fc2", "attn")
"""Sites of a transformer block that stabmon monitors (``attn`` carries logit/entropy stats)."""

NonFinite = Literal["nan", "inf", "-inf"]
WireValue = StrictFloat | StrictInt | NonFinite


def encode_value(x: float) -> float | str:
    """A float as it travels: finite floats unchanged, NaN/inf as strings."""
    if math.isfinite(x):
        return float(x)
    if math.isnan(x):
        return "nan"
    return "inf" if x > 0 else "-inf"


def decode_value(v: float | int | str) -> float:
    """The inverse of :func:`encode_value`."""
    if isinstance(v, str):
        if v not in ("nan", "inf", "-inf"):
            raise ValueError(f"not a number or one of 'nan', 'inf', '-inf': {v!r}")
        return float(v)
    return float(v)


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float (in mappings, lists and tuples, at any depth) as
    the wire's strings, so it is valid JSON (PostgreSQL's json type, HTTP bodies and
    ``json.dumps(allow_nan=False)`` all reject NaN tokens). Mapping keys become strings."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else encode_value(obj)
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def is_valid_key(key: str) -> bool:
    return len(key) <= MAX_KEY_LEN and _KEY_RE.match(key) is not None


def layer_key(layer: int, site: str, stat: str) -> str:
    """``layer.{layer}.{site}.{stat}``: the one place a per-layer key is built."""
    return f"layer.{layer}.{site}.{stat}"


def match_layer_key(key: str) -> tuple[int, str, str] | None:
    """``(layer, site, stat)`` of a per-layer key, None for a run-level one: the one place a
    key is taken apart (the store's series columns, the detector's per-layer rules)."""
    m = _LAYER_KEY_RE.match(key)
    return None if m is None else (int(m.group(1)), m.group(2), m.group(3))


# ---------------------------------------------------------------------------
# Signals: names of the training side's gradient, optimizer, residual-stream and LM-head
# series (documented in the module docstring). Kept in this one block.
# ---------------------------------------------------------------------------
NORM_SITES = ("attn_norm", "mlp_norm", "qkv_norm", "q_norm", "k_norm", "proj_norm", "fc2_norm")
"""A block's normalisation layers: only their parameters are monitored."""
RESID_SITE = "resid"
"""The residual stream after a block (``layer.{i}.resid.max_abs``)."""
PARAM_STATS = ("grad_norm", "param_norm", "update_rms", "update_ratio")
"""Per-site parameter-side statistics."""
LM_HEAD_STATS = ("logit_max_abs", "logz_mean", "logz_max")
"""Run-level statistics of the LM head's logits (``lm_head.{stat}``)."""


def model_key(part: str, stat: str) -> str:
    """``{part}.{stat}``: a run-level statistic of a model-level module (``lm_head``, ``final_norm``)."""
    return f"{part}.{stat}"


# ---------------------------------------------------------------------------


class SeriesKey(BaseModel):
    """A parsed series key: ``layer``/``site`` are None for run-level keys."""

    model_config = ConfigDict(frozen=True)

    key: str
    layer: int | None = None
    site: str | None = None
    stat: str


def parse_key(key: str) -> SeriesKey:
    """Split a key into (layer, site, stat). Raises ValueError on a malformed key."""
    if not is_valid_key(key):
        raise ValueError(
            f"invalid series key {key!r}: keys are dot-separated [A-Za-z0-9_] parts, "
            f"starting with a letter or '_', at most {MAX_KEY_LEN} characters"
        )
    parts = match_layer_key(key)
    if parts is not None:
        return SeriesKey(key=key, layer=parts[0], site=parts[1], stat=parts[2])
    return SeriesKey(key=key, stat=key)


# ---------------------------------------------------------------------------
# Records: what the training side produces per step, and where it goes
# ---------------------------------------------------------------------------
class Record(TypedDict):
    """One rank's statistics at one step, as the hooks hand it to a sink and the client
    batches it into :class:`Point` s (``values``: key -> float, non-finite allowed)."""

    step: int
    rank: int
    values: dict[str, float]


@runtime_checkable
class Sink(Protocol):
    """Where records go: the collector client, a memory or JSON-lines sink, a fan-out, a
    TensorBoard mirror. ``write`` must never block or raise into training."""

    def write(self, record: Record) -> None: ...
    def flush(self, timeout: float | None = None) -> None: ...
    def close(self) -> None: ...


# ---------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------
RunStatus = Literal["running", "finished", "diverged", "stopped"]


class RunCreate(BaseModel):
    """``POST /api/v1/runs``: register a run. The project comes from the token;
    ``project``, when given, must match it."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    """Optional client-chosen id, unique within the token's project (another project may use
    the same id for its own run). Registering the same id again (a retry whose answer was
    lost) returns the existing run instead of creating a second one."""
    name: str = Field(min_length=1, max_length=MAX_NAME_LEN)
    project: str | None = Field(default=None, min_length=1, max_length=MAX_NAME_LEN)
    config: dict[str, Any] = Field(default_factory=dict)
    """Anything the trainer passes: variant, lr, model size, preset, seed, ..."""


class RunUpdate(BaseModel):
    """``PATCH /api/v1/runs/{run_id}``: close a run, or record its outcome."""

    model_config = ConfigDict(extra="forbid")

    status: RunStatus | None = None
    summary: dict[str, Any] | None = None


class RunPublic(BaseModel):
    id: str
    name: str
    project: str
    status: RunStatus
    config: dict[str, Any]
    summary: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    updated_at: datetime
    last_step: int | None = None
    open_alerts: int = 0


# ---------------------------------------------------------------------------
# Points
# ---------------------------------------------------------------------------
class Point(BaseModel):
    """All values of one training step on one rank."""

    model_config = ConfigDict(extra="forbid")

    step: StrictInt = Field(ge=0, le=MAX_STEP)
    rank: StrictInt = Field(default=0, ge=0, le=65_535)
    values: dict[str, WireValue] = Field(max_length=MAX_VALUES_PER_POINT)

    @field_validator("values")
    @classmethod
    def _keys_follow_grammar(cls, values: dict[str, Any]) -> dict[str, Any]:
        for key in values:
            if not is_valid_key(key):
                raise ValueError(
                    f"invalid series key {key[: MAX_KEY_LEN + 8]!r}: keys are dot-separated "
                    f"[A-Za-z0-9_] parts, at most {MAX_KEY_LEN} characters (limit: key length/charset)"
                )
        return values


class PointsIn(BaseModel):
    """``POST /api/v1/runs/{run_id}/points``. Idempotent by ``batch_id``: a batch the
    collector already stored is acknowledged again and not stored twice."""

    model_config = ConfigDict(extra="forbid")

    batch_id: str = Field(min_length=1, max_length=MAX_BATCH_ID_LEN)
    points: list[Point] = Field(max_length=MAX_POINTS_PER_BATCH)


# ---------------------------------------------------------------------------
# Alerts
# ---------------------------------------------------------------------------
Severity = Literal["warning", "critical"]
SEVERITY_RANK: dict[str, int] = {"warning": 1, "critical": 2}
"""The one severity order: higher is worse (the detector's internal levels use these numbers)."""


def severity_rank(severity: str | None) -> int:
    """:data:`SEVERITY_RANK` of ``severity``; 0 for None or an unknown name."""
    return SEVERITY_RANK.get(severity, 0) if severity is not None else 0


AlertStatus = Literal["open", "resolved"]


class AlertPublic(BaseModel):
    id: int
    run_id: str
    rule: str
    severity: Severity
    status: AlertStatus
    step: int
    """The step at which the alert first fired."""
    last_step: int
    """The latest step at which its condition held."""
    message: str
    """Human-readable evidence, e.g. 'layer.3.fc2.l2_mean grew 40x in 25 steps'."""
    evidence: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    updated_at: datetime


class IngestResponse(BaseModel):
    """The answer to a points batch; carries the run's open alerts back to the job, then the alerts
    this batch resolved (status ``resolved``), including any that opened and resolved within it."""

    batch_id: str
    accepted: int
    """Points stored by this request (0 for a duplicate batch)."""
    duplicate: bool = False
    alerts: list[AlertPublic] = Field(default_factory=list)


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: ``{"detail": "..."}`` (FastAPI's shape)."""

    detail: Any
