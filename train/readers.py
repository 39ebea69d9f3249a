"""Readers: LongLaMP-style and reference-format records → :class:`PersonalizedRecord`.

Accepted sources (all through :func:`read_records`):

* a path to ``.jsonl`` (one object per line; blank lines skipped), ``.json`` (a list of objects)
  or ``.parquet``;
* a 🤗 ``datasets.Dataset`` / ``IterableDataset``, or a ``DatasetDict`` with ``split=``;
* any in-memory iterable of dicts.

Record formats, detected per record:

* LongLaMP: ``{<user field>, "input": str, "output": str, "profile": [ {...}, ... ]}``. The user
  field is the first present of :data:`USER_ID_FIELDS` (or ``user_field=``); when ``id`` is present
  and another field names the user, ``id`` is the record id.
* reference implementation: ``{"inp": str, "profile": str, "target": str}``; the profile string
  becomes one item ``{"text": profile}``.

The task is detected once per source from the profile item fields of the first LongLaMP record
with a non-empty profile (``title``+``abstract`` → abstract_generation, ``reviewText`` →
product_review, ``content`` → topic_writing); ``task=`` overrides it. Every record is validated
and every error names the source, the location (``line N`` for JSONL, ``record N`` otherwise; both
1-based), the field and what was expected, e.g.::

    ValueError: temporal_train.jsonl line 17: field "profile" must be a list of objects with
    "title" and "abstract", got str
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from flythinker.train.records import TASK_SCHEMAS, TASKS, PersonalizedRecord, required_fields_phrase
from flythinker.train.sources import Location, PlainLocation, iter_source, type_name

USER_ID_FIELDS: tuple[str, ...] = (
    "user_id",
    "name",
    "author",
    "reviewerId",
    "reviewer_id",
    "user",
    "uid",
    "id",
)
"""Top-level fields tried, in order, for the user id of a LongLaMP record."""

_SCALAR = (str, int, float, bool)


# ----------------------------------------------------------------------------------- task detection
def detect_task(profile_items: list[Any]) -> str | None:
    """The LongLaMP task whose profile schema the items' fields match, or ``None``.

    ``title`` and ``abstract`` → ``abstract_generation``; ``reviewText`` → ``product_review``;
    ``content`` → ``topic_writing``; ``text`` → ``reference``. Only dict items are looked at.
    """
    keys: set[str] = set()
    for item in profile_items:
        if isinstance(item, Mapping):
            keys |= set(item.keys())
    for task in ("abstract_generation", "product_review", "topic_writing", "reference"):
        if set(TASK_SCHEMAS[task][0]) <= keys:
            return task
    return None


def _is_reference(row: Mapping[str, Any]) -> bool:
    return "inp" in row and "input" not in row


# ---------------------------------------------------------------------------------- normalization
def _require_str(loc: Location, row: Mapping[str, Any], key: str, *, hint: str = "") -> str:
    if key not in row:
        raise loc.error(f'field "{key}" is missing (expected a string{hint})')
    value = row[key]
    if not isinstance(value, str):
        raise loc.error(f'field "{key}" must be a string, got {type_name(value)}')
    return value


def _normalize_profile(loc: Location, profile: Any, task: str) -> list[dict[str, Any]]:
    required, optional = TASK_SCHEMAS[task]
    phrase = required_fields_phrase(task)
    if not isinstance(profile, list):
        raise loc.error(f'field "profile" must be a list of objects with {phrase}, got {type_name(profile)}')
    items: list[dict[str, Any]] = []
    for k, item in enumerate(profile, start=1):
        if not isinstance(item, Mapping):
            raise loc.error(
                f'field "profile" item {k} must be an object with {phrase}, got {type_name(item)}'
            )
        for key in required:
            if key not in item:
                raise loc.error(
                    f'field "profile" item {k} is missing "{key}" (task {task} expects {phrase}; '
                    f"item has {sorted(item.keys())})"
                )
            if not isinstance(item[key], str):
                raise loc.error(
                    f'field "profile" item {k} field "{key}" must be a string, got {type_name(item[key])}'
                )
        clean = dict(item)
        for key in optional:
            if key in clean and clean[key] is not None and not isinstance(clean[key], _SCALAR):
                raise loc.error(
                    f'field "profile" item {k} field "{key}" must be a string or number, '
                    f"got {type_name(clean[key])}"
                )
        items.append(clean)
    return items


def _user_id(loc: Location, row: Mapping[str, Any], user_field: str | None) -> tuple[str, str | None]:
    """(user id, name of the field it came from)."""
    candidates = (user_field,) if user_field else USER_ID_FIELDS
    for key in candidates:
        if key in row and row[key] is not None:
            value = row[key]
            if not isinstance(value, (str, int)):
                raise loc.error(
                    f'field "{key}" (user id) must be a string or integer, got {type_name(value)}'
                )
            return str(value), key
    if user_field:
        raise loc.error(f'field "{user_field}" (user id) is missing')
    return "", None


def normalize_record(
    row: Any,
    *,
    task: str,
    loc: str | Location = "<record>",
    require_target: bool = True,
    user_field: str | None = None,
) -> PersonalizedRecord:
    """Validate one raw record (LongLaMP or reference format) and return it normalized.

    Args:
        row: the raw dict.
        task: the task whose profile schema LongLaMP records must follow (reference-format records
            always get one ``{"text": ...}`` item and keep ``task`` unless it is ``None``).
        loc: where the record came from, used as the prefix of error messages.
        require_target: raise when the target field is missing (set ``False`` for unlabelled data).
        user_field: the top-level field holding the user id (default: first of :data:`USER_ID_FIELDS`).

    Raises:
        ValueError: naming ``loc``, the field and what was expected.
    """
    if not isinstance(loc, Location):
        loc = PlainLocation(str(loc))
    if not isinstance(row, Mapping):
        raise loc.error(f"expected a JSON object (a record), got {type_name(row)}")
    hint = "; pass require_target=False to read records without targets"
    if _is_reference(row):
        request = _require_str(loc, row, "inp")
        profile = row.get("profile", "")
        if profile is None:
            profile = ""
        if not isinstance(profile, str):
            raise loc.error(
                f'field "profile" of a reference-format record ("inp"/"profile"/"target") must be '
                f"one string, got {type_name(profile)}"
            )
        target = _require_str(loc, row, "target", hint=hint) if (require_target or "target" in row) else None
        user_id, ufield = _user_id(loc, row, user_field)
        items = [{"text": profile}] if profile.strip() else []
        used = {"inp", "profile", "target"} | ({ufield} if ufield else set())
        meta = {k: v for k, v in row.items() if k not in used}
        return PersonalizedRecord(
            user_id=user_id,
            request=request,
            target=target,
            profile=items,
            task=task or "reference",
            meta=meta,
        )
    if "input" not in row:
        raise loc.error(
            'field "input" is missing (expected a LongLaMP record with "input", "output" and '
            '"profile", or a reference record with "inp", "profile" and "target")'
        )
    request = _require_str(loc, row, "input")
    target = (
        _require_str(loc, row, "output", hint=hint)
        if (require_target or row.get("output") is not None)
        else None
    )
    if "profile" not in row:
        raise loc.error(
            f'field "profile" is missing (expected a list of objects with {required_fields_phrase(task)})'
        )
    items = _normalize_profile(loc, row["profile"], task)
    user_id, ufield = _user_id(loc, row, user_field)
    record_id = None
    if ufield != "id" and row.get("id") is not None:
        record_id = str(row["id"])
    used = {"input", "output", "profile", "id"} | ({ufield} if ufield else set())
    meta = {k: v for k, v in row.items() if k not in used}
    return PersonalizedRecord(
        user_id=user_id, request=request, target=target, profile=items, task=task, id=record_id, meta=meta
    )


def read_records(
    source: Any,
    *,
    task: str | None = None,
    split: str | None = None,
    require_target: bool = True,
    user_field: str | None = None,
) -> list[PersonalizedRecord]:
    """Read and validate every record of ``source``.

    Args:
        source: a path (``.jsonl``/``.json``/``.parquet``), a ``datasets`` object, or an iterable
            of dicts. See the module docstring for the accepted record formats.
        task: force the task (one of :data:`~flythinker.train.records.TASKS`); default: detect it
            from the profile fields of the first LongLaMP record with a non-empty profile.
        split: the split to read when ``source`` is a ``DatasetDict``.
        require_target: raise on records without a target (``output`` / ``target``).
        user_field: the top-level field naming the user (default: first of :data:`USER_ID_FIELDS`).

    Returns:
        The records in source order.

    Raises:
        ValueError: on malformed input, naming the file, the line (JSONL) or record number
            (1-based), the field and what was expected; or when the task cannot be detected.
    """
    if task is not None and task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {list(TASKS)}")
    rows = list(iter_source(source, split))
    if task is None:
        task = _detect_source_task(rows)
    return [
        normalize_record(row, task=task, loc=loc, require_target=require_target, user_field=user_field)
        for loc, row in rows
    ]


def _detect_source_task(rows: list[tuple[Location, Any]]) -> str:
    longlamp_seen = False
    for loc, row in rows:
        if not isinstance(row, Mapping) or _is_reference(row):
            continue
        profile = row.get("profile")
        if not isinstance(profile, list):
            continue
        longlamp_seen = True
        if not profile:
            continue
        for number, item in enumerate(profile, 1):
            if not isinstance(item, Mapping):  # the field is wrong, not the task: say so
                raise loc.error(
                    f'field "profile" item {number} must be an object (a profile entry with its fields), '
                    f"got {type(item).__name__}"
                )
        found = detect_task(profile)
        if found is None or found == "reference":
            keys = sorted({k for item in profile if isinstance(item, Mapping) for k in item})
            expected = "; ".join(f"{t}: {required_fields_phrase(t)}" for t in TASKS if t != "reference")
            raise loc.error(
                f'cannot detect the task from the fields of "profile" items {keys}; expected one of '
                f"({expected}) or pass task="
            )
        return found
    if longlamp_seen:
        # only empty profiles: no schema to check; abstract_generation is as good as any
        return "abstract_generation"
    if not rows:
        return "abstract_generation"
    return "reference"


def read_splits(
    source: Any, *, splits: Iterable[str] = ("train", "val", "test"), prefix: str = "", **kwargs: Any
) -> dict[str, list[PersonalizedRecord]]:
    """Read several splits at once.

    ``source`` is either a ``DatasetDict`` (every requested split present is read) or a directory
    holding ``{prefix}{split}.jsonl|.json|.parquet`` files, e.g. ``read_splits(peps_dir,
    prefix="temporal_")`` reads ``temporal_train.jsonl`` and ``temporal_val.jsonl`` (missing
    splits are skipped; at least one must exist). ``kwargs`` go to :func:`read_records`.
    """
    out: dict[str, list[PersonalizedRecord]] = {}
    if isinstance(source, Mapping):
        for name in splits:
            if name in source:
                out[name] = read_records(source, split=name, **kwargs)
    else:
        folder = Path(source)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: not a directory")
        for name in splits:
            for ext in (".jsonl", ".json", ".parquet"):
                path = folder / f"{prefix}{name}{ext}"
                if path.is_file():
                    out[name] = read_records(path, **kwargs)
                    break
    if not out:
        raise FileNotFoundError(f"{source}: none of the splits {list(splits)} found (prefix {prefix!r})")
    return out


def write_jsonl(
    records: Iterable[PersonalizedRecord], path: str | os.PathLike, *, extra: Mapping[str, Any] | None = None
) -> None:
    """Write records in the LongLaMP schema, one JSON object per line (``extra`` merged into each)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for rec in records:
            row = rec.to_longlamp()
            if extra:
                row.update(extra)
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
