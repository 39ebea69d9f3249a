"""scripts/setup_wordnet.sh and install_wordnet: copies (not links), generated lexnames, idempotent."""

from __future__ import annotations

import os
import subprocess
import warnings
from pathlib import Path

import pytest

from flythinker.evaluation.wordnet_setup import (
    DEBIAN_WORDNET_DIR,
    LEXNAMES,
    WORDNET_FILES,
    install_wordnet,
    lexnames_text,
    main,
)

REPO = Path(__file__).resolve().parents[2]
needs_debian = pytest.mark.skipif(
    not Path(DEBIAN_WORDNET_DIR, "index.sense").is_file(),
    reason="Debian wordnet-base / wordnet-sense-index not installed",
)


def _check_files(dest: Path):
    for name in (*WORDNET_FILES, "lexnames"):
        path = dest / name
        assert path.is_file() and not path.is_symlink(), name
        if name != "lexnames":
            assert path.read_bytes() == (Path(DEBIAN_WORDNET_DIR) / name).read_bytes()
    assert (dest / "lexnames").read_text(encoding="utf-8") == lexnames_text()


def _check_reader(dest: Path, monkeypatch):
    """NLTK loads the corpus and the generated lexnames line up with WordNet's lexicographer files."""
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    # nltk ≥ 3.9.2 only opens corpora under a root on its data path
    monkeypatch.setattr(nltk.data, "path", [str(dest.parent.parent), *nltk.data.path])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reader = WordNetCorpusReader(str(dest), None)
    assert reader.synset("dog.n.01").lexname() == "noun.animal"
    assert reader.synset("run.v.01").lexname() == "verb.motion"
    assert reader.synset("quick.a.01").lexname() == "adj.all"


def test_lexnames_table():
    lines = lexnames_text().splitlines()
    assert len(lines) == len(LEXNAMES) == 45
    assert lines[0] == "00\tadj.all\t3" and lines[3] == "03\tnoun.Tops\t1" and lines[44] == "44\tadj.ppl\t3"
    assert lines[29] == "29\tverb.body\t2" and lines[2] == "02\tadv.all\t4"


@needs_debian
def test_shell_script_installs_and_is_idempotent(tmp_path, monkeypatch):
    script = REPO / "scripts" / "setup_wordnet.sh"
    env = dict(os.environ, NLTK_DATA=str(tmp_path / "via_env"))
    subprocess.run(["bash", str(script)], check=True, env=env, capture_output=True)
    dest = tmp_path / "via_env" / "corpora" / "wordnet"
    _check_files(dest)
    mtimes = {p.name: p.stat().st_mtime_ns for p in dest.iterdir()}
    out = subprocess.run(
        ["bash", str(script), str(tmp_path / "via_env")], check=True, capture_output=True, text=True
    )
    assert "WordNet ready" in out.stdout
    assert {p.name: p.stat().st_mtime_ns for p in dest.iterdir()} == mtimes
    _check_reader(dest, monkeypatch)


@needs_debian
def test_python_installer_and_module_cli(tmp_path, capsys):
    dest = install_wordnet(tmp_path / "a")
    _check_files(dest)
    (dest / "lexnames").write_text("broken\n")
    (dest / "data.noun").unlink()
    (dest / "data.noun").symlink_to(Path(DEBIAN_WORDNET_DIR) / "data.noun")
    install_wordnet(tmp_path / "a")  # repairs: rewrites lexnames, replaces the link by a copy
    _check_files(dest)
    assert main(["--target", str(tmp_path / "b")]) == 0
    _check_files(tmp_path / "b" / "corpora" / "wordnet")
    assert main(["--target", str(tmp_path / "c"), "--source", str(tmp_path / "nowhere")]) == 1
    assert "wordnet-base" in capsys.readouterr().err
