"""The paper's judges behind one endpoint: :class:`PaperJudge` ties the official prompts
(:class:`~.official_judges.OfficialPrompts`) to a :class:`~flythinker.rewards.endpoint.ChatEndpoint`
and is what ``--judge-endpoint`` builds (all options checked before any row runs)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flythinker.evaluation.alpsbench.official_judges import (
    OFFICIAL_COMMIT,
    OfficialCodeError,
    OfficialPrompts,
    judge_memory_rows,
    judge_t4_rows,
)


class PaperJudge:
    """The paper's judges (prompts from the official code) behind one :class:`~flythinker.rewards.endpoint.ChatEndpoint`."""

    def __init__(self, endpoint, prompts: OfficialPrompts) -> None:
        self.endpoint, self.prompts = endpoint, prompts

    @classmethod
    def from_options(
        cls,
        url: str,
        model: str,
        code: str | Path | None,
        *,
        cache_dir: str | Path | None,
        api_key_env: str | None = "OPENAI_API_KEY",
        concurrency: int = 4,
        max_retries: int = 5,
    ) -> PaperJudge:
        """Check everything (official code, key, URL) before any row runs."""
        from flythinker.rewards.endpoint import ChatEndpoint

        if code is None:
            raise OfficialCodeError(
                "--judge-endpoint needs --alpsbench-code: the judge prompts are read from your copy "
                f"of ThisIsCosine/AlpsBench at commit {OFFICIAL_COMMIT}"
            )
        prompts = OfficialPrompts.load(code)
        endpoint = ChatEndpoint(
            url,
            model,
            api_key_env=api_key_env,
            cache_dir=cache_dir,
            concurrency=concurrency,
            max_retries=max_retries,
        )
        return cls(endpoint, prompts)

    def describe(self) -> dict[str, Any]:
        """What changes the judge's replies (for the run manifest): endpoint, model, a hash of the prompts."""
        blob = json.dumps(
            [self.prompts.memory_system, self.prompts.memory_user_prefix, dict(self.prompts.task4)],
            sort_keys=True,
        )
        return {**self.endpoint.describe(), "prompts_sha256": hashlib.sha256(blob.encode()).hexdigest()[:16]}

    def memory(self, rows: Sequence[tuple[Sequence[Any], Sequence[Any]]]) -> list[dict[str, Any]]:
        return judge_memory_rows(self.endpoint, self.prompts, rows)

    def task4(self, ability: str, items: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        return judge_t4_rows(self.endpoint, self.prompts, ability, items)
