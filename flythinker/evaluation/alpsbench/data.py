"""Reading and validating a user's AlpsBench ``benchmark_data/`` directory (public release layout).

Layout (``<split>`` = examples, dev, validation or test)::

    <split>/task1/{model_input,reference_output}.jsonl
    <split>/task2/...
    <split>/task3/d100/...            (d300, d500, d700, d1000 in the real splits)
    <split>/task4/ability1/...        (the release itself spells it task4_ability1/; both are read)

``test`` has no ``reference_output.jsonl``. Track names: ``task1``, ``task2``, ``task3_dN``,
``task4_abilityK``. Every row is validated on reading; an error names the file, the line and the
field. :func:`model_view` is the only way a runner sees a row: a whitelist of the model-visible
input fields, so neither ``gold`` nor task2's ``input.metadata`` (which names the target memory)
nor task4's ``audit_context`` can reach a prompt.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SPLITS = ("examples", "dev", "validation", "test")
TRACK_GROUPS = ("t1", "t2", "t3", "t4", "all")
ABILITY_NAMES = {"ability1": "PA", "ability2": "PF", "ability3": "VRA", "ability4": "CF", "ability5": "EI"}


class AlpsBenchDataError(ValueError):
    """A benchmark file or row that does not follow the release layout (message: file:line: field: what)."""


@dataclass
class TrackData:
    """One track of one split: its input rows and (unless hidden) its reference rows by benchmark_id."""

    track: str
    directory: Path
    inputs: list[dict[str, Any]]
    references: dict[str, dict[str, Any]] | None

    @property
    def task(self) -> str:
        return self.track.split("_", 1)[0]

    @property
    def level(self) -> int | None:
        """Task 3's distractor level (100 for ``task3_d100``), else ``None``."""
        m = re.fullmatch(r"task3_d(\d+)", self.track)
        return int(m.group(1)) if m else None

    @property
    def ability(self) -> str | None:
        return self.track.split("_", 1)[1] if self.task == "task4" else None

    def limited(self, limit: int | None) -> TrackData:
        """The first ``limit`` input rows (and their references)."""
        if limit is None:
            return self
        inputs = self.inputs[: max(0, int(limit))]
        refs = (
            None
            if self.references is None
            else {r["benchmark_id"]: self.references[r["benchmark_id"]] for r in inputs}
        )
        return TrackData(self.track, self.directory, inputs, refs)


def resolve_split_dir(data: str | Path, split: str | None = None) -> Path:
    """``DIR/<split>`` (or ``DIR/benchmark_data/<split>``, or ``DIR/dataset/<split>`` of a Hugging Face
    download's root), or ``DIR`` itself when it already is a split."""
    root = Path(data)
    if not root.is_dir():
        raise AlpsBenchDataError(
            f"{root}: no such directory; pass --data the benchmark_data/ folder or a split folder"
        )
    candidates = [root / split, root / "benchmark_data" / split, root / "dataset" / split] if split else []
    for c in candidates:
        if c.is_dir():
            return c
    if _looks_like_split(root):
        return root
    raise AlpsBenchDataError(
        f"{root}: found neither {split}/ nor task1|task2|task3|task4 folders in it; pass --data the "
        f"benchmark_data/ folder, a Hugging Face download's root (holding dataset/) (with --split examples|dev|validation|test) or one split folder"
    )


def _looks_like_split(path: Path) -> bool:
    return any((path / t).is_dir() for t in ("task1", "task2", "task3", "task4")) or any(
        path.glob("task4_ability*")
    )


def _track_dirs(split_dir: Path) -> Iterator[tuple[str, Path]]:
    for name in ("task1", "task2"):
        if (split_dir / name / "model_input.jsonl").is_file():
            yield name, split_dir / name
    levels = [d for d in (split_dir / "task3").glob("d*") if re.fullmatch(r"d\d+", d.name)]
    for d in sorted(levels, key=lambda d: int(d.name[1:])):
        if (d / "model_input.jsonl").is_file():
            yield f"task3_{d.name}", d
    abilities: dict[str, Path] = {}
    for d in list((split_dir / "task4").glob("ability*")) + list(split_dir.glob("task4_ability*")):
        name = d.name.removeprefix("task4_")
        if re.fullmatch(r"ability\d+", name) and (d / "model_input.jsonl").is_file():
            abilities.setdefault(name, d)
    for name in sorted(abilities, key=lambda a: int(a[len("ability") :])):
        yield f"task4_{name}", abilities[name]


def discover_tracks(split_dir: str | Path) -> dict[str, Path]:
    """Track name → its directory, for every track present in a split folder (release order)."""
    return dict(_track_dirs(Path(split_dir)))


def select_tracks(available: Sequence[str], selection: str | Sequence[str]) -> list[str]:
    """Tracks of a selection: ``t1``, ``t2``, ``t3`` (every level), ``t4`` (every ability), ``all``,
    or explicit track names; several may be comma-separated."""
    items = selection.split(",") if isinstance(selection, str) else list(selection)
    prefixes = {"t1": "task1", "t2": "task2", "t3": "task3_", "t4": "task4_"}
    out: list[str] = []
    for item in (s.strip() for s in items if s.strip()):
        if item == "all":
            chosen = list(available)
        elif item in prefixes:
            chosen = [t for t in available if t == prefixes[item] or t.startswith(prefixes[item])]
        elif item in available:
            chosen = [item]
        else:
            raise AlpsBenchDataError(
                f"unknown or absent track {item!r}; this split has {list(available)} (groups: {TRACK_GROUPS})"
            )
        if not chosen:
            raise AlpsBenchDataError(
                f"track group {item!r} selects nothing; this split has {list(available)}"
            )
        out += [t for t in chosen if t not in out]
    return out


def read_jsonl(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) of every non-blank line; a bad line raises with file and line."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise AlpsBenchDataError(
                    f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})"
                ) from exc
            if not isinstance(obj, dict):
                raise AlpsBenchDataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            rows.append((lineno, obj))
    return rows


_TYPES = {str: "a string", list: "a list", dict: "an object"}


def _get(row: dict, dotted: str):
    value: Any = row
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


_MISSING = object()


def _require(row: dict, dotted: str, kind: type, where: str, nullable: bool = False) -> None:
    value = _get(row, dotted)
    if value is _MISSING:
        raise AlpsBenchDataError(f"{where}: field '{dotted}' is missing")
    if value is None and nullable:
        return
    if not isinstance(value, kind):
        raise AlpsBenchDataError(
            f"{where}: field '{dotted}' must be {_TYPES[kind]}, got {type(value).__name__}"
        )


_INPUT_FIELDS = {
    "task1": [("input.dialogue", list)],
    "task2": [
        ("input.old_dialogue", list),
        ("input.new_dialogue", list),
        ("input.memory", list),
        ("input.query", str),
    ],
    "task3": [("input.candidate_memories", list), ("input.query", str)],
    "task4": [("input.model_input", dict), ("input.model_input.query", str)],
}
_REFERENCE_FIELDS = {
    "task1": [("gold.memory_items", list)],
    "task2": [("gold.answer", list)],
    "task3": [("gold.selected_memory_id", str), ("gold.selected_memory", dict)],
    "task4": [("gold.selected_memory", dict)],
}


def validate_input_row(track: str, row: dict, where: str) -> None:
    """Raise :class:`AlpsBenchDataError` (naming ``where`` and the field) unless ``row`` is a valid input row."""
    task = track.split("_", 1)[0]
    _require(row, "benchmark_id", str, where)
    if not row["benchmark_id"]:
        raise AlpsBenchDataError(f"{where}: field 'benchmark_id' is empty")
    if row.get("task") not in (None, task):
        raise AlpsBenchDataError(f"{where}: field 'task' is {row.get('task')!r} in a {track} file")
    _require(row, "input", dict, where)
    for dotted, kind in _INPUT_FIELDS[task]:
        _require(row, dotted, kind, where)
    if task == "task3":
        for k, cand in enumerate(row["input"]["candidate_memories"]):
            if not isinstance(cand, dict) or not isinstance(cand.get("memory_id"), str):
                raise AlpsBenchDataError(
                    f"{where}: field 'input.candidate_memories[{k}].memory_id' must be a string"
                )
    if task == "task4":
        ability = track.split("_", 1)[1]
        if row.get("ability") not in (None, ability):
            raise AlpsBenchDataError(f"{where}: field 'ability' is {row.get('ability')!r} in a {track} file")


def validate_reference_row(track: str, row: dict, where: str) -> None:
    """Raise :class:`AlpsBenchDataError` unless ``row`` is a valid reference row of ``track``."""
    task = track.split("_", 1)[0]
    _require(row, "benchmark_id", str, where)
    _require(row, "gold", dict, where)
    for dotted, kind in _REFERENCE_FIELDS[task]:
        _require(row, dotted, kind, where)


def load_track(track: str, directory: str | Path, require_references: bool = False) -> TrackData:
    """Read and validate one track folder; reference ids must be exactly the input ids."""
    directory = Path(directory)
    inputs_path = directory / "model_input.jsonl"
    if not inputs_path.is_file():
        raise AlpsBenchDataError(f"{inputs_path}: missing (every track folder holds a model_input.jsonl)")
    inputs: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for lineno, row in read_jsonl(inputs_path):
        where = f"{inputs_path}:{lineno}"
        validate_input_row(track, row, where)
        bid = row["benchmark_id"]
        if bid in seen:
            raise AlpsBenchDataError(f"{where}: benchmark_id {bid!r} repeats line {seen[bid]}")
        seen[bid] = lineno
        inputs.append(row)
    refs_path = directory / "reference_output.jsonl"
    if not refs_path.is_file():
        if require_references:
            raise AlpsBenchDataError(
                f"{refs_path}: missing; scoring needs the reference rows (the test split "
                f"hides them: submit its predictions instead)"
            )
        return TrackData(track, directory, inputs, None)
    references: dict[str, dict[str, Any]] = {}
    for lineno, row in read_jsonl(refs_path):
        where = f"{refs_path}:{lineno}"
        validate_reference_row(track, row, where)
        bid = row["benchmark_id"]
        if bid in references:
            raise AlpsBenchDataError(f"{where}: benchmark_id {bid!r} appears twice")
        if bid not in seen:
            raise AlpsBenchDataError(f"{where}: benchmark_id {bid!r} has no row in {inputs_path}")
        references[bid] = row
    absent = [b for b in seen if b not in references]
    if absent:
        raise AlpsBenchDataError(
            f"{refs_path}: no reference for {len(absent)} input row(s), e.g. {absent[:3]}"
        )
    return TrackData(track, directory, inputs, references)


def load_split(
    data: str | Path,
    split: str | None = None,
    tracks: str | Sequence[str] = "all",
    require_references: bool = False,
) -> dict[str, TrackData]:
    """Every selected track of a split (see :func:`resolve_split_dir`, :func:`select_tracks`)."""
    split_dir = resolve_split_dir(data, split)
    available = discover_tracks(split_dir)
    if not available:
        raise AlpsBenchDataError(f"{split_dir}: no track folder with a model_input.jsonl")
    return {
        t: load_track(t, available[t], require_references) for t in select_tracks(list(available), tracks)
    }


def _turns(turns: Any) -> list[dict[str, str]]:
    out = []
    for t in turns or []:
        if isinstance(t, dict) and isinstance(t.get("text"), str):
            out.append({"role": str(t.get("role") or "user"), "text": t["text"]})
    return out


def _task1_dialogue(inp: dict) -> list[dict[str, str]]:
    if inp.get("dialogue"):
        return _turns(inp["dialogue"])
    sessions = inp.get("sessions") or []
    return _turns(sessions[0].get("turns")) if sessions and isinstance(sessions[0], dict) else []


def model_view(track: str, row: dict[str, Any]) -> dict[str, Any]:
    """The model-visible part of an input row, built from a whitelist (never gold or metadata).

    * task1: ``dialogue`` (role/text turns);
    * task2: ``old_dialogue``, ``new_dialogue``, ``memory`` (the existing items), ``instruction``
      (the row's ``input.query``) — not ``input.metadata``;
    * task3: ``query``, ``dialogue``, ``candidate_memories`` (memory_id, value, label);
    * task4: ``query``, and ``selected_memory`` (ability 1, the memory the task hands the model)
      or ``dialogue_history`` (abilities 2–5) from ``input.model_input`` — not ``audit_context``.
    """
    task = track.split("_", 1)[0]
    inp = row["input"]
    if task == "task1":
        return {"dialogue": _task1_dialogue(inp)}
    if task == "task2":
        return {
            "old_dialogue": _turns(inp.get("old_dialogue")),
            "new_dialogue": _turns(inp.get("new_dialogue")),
            "memory": [dict(m) for m in inp.get("memory") or [] if isinstance(m, dict)],
            "instruction": str(inp.get("query") or ""),
        }
    if task == "task3":
        cands = [
            {
                "memory_id": str(c.get("memory_id")),
                "value": str(c.get("value") or ""),
                "label": str(c.get("label") or ""),
            }
            for c in inp["candidate_memories"]
        ]
        return {"query": inp["query"], "dialogue": _turns(inp.get("dialogue")), "candidate_memories": cands}
    if task == "task4":
        mi = inp["model_input"]
        view: dict[str, Any] = {"query": str(mi.get("query") or inp.get("query") or "")}
        if isinstance(mi.get("selected_memory"), dict):
            sm = mi["selected_memory"]
            view["selected_memory"] = {k: sm[k] for k in ("memory_id", "label", "value") if k in sm}
        view["dialogue_history"] = _turns(mi.get("dialogue_history"))
        return view
    raise AlpsBenchDataError(f"unknown track {track!r}")
