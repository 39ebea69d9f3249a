"""``flythinker alpsbench run | score`` without a model: baselines, oracle predictions, readable errors."""

from __future__ import annotations

import json

from flythinker.cli import main
from tests.evaluation.alpsbench._fakes import EXAMPLES, examples, read_jsonl


def _oracle(td, bid):
    gold = td.references[bid]["gold"]
    if td.task == "task1":
        return {"benchmark_id": bid, "memory_items": gold["memory_items"]}
    if td.task == "task2":
        return {"benchmark_id": bid, "memory_items": gold["answer"]}
    if td.task == "task3":
        return {
            "benchmark_id": bid,
            "answer": "",
            "reason": "oracle",
            "selected_memory_id": gold["selected_memory_id"],
        }
    return {"benchmark_id": bid, "answer": "x", "used_memory_fact": gold["selected_memory"]["value"]}


def test_run_baselines_without_a_model(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(
        [
            "alpsbench",
            "run",
            "--data",
            str(EXAMPLES.parent),
            "--split",
            "examples",
            "--track",
            "t2,t3",
            "--out",
            str(out),
            "--baselines",
            "bm25,copy",
            "--no-progress",
        ]
    )
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task3_accuracy_by_level"] == {"bm25": {"100": 0.0}}
    (t2,) = [s for s in summary["tracks"] if s["track"] == "task2"]
    # the unchanged memory: 6 of its 7 items are in the 8 gold items → P 6/7, R 6/8, F1 0.8
    assert t2["main_score"] == 0.8 and t2["method"].startswith("copy")
    assert (out / "task3_d100" / "baselines" / "bm25" / "predictions.jsonl").is_file()
    scores = read_jsonl(out / "scores.jsonl")
    assert {r["track"] for r in scores} == {"task2", "task3_d100"} and all("status" in r for r in scores)
    md = (out / "summary.md").read_text()
    assert "| task2 | copy (memory unchanged) | 1 | 0 | mean_f1: 0.8000 |" in md and "| bm25 | 0.0000 |" in md
    assert "| bm25 | – | – | 0.00 |" in md  # the paper's table form: T1 T2 T3 d100 (0–100)
    assert "## Comparable with the paper?" in md and "no: the release's local proxy" in md
    assert "T3 accuracy by distractor level" in capsys.readouterr().out


def test_score_oracle_predictions_of_every_track(tmp_path):
    run = tmp_path / "preds"
    for track, td in examples().items():
        (run / track).mkdir(parents=True)
        (run / track / "predictions.jsonl").write_text(
            "".join(json.dumps(_oracle(td, r["benchmark_id"])) + "\n" for r in td.inputs)
        )
    assert (
        main(
            [
                "alpsbench",
                "score",
                "--data",
                str(EXAMPLES),
                "--predictions",
                str(run),
                "--out",
                str(tmp_path / "s"),
            ]
        )
        == 0
    )
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert len(summary["tracks"]) == 8
    for s in summary["tracks"]:
        assert s["main_score"] == 1.0, s["track"]
        if s["track"] in ("task1", "task2"):
            assert s["match_greedy"]["algo_score_100"] == 100.0 == s["match_hungarian"]["algo_score_100"]
    # one file: the track is inferred from its ids
    out = tmp_path / "one"
    assert (
        main(
            [
                "alpsbench",
                "score",
                "--data",
                str(EXAMPLES),
                "--predictions",
                str(run / "task4_ability3" / "predictions.jsonl"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert [s["track"] for s in json.loads((out / "summary.json").read_text())["tracks"]] == [
        "task4_ability3"
    ]


def test_contract_errors_are_one_readable_line(tmp_path, capsys):
    path = tmp_path / "p.jsonl"
    path.write_text(
        json.dumps({"benchmark_id": "sess_46457e1905af", "answer": "", "selected_memory_id": "m3"}) + "\n"
    )
    rc = main(
        [
            "alpsbench",
            "score",
            "--data",
            str(EXAMPLES),
            "--predictions",
            str(path),
            "--track",
            "task3_d100",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert rc != 0 and "missing key(s) ['reason']" in err and "p.jsonl:1" in err
    path.write_text(json.dumps({"benchmark_id": "nobody", "memory_items": []}) + "\n")
    rc = main(
        [
            "alpsbench",
            "score",
            "--data",
            str(EXAMPLES),
            "--predictions",
            str(path),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert rc != 0 and "no track has all their ids" in capsys.readouterr().err
    rc = main(["alpsbench", "run", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--track", "t1"])
    assert rc != 0 and "found neither examples/ nor task1" in capsys.readouterr().err


def test_a_test_split_gets_contract_checked_predictions_but_no_scores(tmp_path):
    import shutil

    split = tmp_path / "benchmark_data" / "test"
    shutil.copytree(EXAMPLES, split)
    for ref in split.rglob("reference_output.jsonl"):
        ref.unlink()  # the public test split hides its gold
    out = tmp_path / "o"
    assert (
        main(
            [
                "alpsbench",
                "run",
                "--data",
                str(tmp_path / "benchmark_data"),
                "--split",
                "test",
                "--track",
                "t3",
                "--baselines",
                "bm25",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tracks"] == [] and summary["not_scored"][0]["track"] == "task3_d100"
    assert len(read_jsonl(out / "task3_d100" / "baselines" / "bm25" / "predictions.jsonl")) == 1
