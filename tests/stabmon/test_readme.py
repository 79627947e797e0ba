"""The README's promises that a test can hold: the quick start is exactly two commands, `.ci/run`
runs the second one, and the training-loop snippet runs as written against a real sink."""

import re
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, flags=re.S | re.M)
    assert m, f"README has no '## {title}' section"
    return m.group(1)


def test_quick_start_is_two_commands_and_ci_runs_the_test_one():
    block = re.search(r"```bash\n(.*?)```", _section("Quick start"), flags=re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, flags=re.M)


def test_training_loop_snippet_runs(tmp_path):
    import torch

    from trainer_hooks.client import JsonlSink, read_jsonl
    from trainer_hooks.lab.config import preset
    from trainer_hooks.lab.model import GPT

    code = re.search(r"```python\n(.*?)```", _section("Use it in your training job"), flags=re.S).group(1)
    # Make the snippet's placeholders concrete: a tiny model, a file sink instead of a collector.
    code = code.replace(
        'Client("http://127.0.0.1:8321", token=TOKEN, run=RunInfo(name="my-run", config={"lr": lr}))',
        "JsonlSink(path)",
    )
    code = code.replace(
        "    ...  # forward, backward, clip, optimizer step",
        textwrap.indent(
            "x = torch.randint(0, 256, (2, 16))\n"
            "_, loss = model(x, x)\n"
            "optimizer.zero_grad()\n"
            "loss.backward()\n"
            "grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\n"
            "optimizer.step()",
            "    ",
        ),
    )
    model = GPT(preset("tiny"))
    path = tmp_path / "run.jsonl"
    env = {
        "torch": torch,
        "model": model,
        "optimizer": torch.optim.AdamW(model.parameters(), lr=1e-3),
        "steps": 3,
        "path": path,
        "JsonlSink": JsonlSink,
    }
    exec(compile(code, "README.md", "exec"), env)
    records = list(read_jsonl(path))
    assert [r["step"] for r in records] == [0, 1, 2]
    expected = {"loss", "lr", "grad_norm", "layer.0.qkv.l2_mean", "layer.1.attn.logit_max"}
    assert expected <= set(records[0]["values"])
