"""Hook overhead: training-step time of the ``small`` preset with and without stabmon's hooks.

One step = forward + backward + AdamW step (+ ``monitor.step(loss=...)`` where a monitor is
attached), batch and context from the preset's defaults. Every configuration has its own copy of
the same initial model, optimizer and (where monitored) monitor, built once; they are measured
in one run, interleaved round-robin with the order rotating every round, so machine noise and
drift hit all of them alike. Each round gives every configuration's mean step time over
``--steps`` steps and its ratio to the unmonitored configuration of the same mode (eager or
compiled) in that round; the overhead is the median of those ratios.

- ``none``: no hooks.
- ``all``: ``attach(optimizer=opt, update_stats=True)`` with every statistic (output norms,
  sampled attention logit max and entropy with the per-head minimum and the q/k bound, residual
  max-abs, LM-head log Z, per-site gradient/parameter norms, Adam update RMS and ratio), every=1.
- ``all_every10``: the same with ``every=10``.
- ``full_map``: ``attn_rows=None``: the exact (B, nh, T, T) attention statistics (the pre-sampling
  design, opt-in), every=1.
- ``compiled_none`` / ``compiled_all``: ``none`` / ``all`` with the model under ``torch.compile``
  (``--compile``; the monitor is attached before compiling).

Prints the table and writes the "Hook overhead" section of docs/benchmarks.md; the last lines
printed are the overhead per configuration.
Usage: ``python bench/hook_overhead.py [--rounds 9] [--steps 10] [--threads 1] [--compile]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from trainer_hooks.client import MemorySink
from trainer_hooks.hooks import attach
from trainer_hooks.lab.config import preset, preset_defaults
from trainer_hooks.lab.model import GPT

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make `bench.*` importable
    sys.path.insert(0, str(ROOT))
from bench.report import BENCHMARKS_MD, write_section  # noqa: E402

EAGER = ("none", "all", "all_every10", "full_map")
COMPILED = ("compiled_none", "compiled_all")


class Config:
    """One measured configuration: its own model, optimizer and monitor, built once."""

    def __init__(self, name: str, device: str) -> None:
        torch.manual_seed(0)
        cfg = preset("small")
        self.name = name
        self.model = GPT(cfg).to(device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.sink = MemorySink()
        self.mon = None
        if name != "none" and name != "compiled_none":
            every = 10 if name == "all_every10" else 1
            rows = None if name == "full_map" else 16
            self.mon = attach(
                self.model, sink=self.sink, optimizer=self.opt, every=every, attn_rows=rows, update_stats=True
            )
        self.fwd = torch.compile(self.model) if name.startswith("compiled") else self.model

    def step(self, batch) -> None:
        x, y = batch
        _, loss = self.fwd(x, y)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.mon is not None:
            self.mon.step(loss=loss)


def measure(conf: Config, batch, steps: int, sync) -> tuple[float, float]:
    """Mean (wall, process CPU) seconds per training step of ``steps`` steps."""
    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        conf.step(batch)
    sync()
    return (time.perf_counter() - t0) / steps, (time.process_time() - c0) / steps


def components(device: str, reps: int = 40) -> list[tuple[str, int, float]]:
    """In-cache cost of each statistic on the ``small`` preset's tensors: ``(name, calls per step,
    process-CPU ms per call)`` (median of ``reps``). The in-training cost is higher: there the
    tensors come from memory, not cache."""
    from trainer_hooks.hooks.stats import (
        head_entropy,
        lm_head_sampled,
        max_abs,
        probe_logit_max,
        qk_logit_bound,
        strided_positions,
        token_l2,
    )

    cfg, train = preset("small"), preset_defaults("small")
    B, T, d, nh, L = train.batch_size, cfg.block_size, cfg.n_embd, cfg.n_head, cfg.n_layer
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(1, nh, 16, T, generator=gen).to(device)  # sampled rows
    p = torch.softmax(z, dim=-1)
    q = torch.randn(B, nh, T, d // nh, generator=gen).to(device)
    logits = torch.randn(B, T, cfg.vocab_size, generator=gen).to(device)
    counter = torch.zeros((), dtype=torch.long, device=device)
    model = GPT(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for prm in model.parameters():
        prm.grad = torch.randn_like(prm)
    opt.step()
    from trainer_hooks.hooks.accumulate import StepAccumulator

    mon = attach(model, optimizer=opt, update_stats=True)
    params, acc = mon._params, StepAccumulator()
    x1, x3, x4 = (torch.randn(B, T, k * d, generator=gen).to(device) for k in (1, 3, 4))
    cases = [
        ("token_l2 qkv (B*T, 3d)", L, lambda: token_l2(x3)),
        ("token_l2 proj/fc2 (B*T, d)", 2 * L, lambda: token_l2(x1)),
        ("token_l2 fc1 (B*T, 4d)", L, lambda: token_l2(x4)),
        ("max_abs residual (B*T, d)", L, lambda: max_abs(x1)),
        ("sampled logit max (nh, 16, T)", L, lambda: probe_logit_max(z)),
        ("sampled entropy, mean and head min (nh, 16, T)", L, lambda: head_entropy(p)),
        ("q/k bound (B, nh, T, hs) x 2", L, lambda: qk_logit_bound(q, q, 0.2)),
        (
            "LM head log Z, 64 positions",
            1,
            lambda: lm_head_sampled(logits, strided_positions(counter, B * T, 64)),
        ),
        (
            "grad norm (all parameters)",
            1,
            lambda: torch.nn.utils.get_total_norm(list(mon._grads_list()), 2.0, False),
        ),
        ("parameter statistics incl. Adam (all sites)", 1, lambda: (params.add(acc, opt), acc.clear())),
    ]
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    out = []
    for name, calls, fn in cases:
        fn()
        ts = []
        for _ in range(reps):
            sync()
            c0 = time.process_time() if device == "cpu" else time.perf_counter()
            fn()
            sync()
            ts.append((time.process_time() if device == "cpu" else time.perf_counter()) - c0)
        out.append((name, calls, statistics.median(ts) * 1e3))
    mon.remove()
    return out


def run(rounds: int, steps: int, device: str, configs: tuple[str, ...]) -> dict[str, dict[str, list[float]]]:
    """``{"wall"|"cpu": {config: [seconds per step, one per round]}}``."""
    cfg, train = preset("small"), preset_defaults("small")
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, cfg.vocab_size, (train.batch_size, cfg.block_size), generator=gen).to(device)
    batch = (x, torch.roll(x, -1, dims=1))
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    confs = {c: Config(c, device) for c in configs}
    for conf in confs.values():  # warm-up: allocator, first-call dispatch, compilation
        for _ in range(3):
            conf.step(batch)
    times: dict[str, dict[str, list[float]]] = {
        "wall": {c: [] for c in configs},
        "cpu": {c: [] for c in configs},
    }
    for r in range(rounds):
        order = configs[r % len(configs) :] + configs[: r % len(configs)]
        for c in order:
            wall, cpu = measure(confs[c], batch, steps, sync)
            times["wall"][c].append(wall)
            times["cpu"][c].append(cpu)
        print(
            f"round {r + 1}/{rounds} (wall/cpu ms): "
            + "  ".join(
                f"{c}={times['wall'][c][-1] * 1e3:.0f}/{times['cpu'][c][-1] * 1e3:.0f}" for c in configs
            ),
            flush=True,
        )
    for conf in confs.values():
        if conf.mon is not None:
            conf.mon.remove()
            assert conf.mon.every > 1 or len(conf.sink.records) == 3 + rounds * steps, "monitor lost records"
    return times


def base_of(config: str) -> str:
    return "compiled_none" if config.startswith("compiled") else "none"


def ratios(times: dict[str, list[float]], config: str) -> list[float]:
    """Per-round ratio of ``config`` to its unmonitored baseline (same round)."""
    return [a / b for a, b in zip(times[config], times[base_of(config)], strict=True)]


LABELS = {
    "none": "no hooks",
    "all": "every statistic, every=1",
    "all_every10": "every statistic, every=10",
    "full_map": "every statistic, every=1, exact full attention map (`attn_rows=None`)",
    "compiled_none": "`torch.compile`, no hooks",
    "compiled_all": "`torch.compile`, every statistic, every=1",
}


def section(
    times: dict[str, dict[str, list[float]]],
    comps: list[tuple[str, int, float]],
    args: argparse.Namespace,
    device: str,
) -> tuple[str, list[str]]:
    # On a CPU shared with other jobs, wall time mostly measures the neighbours; the process's
    # CPU time (one intra-op thread) is the cost of the work itself. On CUDA, wall time (synced).
    primary = "cpu" if device == "cpu" else "wall"
    t = times[primary]
    med = {c: statistics.median(v) for c, v in t.items()}
    wall = {c: statistics.median(v) for c, v in times["wall"].items()}
    cfg, train = preset("small"), preset_defaults("small")
    try:
        load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        load = "n/a"
    what = "process CPU time" if primary == "cpu" else "wall time (device synchronised)"
    lines = [
        "## Hook overhead",
        "",
        f"`python bench/hook_overhead.py --rounds {args.rounds} --steps {args.steps} --threads {args.threads}"
        f" --device {device}{' --compile' if args.compile else ''}` on {platform.machine()}"
        f" ({os.cpu_count()} cores, load average {load} at the end), torch {torch.__version__},"
        f" {torch.get_num_threads()} intra-op thread(s).",
        f"Model: the `small` preset (d={cfg.n_embd}, {cfg.n_layer} layers, {cfg.n_head} heads, "
        f"T={cfg.block_size}), batch {train.batch_size}; one step = forward + backward + AdamW"
        " (+ `monitor.step(loss=...)`). Every configuration has its own copy of the model, built once;"
        f" configurations interleaved round-robin with a rotating order, {args.rounds} rounds of"
        f" {args.steps} steps each. Overhead: the median over rounds of the per-round ratio to the"
        f" unmonitored configuration of the same mode, in {what}"
        + (
            " (the machine is shared, so wall time mostly measures the neighbours; wall medians are"
            " listed for reference)."
            if primary == "cpu"
            else "."
        ),
        "",
        f"| configuration | ms/step ({primary}) | overhead (median of ratios) | ratio min..max"
        " | ms/step (wall) |",
        "|---|---:|---:|---:|---:|",
    ]
    summary = []
    for c in t:
        if c in ("none", "compiled_none"):
            lines.append(f"| {LABELS[c]} | {med[c] * 1e3:.1f} | | | {wall[c] * 1e3:.1f} |")
            continue
        r = ratios(t, c)
        m = statistics.median(r)
        lines.append(
            f"| {LABELS[c]} | {med[c] * 1e3:.1f} | **{(m - 1) * 100:+.1f}%** | {min(r):.3f}..{max(r):.3f}"
            f" | {wall[c] * 1e3:.1f} |"
        )
        summary.append(f"overhead {c}: {(m - 1) * 100:+.1f}%")
    lines += [
        "",
        "- Target: <= +2% at every=1 with every statistic on, eager and compiled.",
        '- In the "every statistic" rows the attention statistics come from 16 sampled query rows of'
        " one sequence per layer and step (`attn_rows=16`), against all keys, plus the bound"
        " max|q| max|k| / sqrt(hs) over every token; `full_map` is the exact (B, nh, T, T)"
        " computation, which stays `attach()`'s default until sampling stops moving alerts (see"
        ' "Sampled attention probes").',
        "- Ratios whose min..max straddles 1 are within the noise.",
        "",
        "Per-statistic cost in isolation (tensors in cache, median of repeats), for comparison with the"
        " in-training differences above:",
        "",
        "| statistic | calls/step | ms/call | ms/step | % of a no-hooks step |",
        "|---|---:|---:|---:|---:|",
    ]
    base = med["none"]
    for name, calls, ms in comps:
        lines.append(
            f"| {name} | {calls} | {ms:.3f} | {calls * ms:.2f} | {calls * ms / (base * 1e3) * 100:.2f}% |"
        )
    total = sum(calls * ms for _, calls, ms in comps)
    lines += [f"| total | | | {total:.2f} | {total / (base * 1e3) * 100:.2f}% |", ""]
    return "\n".join(lines), summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--steps", type=int, default=10, help="timed steps per measurement (a multiple of 10)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile", action="store_true", help="also measure under torch.compile")
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = p.parse_args()
    if args.steps % 10:
        p.error("--steps must be a multiple of 10 so that every=10 emits its fair share")
    torch.set_num_threads(args.threads)
    configs = EAGER + (COMPILED if args.compile else ())
    times = run(args.rounds, args.steps, args.device, configs)
    text, summary = section(times, components(args.device), args, args.device)
    print("\n" + text)
    if not args.no_write:
        write_section("Hook overhead", text)
        print(f"wrote the 'Hook overhead' section of {BENCHMARKS_MD.relative_to(ROOT)}")
    print("\n".join(summary))


if __name__ == "__main__":
    main()
