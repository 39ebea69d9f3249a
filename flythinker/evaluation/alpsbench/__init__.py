"""AlpsBench (arXiv 2603.26680) offline: the personalization memory lifecycle scored with local models.

Four tasks over a user's memory: T1 extraction, T2 update, T3 retrieval among 100…1,000
distractors, T4 utilization (abilities 1–5: PA, PF, VRA, CF, EI). Modules:

* :mod:`.data` — the public ``benchmark_data/<split>/`` layout, validated rows, ``model_view``;
* :mod:`.contract` — prediction rows in the release contract (missing / duplicate / extra-key /
  wrong-type rows are errors), failure rows;
* :mod:`.scoring` — the release's local scorer (``score_row``);
* :mod:`.matching` — the paper's memory matcher (``score_memory_match``, greedy / Hungarian);
* :mod:`.lm`, :mod:`.prompts`, :mod:`.parsing`, :mod:`.runners` — driving any local causal LM
  (FlyThinker included), JSON repair and a bounded retry, resumable predictions;
* :mod:`.retrieval` — T3 baselines (BM25, MiniLM, LM re-ranker); :mod:`.t3_pool` — the paper's
  whole-pool T3 protocol;
* :mod:`.endpoint_lm` — the model under test behind an OpenAI-compatible server (``vllm serve``);
* :mod:`.judges` — local proxy judges (``local_judge*``: P("yes") for abilities 1–4, PERM for EI);
* :mod:`.official_judges` — the paper's judges (prompts read from the user's copy of the official
  code, scoring ours) through :class:`flythinker.rewards.endpoint.ChatEndpoint`;
* :mod:`.paper_judge` — the two tied to one endpoint (``--judge-endpoint``);
* :mod:`.manifest` — run manifests (a resume with other settings is refused) and report merging;
* :mod:`.report`, :mod:`.report_md`, :mod:`.pipeline`, :mod:`.cli` — ``flythinker alpsbench run | score``
  (see docs/alpsbench.md for which numbers compare with the paper).

Nothing heavy is imported here: torch / transformers / rank_bm25 load on first use.
"""

from flythinker.evaluation.alpsbench.contract import (
    PREDICTION_KEYS,
    PredictionContractError,
    check_predictions,
    failure_row,
    load_predictions,
    validate_prediction_row,
)
from flythinker.evaluation.alpsbench.data import (
    AlpsBenchDataError,
    TrackData,
    discover_tracks,
    load_split,
    load_track,
    model_view,
    resolve_split_dir,
    select_tracks,
)
from flythinker.evaluation.alpsbench.matching import hungarian, score_memory_match
from flythinker.evaluation.alpsbench.scoring import normalize_text, score_row, summarize_scores

__all__ = [
    "PREDICTION_KEYS",
    "AlpsBenchDataError",
    "PredictionContractError",
    "TrackData",
    "check_predictions",
    "discover_tracks",
    "failure_row",
    "hungarian",
    "load_predictions",
    "load_split",
    "load_track",
    "model_view",
    "normalize_text",
    "resolve_split_dir",
    "score_memory_match",
    "score_row",
    "select_tracks",
    "summarize_scores",
    "validate_prediction_row",
]
