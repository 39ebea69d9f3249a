"""Raw rows of a record source, each with its location: the first half of :mod:`flythinker.train.readers`.

:func:`iter_source` turns a path (``.jsonl``, ``.json``, ``.parquet``), a 🤗 ``datasets`` object or an
iterable of dicts into ``(Location, row)`` pairs without interpreting the rows; every error names the
source and the 1-based line (JSONL) or record number. Interpreting rows is the readers' job.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any


def type_name(value: Any) -> str:
    """The JSON-ish name of a value's type for error messages (``null`` for None)."""
    return "null" if value is None else type(value).__name__


class Location:
    """Where a raw record came from, for error messages: ``"<source> line 17"``."""

    __slots__ = ("source", "kind", "number")

    def __init__(self, source: str, kind: str, number: int):
        self.source, self.kind, self.number = source, kind, number

    def __str__(self) -> str:
        return f"{self.source} {self.kind} {self.number}"

    def error(self, message: str) -> ValueError:
        return ValueError(f"{self}: {message}")


class PlainLocation(Location):
    """A location given as plain text (a single record passed by the caller)."""

    def __init__(self, text: str):
        super().__init__(text, "", 0)

    def __str__(self) -> str:
        return self.source


# ----------------------------------------------------------------------------------------- raw rows
def _decode_line(raw: bytes, loc: Location) -> str:
    try:
        return raw.decode("utf-8-sig" if loc.number == 1 else "utf-8")  # a BOM on line 1 is tolerated
    except UnicodeDecodeError as exc:
        raise loc.error(
            f"invalid UTF-8 (byte {exc.start + 1} of the line: {raw[exc.start : exc.start + 4]!r}); "
            "save the file as UTF-8"
        ) from None


def _iter_jsonl(path: Path, name: str) -> Iterator[tuple[Location, Any]]:
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            loc = Location(name, "line", lineno)
            line = _decode_line(raw, loc)
            if not line.strip():
                continue
            try:
                yield loc, json.loads(line)
            except json.JSONDecodeError as exc:
                raise loc.error(f"invalid JSON ({exc.msg} at column {exc.colno})") from None


def _iter_json(path: Path, name: str) -> Iterator[tuple[Location, Any]]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ValueError(
            f"{name} line {line}: invalid UTF-8 (byte {raw[exc.start : exc.start + 1]!r}); save the file "
            "as UTF-8"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{name}: invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    if not isinstance(data, list):
        raise ValueError(
            f"{name}: expected a JSON list of records at the top level, got {type_name(data)} "
            "(use .jsonl for one record per line)"
        )
    for i, row in enumerate(data, start=1):
        yield Location(name, "record", i), row


def _iter_parquet(path: Path, name: str) -> Iterator[tuple[Location, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("reading parquet needs pyarrow: pip install 'flythinker[train]'") from exc
    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises its own error types
        raise ValueError(f"{name}: not a readable parquet file ({' '.join(str(exc).split())})") from None
    for i, row in enumerate(table.to_pylist(), start=1):
        yield Location(name, "record", i), row


def iter_source(source: Any, split: str | None) -> Iterator[tuple[Location, Any]]:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        name = str(source)
        if path.is_dir():
            raise IsADirectoryError(
                f"{name}: is a directory; expected a .jsonl, .json or .parquet file (name the file inside it)"
            )
        if not path.is_file():
            raise FileNotFoundError(f"{name}: no such file")
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            return _iter_jsonl(path, name)
        if suffix == ".json":
            return _iter_json(path, name)
        if suffix == ".parquet":
            return _iter_parquet(path, name)
        raise ValueError(f"{name}: unsupported file type {suffix!r}; expected .jsonl, .json or .parquet")
    module = type(source).__module__ or ""
    if module.startswith("datasets") and isinstance(source, Mapping):  # DatasetDict / IterableDatasetDict
        names = list(source.keys())
        if split is None:
            if len(names) != 1:
                raise ValueError(f"DatasetDict has splits {names}: pass split= to choose one")
            split = names[0]
        if split not in source:
            raise ValueError(f"DatasetDict has no split {split!r}; available: {names}")
        return _iter_rows(source[split], f"<datasets split {split!r}>")
    if module.startswith("datasets"):
        return _iter_rows(source, f"<{type(source).__name__}>")
    if isinstance(source, Mapping):
        raise TypeError(
            "read_records expects a path, a datasets object or an iterable of dicts; got a single dict"
        )
    if isinstance(source, Iterable):
        return _iter_rows(source, "<records>")
    raise TypeError(f"cannot read records from {type(source).__name__}")


def _iter_rows(rows: Iterable[Any], name: str) -> Iterator[tuple[Location, Any]]:
    for i, row in enumerate(rows, start=1):
        yield Location(name, "record", i), row
