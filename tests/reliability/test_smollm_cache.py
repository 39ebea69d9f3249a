"""The SmolLM2 conversion cache: locked, uniquely named temporaries, cleaned up, truncation detected."""

from __future__ import annotations

import multiprocessing
import time

import pytest
import torch
from safetensors.torch import save_file

from flythinker.modeling import smollm


def _fake_convert(folder, delay=0.0, counter=None):
    """Stands in for the ~40 s GGUF de-quantisation: writes a weights file and a tokenizer config."""
    if counter is not None:
        with open(counter, "a") as handle:
            handle.write("x")
    time.sleep(delay)
    save_file({"w": torch.arange(4096, dtype=torch.float32)}, str(folder / "model.safetensors"))
    (folder / "tokenizer_config.json").write_text("{}")


def _convert_in_child(cache, counter, queue):
    smollm._convert_into = lambda folder: _fake_convert(folder, delay=0.5, counter=counter)
    queue.put(str(smollm.smollm2_path(cache)))


def test_two_conversions_at_once_both_succeed_and_convert_once(tmp_path):
    cache, counter = tmp_path / "cache" / "smollm2", tmp_path / "count"
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    workers = [context.Process(target=_convert_in_child, args=(cache, counter, queue)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [w.exitcode for w in workers] == [0, 0]
    assert {queue.get(timeout=5), queue.get(timeout=5)} == {str(cache)}
    assert counter.read_text() == "x"  # the second waited for the lock and used the first one's result
    assert smollm.cache_is_valid(cache, verify_hash=True)
    assert not list(cache.parent.glob("smollm2.partial*"))


def test_a_failed_conversion_leaves_no_temporary_folder(tmp_path, monkeypatch):
    def failing(folder):
        (folder / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(smollm, "_convert_into", failing)
    with pytest.raises(KeyboardInterrupt):
        smollm.smollm2_path(tmp_path / "smollm2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smollm2.lock"]


def test_leftovers_of_a_killed_run_are_removed_and_a_truncated_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setattr(smollm, "_convert_into", _fake_convert)
    cache = tmp_path / "smollm2"
    stale = tmp_path / "smollm2.partial-abc123"  # what a kill -9 during a conversion leaves
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\0" * 1000)
    assert smollm.smollm2_path(cache) == cache
    assert not stale.exists()
    weights = cache / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as handle:  # a truncated copy
        handle.truncate(size - 100)
    assert not smollm.cache_is_valid(cache)
    assert smollm.smollm2_path(cache) == cache and weights.stat().st_size == size
    assert smollm.cache_is_valid(cache, verify_hash=True)


def test_the_header_check_detects_truncation_without_a_manifest(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(100)}, str(path))
    assert smollm.safetensors_is_complete(path)
    data = path.read_bytes()
    path.write_bytes(data[:-1])
    assert not smollm.safetensors_is_complete(path)
    path.write_bytes(b"garbage")
    assert not smollm.safetensors_is_complete(path)
