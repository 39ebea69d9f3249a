"""Does the reasoner help? The quality experiment, trained through ``flythinker train``'s own code path.

Every run is ``run_finetune`` (the CLI's training: the recipe's model options, optimizer groups,
schedule, clipping, divergence guard) with measurement callbacks; the exact ``flythinker train``
command of each run is saved with it. Arms, controls and the selection rule are in
``bench/quality/arms.py`` (written before the runs they judge); statistics in ``bench/quality/stats.py``.

Data (``--data``: a folder with the PEP files ``user_train.jsonl``, ``user_val.jsonl``,
``temporal_val.jsonl`` in LongLaMP's abstract-generation schema): training reads ``user_train``;
the primary metric is teacher-forced NLL on **all** ``user_val`` records; ``temporal_val`` is measured
at the end of every run and read only after the default is chosen; greedy generations for the first
``--gen-requests`` ``user_val`` records.

Phases: ``tune`` runs each tuned arm at every rate of ``TUNING_GRID`` on ``TUNING_SEED``; ``main``
runs every arm on ``--seeds`` at its selected rate. Each finished run is appended to
``<stem>.partial.jsonl`` at once; a restarted command skips the runs found there (its options must match).

    python bench/bench_quality.py --data DIR                 # the CPU matrix (tune, then main)
    python bench/bench_quality.py --data DIR --arms sft,zero_linear --seeds 0,1
    python bench/bench_quality.py --data DIR --scale paper   # the paper's budget, for a GPU
    python bench/bench_quality.py --data DIR --report-only   # rebuild .json/.md/.png from the partial file
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import models  # noqa: E402
from quality.arms import ARMS, TUNED_ARMS, TUNING_GRID, TUNING_SEED  # noqa: E402
from quality.controls import ConstantState, Donor, OwnEmbedding, donor_pool, mean_reasoner_state  # noqa: E402
from quality.measure import MeasureCallback  # noqa: E402
from quality.report import write_report  # noqa: E402
from quality.runner import RunSpec, run_arm  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PEP_FILES = ("user_train.jsonl", "user_val.jsonl", "temporal_val.jsonl")
PAPER_EPOCHS = 5


@dataclasses.dataclass
class Options:
    data: str | None = None
    arms: list[str] = dataclasses.field(default_factory=lambda: list(ARMS))
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2, 3, 4])
    phases: list[str] = dataclasses.field(default_factory=lambda: ["tune", "main"])
    steps: int = 48
    eval_every: int = 12
    batch_size: int = 1
    max_length: int = 192
    max_target_tokens: int = 48
    reasoner_layers: int = 4
    gen_requests: int = 36
    max_new_tokens: int = 128
    learning_rate: float | None = None  # skip tuning: every arm at this rate
    scale: str = "cpu"
    tiny: bool = False
    train_records: int | None = None
    val_records: int | None = None  # None: all (tests use a few)
    threads: int | None = None
    out: str = str(RESULTS)
    stem: str = "quality_cpu"
    report_only: bool = False

    def signature(self) -> dict[str, Any]:
        """The options that change a run's numbers (a partial file resumes only when these match)."""
        keep = ("steps", "eval_every", "batch_size", "max_length", "max_target_tokens", "reasoner_layers",
                "gen_requests", "max_new_tokens", "tiny", "train_records", "val_records", "scale")  # fmt: skip
        return {k: getattr(self, k) for k in keep}


def parse_args(argv: Sequence[str] | None = None) -> Options:
    defaults = Options()
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", help="folder with user_train/user_val/temporal_val.jsonl (PEP, LongLaMP schema)")
    p.add_argument("--arms", default=",".join(defaults.arms), help=f"comma-separated, from {list(ARMS)}")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--phases", default="tune,main", help="tune, main or both")
    for name in ("steps", "eval_every", "batch_size", "max_length", "max_target_tokens", "reasoner_layers",
                 "gen_requests", "max_new_tokens", "train_records", "val_records", "threads"):  # fmt: skip
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
    p.add_argument("--learning-rate", type=float, default=None, help="skip tuning: every arm at this rate")
    p.add_argument(
        "--scale",
        choices=("cpu", "paper"),
        default="cpu",
        help="paper: 5 epochs, batch 64, full lengths (a GPU)",
    )
    p.add_argument("--tiny", action="store_true", help="tiny random models (smoke tests)")
    p.add_argument("--out", default=defaults.out)
    p.add_argument("--stem", default=None, help="output file stem (default: quality_<device>)")
    p.add_argument("--report-only", action="store_true")
    a = p.parse_args(argv)
    unknown = sorted(set(a.arms.split(",")) - set(ARMS))
    if unknown:
        p.error(f"--arms: unknown {unknown}; known: {list(ARMS)}")
    phases = a.phases.split(",")
    if not set(phases) <= {"tune", "main"}:
        p.error(f"--phases: expected tune and/or main, got {a.phases!r}")
    options = Options(**{
        **{k: v for k, v in vars(a).items() if k not in ("arms", "seeds", "phases", "stem")},
        "arms": a.arms.split(","), "seeds": [int(s) for s in a.seeds.split(",")], "phases": phases,
        "stem": a.stem or f"quality_{'cuda' if torch.cuda.is_available() else 'cpu'}",
    })  # fmt: skip
    if options.scale == "paper":
        options.batch_size, options.max_length, options.max_target_tokens = 64, 2048, 512
        options.reasoner_layers, options.eval_every = 0, 0
    return options


def check_data(data: str | None) -> Path:
    """The PEP folder, or SystemExit saying where to get it."""
    hint = (
        "pass --data DIR, a folder holding the PEP files user_train.jsonl, user_val.jsonl and temporal_val.jsonl "
        "(LongLaMP abstract-generation schema; the project's shared data folder `data/peps` has them)"
    )
    if data is None:
        raise SystemExit(f"no data: {hint}")
    missing = [name for name in PEP_FILES if not Path(data, name).is_file()]
    if missing:
        raise SystemExit(f"--data {data}: missing {missing}; {hint}")
    return Path(data)


def append_run(path: Path, record: dict[str, Any]) -> None:
    """Append one finished run to the partial file (one JSON line, flushed and fsynced)."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_partial(path: Path, signature: dict[str, Any]) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    runs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    changed = sorted({k for r in runs for k in signature if r.get("signature", {}).get(k) != signature[k]})
    if changed:
        raise SystemExit(
            f"{path} holds runs made with other options ({changed}); use another --stem or move it"
        )
    return runs


def selected_rates(runs: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The tuned rate of each tuned arm: lowest final NLL on all user_val records on the tuning seed."""
    best: dict[str, tuple[float, float]] = {}
    for run in runs:
        if run["phase"] != "tune":
            continue
        final = [e for e in run["evals"] if e["set"] == "user_val"][-1]["records"]
        nll = sum(r[0] for r in final) / sum(r[1] for r in final)
        if run["arm"] not in best or nll < best[run["arm"]][0]:
            best[run["arm"]] = (nll, run["learning_rate"])
    return {arm: rate for arm, (_, rate) in best.items()}


def rate_for(arm_name: str, rates: dict[str, float], options: Options) -> float | None:
    """An arm's learning rate: ``--learning-rate``, its own tuned rate, or (recursively) the rate of the
    arm it controls or takes its rate from."""
    if options.learning_rate is not None:
        return options.learning_rate
    if arm_name in rates:
        return rates[arm_name]
    arm = ARMS[arm_name]
    source = arm.controls_arm or arm.lr_from
    return rate_for(source, rates, options) if source else None


def plan(options: Options, done: set[tuple[str, int, float, str]], rates: dict[str, float]) -> list[tuple]:
    todo = []
    if "tune" in options.phases and options.learning_rate is None:
        for name in TUNED_ARMS:
            todo += [("tune", name, TUNING_SEED, lr) for lr in TUNING_GRID if name in options.arms]
    if "main" in options.phases:
        for seed in options.seeds:
            for name in options.arms:
                if ARMS[name].reasoner_layers == 0 and options.reasoner_layers and seed != options.seeds[0]:
                    continue  # the full reasoner: one seed (CPU budget)
                todo.append(("main", name, seed, None))
    return [t for t in todo if (t[0], t[1], t[2], t[3]) not in done]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    options = parse_args(argv)
    if options.threads:
        torch.set_num_threads(options.threads)
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    partial = out / f"{options.stem}.partial.jsonl"
    signature = options.signature()
    runs = read_partial(partial, signature)
    if not options.report_only:
        data_dir = (
            check_data(options.data) if not options.tiny else (Path(options.data) if options.data else None)
        )
        with tempfile.TemporaryDirectory(prefix="flythinker-quality-") as work:
            runs = run_matrix(options, data_dir, Path(work), partial, runs, signature)
    stored = {**dataclasses.asdict(options), "argv": list(argv if argv is not None else sys.argv[1:])}
    report = write_report(out, options.stem, runs, options=stored, machine=machine_info())
    print((out / f"{options.stem}.md").read_text())
    return report


def run_matrix(options, data_dir, work: Path, partial: Path, runs: list, signature: dict) -> list:
    from tqdm.auto import tqdm

    setup = models.prepare(options, data_dir, work)
    done = {
        (r["phase"], r["arm"], r["seed"], r["learning_rate"] if r["phase"] == "tune" else None) for r in runs
    }
    if options.scale == "paper":
        options.steps = math.ceil(PAPER_EPOCHS * len(setup.records["user_train"]) / options.batch_size)
    spec = RunSpec(
        train_file=str(setup.train_file), generator=str(setup.generator), reasoner=str(setup.reasoner),
        work_dir=str(work / "runs"), steps=options.steps, batch_size=options.batch_size,
        max_length=options.max_length, max_target_tokens=options.max_target_tokens,
        max_records=options.train_records,
    )  # fmt: skip
    mean_states: dict[tuple, torch.Tensor] = {}
    todo = plan(options, done, selected_rates(runs))
    print(f"{len(todo)} runs to do ({len(runs)} in {partial}); {setup.description}", flush=True)
    for phase, name, seed, lr in tqdm(todo, desc="runs", unit="run"):
        arm = ARMS[name]
        rate = lr if lr is not None else rate_for(name, selected_rates(runs), options)
        if rate is None:
            raise SystemExit(
                f"arm {name}: no tuned learning rate yet (run the tune phase or pass --learning-rate)"
            )
        key = (bool(arm.overrides.get("reasoner_context", False)), arm.overrides.get("profile_tokens"))
        view = setup.view(*key)
        control = None
        if arm.control == "donor":
            control = Donor(donor_pool(view.train), window=options.max_length + options.max_new_tokens + 8)
        elif arm.control == "const":
            if key not in mean_states:
                mean_states[key] = mean_reasoner_state(setup.load_reasoner(), view.reasoner_batches(32))
            control = ConstantState(mean_states[key])
        elif arm.control == "own_embedding":
            control = OwnEmbedding()
        arm_spec = (
            spec if arm.reasoner_layers is None else dataclasses.replace(spec, reasoner=str(setup.generator))
        )
        measure = MeasureCallback(
            view,
            every=(options.eval_every or options.steps)
            if phase == "main"
            else options.steps,  # tuning: final only
            tokenizer=setup.tokenizer,
            generate=arm.generate and phase == "main",
            max_new_tokens=options.max_new_tokens,
        )
        record = run_arm(arm, arm_spec, seed, rate, measure, control)
        record.update(phase=phase, signature=signature, arm_spec=arm.as_dict(), description=setup.description)
        if phase == "main":
            record["learning_rate_tuned"] = lr is None and options.learning_rate is None
        append_run(partial, record)
        runs.append(record)
        final = [e for e in record["evals"] if e["set"] == "user_val"][-1]["records"]
        print(f"{phase} {name} seed {seed} lr {rate:g}: user_val NLL {sum(r[0] for r in final) / sum(r[1] for r in final):.4f}"
              f", step-0 logit diff {record.get('step0_max_abs_logit_diff')}, {record['seconds']['wall']:.0f} s", flush=True)  # fmt: skip
    return runs


def machine_info() -> dict[str, Any]:
    import transformers

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_end": list(os.getloadavg()),
    }


if __name__ == "__main__":
    main()
