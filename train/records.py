"""The normalized record every reader produces, and the per-task profile schemas.

LongLaMP (Kumar et al., 2024) has three public long-form tasks; each profile item is an object with
task-specific fields:

=====================  ==========================  =============================================
task                   required item fields        optional item fields
=====================  ==========================  =============================================
abstract_generation    ``title``, ``abstract``     ``id``, ``date``
product_review         ``reviewText``              ``overall``, ``summary``, ``description``
topic_writing          ``content``                 ``summary``
=====================  ==========================  =============================================

The reference implementation's records ``{"inp", "profile", "target"}`` carry the whole profile as
one pre-rendered string; it becomes a single profile item ``{"text": profile}`` (task
``"reference"`` unless the caller names another task).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

TASK_SCHEMAS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # task: (required item fields, optional item fields)
    "abstract_generation": (("title", "abstract"), ("id", "date")),
    "product_review": (("reviewText",), ("overall", "summary", "description")),
    "topic_writing": (("content",), ("summary",)),
    "reference": (("text",), ()),
}
"""Profile-item schema of each task: (required fields, optional fields)."""

TASKS: tuple[str, ...] = tuple(TASK_SCHEMAS)


@dataclass
class PersonalizedRecord:
    """One personalized generation example, independent of the file format it came from.

    Attributes:
        user_id: the user being personalized for (LongLaMP ``name`` / ``user_id`` / ``author`` …).
        request: the instruction (LongLaMP ``input``; reference ``inp``).
        target: the text to generate (LongLaMP ``output``; reference ``target``); ``None`` when the
            source has no target (e.g. a held-out test file read with ``require_target=False``).
        profile: the user's earlier writing, one dict per item, in the source's order (LongLaMP
            and the PEP data sort it by date, oldest first).
        task: one of :data:`TASKS`.
        id: the record id when the source has one (else ``None``).
        meta: every other top-level field of the source record (e.g. ``"synthetic": True``).
    """

    user_id: str
    request: str
    target: str | None
    profile: list[dict[str, Any]]
    task: str
    id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_longlamp(self) -> dict[str, Any]:
        """The LongLaMP-schema dict (``name``, ``input``, ``output``, ``profile`` + ``meta``)."""
        out: dict[str, Any] = {
            "name": self.user_id,
            "input": self.request,
            "output": self.target,
            "profile": [dict(p) for p in self.profile],
        }
        if self.id is not None:
            out["id"] = self.id
        out.update(self.meta)
        return out

    def to_dict(self) -> dict[str, Any]:
        """All dataclass fields as a plain dict (JSON-serialisable when the profile is)."""
        return asdict(self)


def required_fields_phrase(task: str) -> str:
    """``'"title" and "abstract"'`` — the required item fields of ``task`` for error messages."""
    req = [f'"{f}"' for f in TASK_SCHEMAS[task][0]]
    return req[0] if len(req) == 1 else ", ".join(req[:-1]) + " and " + req[-1]
