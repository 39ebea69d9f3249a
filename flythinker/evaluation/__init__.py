"""Offline evaluation for personalized long-form generation (LongLaMP conventions).

``compute_metrics`` (ROUGE-1/L, METEOR, BLEU), ``metrics_by_position`` (context drift),
``write_predictions_jsonl`` / ``write_metrics_json``. METEOR needs WordNet: see
:mod:`flythinker.evaluation.wordnet_setup` and ``scripts/setup_wordnet.sh``. The metric libraries
(rouge-score, nltk, sacrebleu: ``pip install 'flythinker[eval]'``) are imported on first use.
"""

from flythinker.evaluation.io import read_predictions_jsonl, write_metrics_json, write_predictions_jsonl
from flythinker.evaluation.metrics import (
    DEFAULT_METRICS,
    compute_metrics,
    corpus_bleu,
    meteor_scores,
    meteor_tokenize,
    rouge_scores,
)
from flythinker.evaluation.position import metrics_by_position, split_windows
from flythinker.evaluation.wordnet_setup import WordNetNotFoundError, get_wordnet, install_wordnet

__all__ = [
    "DEFAULT_METRICS",
    "WordNetNotFoundError",
    "compute_metrics",
    "corpus_bleu",
    "get_wordnet",
    "install_wordnet",
    "meteor_scores",
    "meteor_tokenize",
    "metrics_by_position",
    "read_predictions_jsonl",
    "rouge_scores",
    "split_windows",
    "write_metrics_json",
    "write_predictions_jsonl",
]
