"""The synthetic demo dataset: size, determinism, schema, and that every user's style is consistent
and distinguishable from the profile alone."""

from __future__ import annotations

import json
import re

import pytest

from flythinker.train.readers import read_records
from flythinker.train.synthetic import STYLES, make_synthetic_dataset, write_synthetic_dataset


def test_sizes_schema_and_profiles():
    data = make_synthetic_dataset()
    assert {k: len(v) for k, v in data.items()} == {"train": 96, "test": 16}
    users = {r.user_id for r in data["train"]}
    assert users == set(STYLES) and {r.user_id for r in data["test"]} == users
    train_ids = {r.id: r for r in data["train"]}
    for split in ("train", "test"):
        for rec in data[split]:
            assert rec.task == "abstract_generation" and rec.meta == {"synthetic": True}
            assert re.fullmatch(r'Generate an abstract for the title ".+"', rec.request)
            assert 3 <= len(rec.profile) <= 6
            dates = [p["date"] for p in rec.profile]
            assert dates == sorted(dates)
            for item in rec.profile:
                assert set(item) == {"id", "title", "abstract", "date"}
                src = train_ids[item["id"]]  # profile items are the user's own train records
                assert src.user_id == rec.user_id and item["abstract"] == src.target and item["id"] != rec.id
            n_words = len(rec.target.split())
            assert 30 <= n_words <= 60


def test_deterministic_and_seeded():
    a, b = make_synthetic_dataset(seed=0), make_synthetic_dataset(seed=0)
    assert a == b
    c = make_synthetic_dataset(seed=1)
    assert [r.target for r in c["train"]] != [r.target for r in a["train"]]
    small = make_synthetic_dataset(n_users=3, n_train=5, n_test=1, max_profile=4)
    assert len(small["train"]) == 15 and len(small["test"]) == 3
    with pytest.raises(ValueError, match="n_users"):
        make_synthetic_dataset(n_users=9)


def test_signature_phrases_are_consistent_and_personal():
    data = make_synthetic_dataset()
    for rec in data["train"] + data["test"]:
        for user, style in STYLES.items():
            has_all = all(sig in rec.target for sig in style["signatures"])
            has_any = any(sig in rec.target for sig in style["signatures"])
            if user == rec.user_id:
                assert has_all
            else:
                assert not has_any


def _bigrams(text):
    words = re.findall(r"[a-z]+|[^\sa-z]", text.lower())
    return set(zip(words, words[1:]))


def test_style_is_recoverable_from_the_profile():
    """A held-out target shares more word bigrams with its own user's profile than with any other
    user's profile: the profile carries the style, the shared title pool does not."""
    data = make_synthetic_dataset()
    profiles = {}
    for rec in data["test"]:
        profiles.setdefault(rec.user_id, set()).update(*(_bigrams(p["abstract"]) for p in rec.profile))
    for rec in data["test"]:
        tb = _bigrams(rec.target)
        sims = {u: len(tb & pb) / len(tb | pb) for u, pb in profiles.items()}
        best = max(sims, key=sims.get)
        assert best == rec.user_id
        assert sims[best] > 2 * max(v for u, v in sims.items() if u != best)
    # the title patterns are shared across users: the request alone does not identify the style
    for pattern in ('title "Rethinking', 'title "A simpler'):
        assert len({r.user_id for r in data["train"] if pattern in r.request}) >= 2


def test_write_and_read_back(tmp_path):
    paths = write_synthetic_dataset(tmp_path, n_users=2)
    assert set(paths) == {"train", "test"}
    with open(paths["train"], encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    assert all(row["synthetic"] is True for row in rows)
    back = read_records(paths["train"])
    assert [r.target for r in back] == [r.target for r in make_synthetic_dataset(n_users=2)["train"]]
    assert all(r.meta == {"synthetic": True} for r in back)
    assert "SYNTHETIC" in (tmp_path / "README.txt").read_text()
