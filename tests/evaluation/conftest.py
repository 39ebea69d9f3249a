"""WordNet for the METEOR tests.

CI runs ``bash scripts/setup_wordnet.sh`` first. If WordNet is not where NLTK looks but the Debian
files exist, a private copy is installed into a temporary folder; otherwise the METEOR tests fail
with the setup hint (set FLYTHINKER_ALLOW_NO_WORDNET=1 to skip them instead).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def wordnet(tmp_path_factory):
    from flythinker.evaluation.wordnet_setup import (
        DEBIAN_WORDNET_DIR,
        WordNetNotFoundError,
        get_wordnet,
        install_wordnet,
    )

    try:
        return get_wordnet()
    except WordNetNotFoundError as exc:
        if Path(DEBIAN_WORDNET_DIR, "data.noun").is_file():
            install_wordnet(tmp_path_factory.mktemp("nltk_data"))
            return get_wordnet()
        if os.environ.get("FLYTHINKER_ALLOW_NO_WORDNET") == "1":
            pytest.skip(str(exc))
        pytest.fail(str(exc))
