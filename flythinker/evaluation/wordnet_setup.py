"""Offline WordNet for NLTK's METEOR.

NLTK reads WordNet 3.0 from ``<nltk data dir>/corpora/wordnet/``. Offline, the files come from the
Debian packages ``wordnet-base`` (data, index and exception files, ``cntlist.rev``) and
``wordnet-sense-index`` (``index.sense``), installed under ``/usr/share/wordnet``. NLTK also needs a
``lexnames`` file (the 45 lexicographer file names) that Debian does not ship: it is generated
here from :data:`LEXNAMES` (the table of WordNet's ``lexnames(5WN)`` manual page), not downloaded.
Files are *copied*, not linked (NLTK's data finder does not follow every kind of link and a copy
survives the package being removed).

METEOR only calls ``wordnet.synsets(word)`` for English, so the Open Multilingual WordNet
(``omw-1.4``) is never loaded; nothing else is needed.

Command line (idempotent; ``scripts/setup_wordnet.sh`` also installs the Debian packages)::

    python -m flythinker.evaluation.wordnet_setup [--target DIR] [--source /usr/share/wordnet]
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
import warnings
from pathlib import Path

DEBIAN_WORDNET_DIR = "/usr/share/wordnet"

WORDNET_FILES: tuple[str, ...] = (
    "cntlist.rev",
    "index.sense",
    "index.adj",
    "index.adv",
    "index.noun",
    "index.verb",
    "data.adj",
    "data.adv",
    "data.noun",
    "data.verb",
    "adj.exc",
    "adv.exc",
    "noun.exc",
    "verb.exc",
)
"""Files NLTK's ``WordNetCorpusReader`` opens, besides the generated ``lexnames``."""

_POS_NUMBER = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
LEXNAMES: tuple[str, ...] = (
    "adj.all",
    "adj.pert",
    "adv.all",
    "noun.Tops",
    "noun.act",
    "noun.animal",
    "noun.artifact",
    "noun.attribute",
    "noun.body",
    "noun.cognition",
    "noun.communication",
    "noun.event",
    "noun.feeling",
    "noun.food",
    "noun.group",
    "noun.location",
    "noun.motive",
    "noun.object",
    "noun.person",
    "noun.phenomenon",
    "noun.plant",
    "noun.possession",
    "noun.process",
    "noun.quantity",
    "noun.relation",
    "noun.shape",
    "noun.state",
    "noun.substance",
    "noun.time",
    "verb.body",
    "verb.change",
    "verb.cognition",
    "verb.communication",
    "verb.competition",
    "verb.consumption",
    "verb.contact",
    "verb.creation",
    "verb.emotion",
    "verb.motion",
    "verb.perception",
    "verb.possession",
    "verb.social",
    "verb.stative",
    "verb.weather",
    "adj.ppl",
)
"""WordNet 3.0's 45 lexicographer files, in file-number order (lexnames(5WN))."""

SETUP_HINT = (
    "run `bash scripts/setup_wordnet.sh` (installs the Debian packages wordnet-base and "
    "wordnet-sense-index and copies WordNet into $NLTK_DATA or ~/nltk_data), or, when "
    "/usr/share/wordnet already exists, `python -m flythinker.evaluation.wordnet_setup`"
)


class WordNetNotFoundError(LookupError):
    """WordNet is not installed where NLTK looks; the message says how to install it offline."""


def lexnames_text() -> str:
    """The ``lexnames`` file: ``NN<TAB>name<TAB>syntactic category`` per line (1 noun … 4 adv)."""
    return "".join(f"{i:02d}\t{name}\t{_POS_NUMBER[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES))


def default_nltk_data_dir() -> Path:
    """The first entry of ``$NLTK_DATA`` if set, else ``~/nltk_data`` (both on NLTK's search path)."""
    env = os.environ.get("NLTK_DATA", "")
    first = env.split(os.pathsep)[0] if env else ""
    return Path(first) if first else Path.home() / "nltk_data"


def install_wordnet(
    target: str | os.PathLike | None = None, source: str | os.PathLike = DEBIAN_WORDNET_DIR
) -> Path:
    """Copy WordNet from ``source`` into ``<target>/corpora/wordnet`` and write ``lexnames``.

    Idempotent: files already identical are left alone. Adds ``target`` to ``nltk.data.path`` for
    this process when it is not there yet. Returns the corpus directory.

    Raises:
        WordNetNotFoundError: when ``source`` lacks a file (install the Debian packages first).
    """
    src = Path(source)
    missing = [f for f in WORDNET_FILES if not (src / f).is_file()]
    if missing:
        raise WordNetNotFoundError(
            f"{src} lacks {missing}: install the Debian packages wordnet-base and "
            "wordnet-sense-index (bash scripts/setup_wordnet.sh does it)"
        )
    root = Path(target) if target is not None else default_nltk_data_dir()
    dest = root / "corpora" / "wordnet"
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORDNET_FILES:
        out = dest / name
        if out.is_symlink():
            out.unlink()
        if not (out.is_file() and filecmp.cmp(src / name, out, shallow=False)):
            shutil.copyfile(src / name, out, follow_symlinks=True)
    lex = dest / "lexnames"
    text = lexnames_text()
    if not (lex.is_file() and lex.read_text(encoding="utf-8") == text):
        lex.write_text(text, encoding="utf-8")
    try:
        import nltk

        if str(root) not in nltk.data.path:
            nltk.data.path.append(str(root))
    except ImportError:  # pragma: no cover - nltk is an optional extra
        pass
    return dest


def find_wordnet_dir() -> Path:
    """The ``corpora/wordnet`` directory NLTK would use.

    Raises:
        WordNetNotFoundError: when it is missing or incomplete, saying how to install it.
    """
    import nltk

    try:
        found = nltk.data.find("corpora/wordnet")
    except LookupError:
        raise WordNetNotFoundError(
            f"NLTK's WordNet was not found (searched {nltk.data.path}); METEOR needs it: {SETUP_HINT}"
        ) from None
    path = Path(str(found))
    if path.is_dir():
        missing = [f for f in (*WORDNET_FILES, "lexnames") if not (path / f).is_file()]
        if missing:
            raise WordNetNotFoundError(f"{path} is incomplete (missing {missing}): {SETUP_HINT}")
    return path


_READERS: dict[str, object] = {}


def get_wordnet():
    """A loaded NLTK ``WordNetCorpusReader`` (cached per directory).

    Raises:
        WordNetNotFoundError: with the installation hint when WordNet is missing.
    """

    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    path = find_wordnet_dir()
    key = str(path)
    if key not in _READERS:
        with warnings.catch_warnings():  # "multilingual functions are not available": not needed
            warnings.simplefilter("ignore")
            try:
                _READERS[key] = WordNetCorpusReader(key, None)
            except (OSError, ValueError, AssertionError) as exc:
                raise WordNetNotFoundError(
                    f"could not load WordNet from {key} ({exc}): {SETUP_HINT}"
                ) from exc
    return _READERS[key]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flythinker.evaluation.wordnet_setup",
        description="Copy WordNet 3.0 from the Debian packages into an NLTK data "
        "folder and generate its lexnames file (offline, idempotent).",
    )
    parser.add_argument(
        "--target",
        default=None,
        help="NLTK data folder (default: first entry of $NLTK_DATA, else ~/nltk_data)",
    )
    parser.add_argument(
        "--source",
        default=DEBIAN_WORDNET_DIR,
        help=f"folder with the WordNet database files (default: {DEBIAN_WORDNET_DIR})",
    )
    args = parser.parse_args(argv)
    try:
        dest = install_wordnet(args.target, args.source)
    except WordNetNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"WordNet installed in {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
