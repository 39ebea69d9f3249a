"""Where the benchmarks read the PEP abstract-generation data: ``--data`` names it, nothing is assumed.

``--data`` is either the folder of the PEP splits (``user_train.jsonl``, ``user_val.jsonl``, …; the
split a benchmark reads is taken from it) or one JSONL file in the LongLaMP schema. The full data is not
in the repository (docs/data.md says where it comes from); ``tests/fixtures/peps`` holds a small slice
(40 + 12 records) that runs every benchmark's code path but is too small for its published numbers.
"""

from __future__ import annotations

import os
from pathlib import Path

WHERE = (
    "pass --data DIR, the folder of the PEP splits (docs/data.md says where to get them), "
    "or --data tests/fixtures/peps for the small slice shipped with the tests"
)


def pep_split(data: str | os.PathLike | None, split: str, script: str) -> Path:
    """The JSONL file ``split`` (e.g. ``"user_val"``) in the folder ``data``, or ``data`` itself when it
    is a file. Exits with one line naming ``script``'s ``--data`` option when it is missing."""
    if not data:
        raise SystemExit(f"{script}: no PEP data given: {WHERE}")
    path = Path(data)
    if path.is_dir():
        path = path / f"{split}.jsonl"
    if not path.is_file():
        raise SystemExit(f"{script}: --data {data}: {path} does not exist; {WHERE}")
    return path
