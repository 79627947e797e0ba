"""Integrations overhead: time per training step with and without stabmon, in each framework.

Three loops on CPU, each with the model shape of the ``small`` preset (byte vocabulary) and
random-byte batches:

- ``plain``: a nanoGPT-style PyTorch loop on stabmon's GPT; stabmon adds ``attach()`` and
  ``mon.step(loss=, lr=, grad_norm=)`` (examples/plain_loop.py);
- ``hf``: a ``transformers.Trainer`` on a GPT-2 of that shape; stabmon adds ``StabmonCallback``;
- ``llama``: the same ``Trainer`` on a ``LlamaForCausalLM`` of that shape built from a config
  (rotary embeddings, gated MLP, grouped-query attention with 2 key/value heads; no download);
- ``lightning``: a Lightning ``Trainer`` on a LightningModule wrapping stabmon's GPT; stabmon
  adds ``StabmonCallback``.

Each is measured without stabmon and with it: records to a ``MemorySink`` with every statistic
(``all``: ``update_stats=True``, and the plain loop hands ``attach`` its optimizer), the same
with ``logits=False`` (``nologits``: output norms, loss, lr, grad norm),
and, with ``--url``/``--token``, with a real collector ``Client`` (``client``; its batching and
sending threads share the CPU with training). Each measurement is one short run; its time per
step is the median interval between consecutive step ends, in process CPU time (all threads)
and in wall time, framework set-up and the first ``--warmup`` steps excluded. The machine is
shared, so wall time mostly measures the neighbours: ratios use CPU time. The configurations
are interleaved round-robin with a rotating order, so noise and drift hit all of them alike;
each figure is the median over ``--rounds`` rounds. The lines a user adds are counted in the
examples, where every added line carries a ``# stabmon`` comment.

Prints the table and writes the "Integrations overhead" section of docs/benchmarks.md; the last
lines printed are the overhead per configuration.
Usage: ``python bench/integrations_overhead.py [--rounds 5] [--steps 20] [--threads 1] [--url URL]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from trainer_hooks.lab.config import preset

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make `bench.*` importable
    sys.path.insert(0, str(ROOT))
from bench.report import BENCHMARKS_MD, write_section  # noqa: E402

FRAMEWORKS = ("plain", "hf", "llama", "lightning")
EXAMPLES = {
    "plain": "plain_loop.py",
    "hf": "hf_trainer.py",
    "llama": "hf_trainer.py",
    "lightning": "lightning_module.py",
}
SHAPE = preset("small")
B, T = 16, SHAPE.block_size
MARK = re.compile(r"\s# stabmon(:|$)")  # a trailing comment, not the docstring's ``# stabmon``


def random_batches(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, T + 1), generator=g)  # (n, T+1)


def stamp() -> tuple[float, float]:
    return time.process_time(), time.perf_counter()


def per_step(stamps: list[tuple[float, float]], warmup: int) -> tuple[float, float]:
    """Median (CPU, wall) seconds between consecutive step ends, after ``warmup`` steps."""
    kept = stamps[warmup:]
    pairs = list(zip(kept, kept[1:], strict=False))
    return (
        statistics.median(b[0] - a[0] for a, b in pairs),
        statistics.median(b[1] - a[1] for a, b in pairs),
    )


def make_sink(mode: str, args):
    """None without stabmon, a `Client` streaming to ``args.url``, else a `MemorySink`."""
    from trainer_hooks.client import Client, MemorySink, RunInfo

    if mode == "off":
        return None
    if mode == "client":
        return Client(args.url, token=args.token, run=RunInfo(name="bench-integrations"))
    return MemorySink()


def attach_options(mode: str) -> dict:
    # The figures in docs/benchmarks.md were measured with sampled attention rows; attach()'s
    # default is the exact map (see "Hook overhead" for its price).
    return {"logits": False} if mode == "nologits" else {"update_stats": True, "attn_rows": 16}


def run_plain(mode: str, args) -> tuple[float, float]:
    from trainer_hooks.hooks import attach
    from trainer_hooks.lab.model import GPT

    torch.manual_seed(0)
    model = GPT(SHAPE)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = random_batches(B * (args.steps + args.warmup + 1))
    sink = make_sink(mode, args)
    mon = attach(model, sink=sink, optimizer=opt, **attach_options(mode)) if sink is not None else None
    stamps = []
    for i in range(args.steps + args.warmup + 1):
        xy = data[i * B : (i + 1) * B]
        _, loss = model(xy[:, :-1], xy[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if mon is not None:
            mon.step(loss=loss, lr=opt.param_groups[0]["lr"], grad_norm=grad_norm)
        stamps.append(stamp())
    if mon is not None:
        mon.remove()
        sink.close()
    return per_step(stamps, args.warmup)


def gpt2_model():
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=256, n_positions=T, n_embd=SHAPE.n_embd, n_layer=SHAPE.n_layer, n_head=SHAPE.n_head
    )
    return GPT2LMHeadModel(config)


def llama_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=256,
        hidden_size=SHAPE.n_embd,
        intermediate_size=4 * SHAPE.n_embd,
        num_hidden_layers=SHAPE.n_layer,
        num_attention_heads=SHAPE.n_head,
        num_key_value_heads=2,
        max_position_embeddings=T,
    )
    return LlamaForCausalLM(config)


def run_llama(mode: str, args) -> tuple[float, float]:
    return run_hf(mode, args, llama_model)


def run_hf(mode: str, args, make_model=gpt2_model) -> tuple[float, float]:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from trainer_hooks.integrations.hf import StabmonCallback

    class Stamps(TrainerCallback):
        def __init__(self):
            self.stamps = []

        def on_step_end(self, *a, **k):
            self.stamps.append(stamp())

    ids = random_batches(B * (args.steps + args.warmup + 1))[:, :T]
    dataset = [{"input_ids": x, "labels": x} for x in ids]
    torch.manual_seed(0)
    model = make_model()
    stamps = Stamps()
    callbacks = [stamps]
    sink = make_sink(mode, args)
    if sink is not None:
        callbacks.append(StabmonCallback(sink=sink, **attach_options(mode)))
    with tempfile.TemporaryDirectory() as out:
        training_args = TrainingArguments(
            output_dir=out,
            max_steps=args.steps + args.warmup + 1,
            per_device_train_batch_size=B,
            logging_steps=10,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        Trainer(model=model, args=training_args, train_dataset=dataset, callbacks=callbacks).train()
    if sink is not None:
        sink.close()
    return per_step(stamps.stamps, args.warmup)


def run_lightning(mode: str, args) -> tuple[float, float]:
    import lightning as L

    from trainer_hooks.integrations.lightning import StabmonCallback
    from trainer_hooks.lab.model import GPT

    class Lit(L.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.model = GPT(SHAPE)
            self.stamps = []

        def training_step(self, batch, i):
            _, loss = self.model(batch[0], batch[1])
            return loss

        def on_train_batch_end(self, *a):
            self.stamps.append(stamp())

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

    xy = random_batches(B * (args.steps + args.warmup + 1))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xy[:, :-1], xy[:, 1:]), batch_size=B)
    module = Lit()
    sink = make_sink(mode, args)
    callbacks = [StabmonCallback(sink=sink, **attach_options(mode))] if sink is not None else []
    with tempfile.TemporaryDirectory() as out:
        trainer = L.Trainer(
            max_steps=args.steps + args.warmup + 1,
            accelerator="cpu",
            devices=1,
            gradient_clip_val=1.0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=out,
            callbacks=callbacks,
        )
        trainer.fit(module, loader)
    if sink is not None:
        sink.close()
    return per_step(module.stamps, args.warmup)


RUNNERS = {"plain": run_plain, "hf": run_hf, "llama": run_llama, "lightning": run_lightning}
MODE_LABELS = {
    "all": "`MemorySink`, every statistic (`update_stats=True`, `attn_rows=16`)",
    "nologits": "`MemorySink`, `logits=False`",
    "client": "`Client` to a local collector, every statistic",
}


def modes(args) -> tuple[str, ...]:
    return ("off", "all", "nologits", "client") if args.url else ("off", "all", "nologits")


def measure(args) -> dict[tuple[str, str], list[tuple[float, float]]]:
    configs = [(f, m) for f in FRAMEWORKS for m in modes(args)]
    times: dict[tuple[str, str], list[tuple[float, float]]] = {c: [] for c in configs}
    for r in range(args.rounds):
        order = configs[r % len(configs) :] + configs[: r % len(configs)]
        for framework, mode in order:
            times[(framework, mode)].append(RUNNERS[framework](mode, args))
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    return times


def added_lines() -> dict[str, tuple[int, int]]:
    """Per example: (added import lines, added code lines), counted by their ``# stabmon`` mark."""
    counts = {}
    for framework, name in EXAMPLES.items():
        source = (ROOT / "examples" / name).read_text().splitlines()
        marked = [ln.strip() for ln in source if MARK.search(ln)]
        imports = sum(ln.startswith(("from ", "import ")) for ln in marked)
        counts[framework] = (imports, len(marked) - imports)
    return counts


def section(times, args) -> tuple[str, list[str]]:
    cpu = {c: statistics.median(t[0] for t in v) for c, v in times.items()}
    wall = {c: statistics.median(t[1] for t in v) for c, v in times.items()}
    lines_added = added_lines()
    try:
        load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        load = "n/a"
    labels = {
        "plain": "plain PyTorch loop (`attach` + `mon.step`)",
        "hf": "Hugging Face `Trainer`, GPT-2 (`StabmonCallback`)",
        "llama": "Hugging Face `Trainer`, Llama (`StabmonCallback`)",
        "lightning": "Lightning `Trainer` (`StabmonCallback`)",
    }
    out = [
        "## Integrations overhead",
        "",
        f"`python bench/integrations_overhead.py --rounds {args.rounds} --steps {args.steps}"
        f" --threads {args.threads}{' --url URL' if args.url else ''}` on {platform.machine()}"
        f" ({os.cpu_count()} cores, load average {load} at the end), torch {torch.__version__},"
        f" {torch.get_num_threads()} intra-op thread(s), CPU.",
        f"Model shape of the `small` preset in every framework (d={SHAPE.n_embd}, {SHAPE.n_layer} layers,"
        f" {SHAPE.n_head} heads, T={T}, batch {B}); every=1. Time per step: median interval between step"
        f" ends over {args.steps} steps after {args.warmup} warm-up steps, in process CPU time (all"
        " threads); each figure is the median over rounds, the"
        f" {len(FRAMEWORKS) * len(modes(args))} configurations interleaved round-robin with a rotating"
        " order. Overheads use CPU time: the machine is shared, so wall time mostly measures the"
        " neighbours (wall medians for reference).",
        "",
        "| integration | lines added (imports + code) | stabmon | ms/step (cpu) | overhead"
        " | min..max / median | ms/step (wall) |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    summary = []
    for f in FRAMEWORKS:
        imports, code = lines_added[f]
        base, base_wall = cpu[(f, "off")], wall[(f, "off")]
        out.append(
            f"| {labels[f]} | {imports} + {code} | off | {base * 1e3:.1f} | | | {base_wall * 1e3:.1f} |"
        )
        for m in modes(args)[1:]:
            c = cpu[(f, m)]
            lo, hi = min(t[0] for t in times[(f, m)]) / c, max(t[0] for t in times[(f, m)]) / c
            out.append(
                f"| | | {MODE_LABELS[m]} | {c * 1e3:.1f} | {(c / base - 1) * 100:+.1f}% | {lo:.2f}..{hi:.2f}"
                f" | {wall[(f, m)] * 1e3:.1f} |"
            )
            summary.append(f"overhead {f} {m}: {(c / base - 1) * 100:+.1f}%")
    out += [
        "",
        "- Lines added: counted in `examples/` (each added line carries a `# stabmon` comment). The plain"
        " loop's code lines are the run description, the sink, `attach`, `mon.step` (the two inside the"
        " training code) and the clean-up after the loop (`mon.remove()`, `sink.close()`); each callback is"
        " one line in `callbacks=[...]`.",
        "- The difference between every statistic and `logits=False` is the price of exposing the"
        " attention logits. In stabmon's GPT (plain loop, Lightning) the attention recomputes its logits"
        ' and softmax outside autograd on recorded steps, for the probes (see "Hook overhead"); in'
        " GPT-2 the hooks compute the logit maximum from the fused QKV output and the model's attention"
        " is untouched. What remains"
        " with `logits=False` is the output-norm hooks plus, for the callbacks, a gradient norm and a few"
        " Python calls per step. `every=N` divides the hooks' part by about N.",
        "- Differences within the min..max spread are noise.",
        "",
    ]
    return "\n".join(out), summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=20, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=3, help="steps excluded at the start of each run")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--url", default=None, help="also measure with a Client streaming to this collector")
    p.add_argument("--token", default=os.environ.get("STABMON_TOKEN"))
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = p.parse_args()
    if args.rounds < 1 or args.steps < 2:
        p.error("need --rounds >= 1 and --steps >= 2")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    times = measure(args)
    text, summary = section(times, args)
    print("\n" + text)
    if not args.no_write:
        write_section("Integrations overhead", text)
        print(f"wrote the 'Integrations overhead' section of {BENCHMARKS_MD.relative_to(ROOT)}")
    print("\n".join(summary))


if __name__ == "__main__":
    main()
