#!/usr/bin/env bash
# Install WordNet 3.0 for NLTK (METEOR) without network access to the NLTK downloader.
#
#   bash scripts/setup_wordnet.sh [NLTK_DATA_DIR]
#
# 1. apt-get installs the Debian packages wordnet-base and wordnet-sense-index when
#    /usr/share/wordnet lacks their files (needs root or sudo; skipped when already present);
# 2. copies (never links) the database files into $DIR/corpora/wordnet, where
#    DIR = the argument, else the first entry of $NLTK_DATA, else $HOME/nltk_data;
# 3. generates the `lexnames` file NLTK needs (the 45 WordNet lexicographer files) — it is not
#    downloaded. The same table lives in flythinker/evaluation/wordnet_setup.py (a test keeps
#    them equal).
# Idempotent: running it again changes nothing.
set -euo pipefail

SRC=/usr/share/wordnet
FILES="cntlist.rev index.sense index.adj index.adv index.noun index.verb data.adj data.adv data.noun data.verb adj.exc adv.exc noun.exc verb.exc"

target="${1:-}"
if [ -z "$target" ]; then
    target="${NLTK_DATA:-}"
    target="${target%%:*}"
fi
if [ -z "$target" ]; then
    target="$HOME/nltk_data"
fi

missing=0
for f in $FILES; do
    [ -f "$SRC/$f" ] || missing=1
done
if [ "$missing" = 1 ]; then
    echo "setup_wordnet: installing Debian packages wordnet-base wordnet-sense-index" >&2
    if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else
        echo "setup_wordnet: need root (or sudo) to apt-get install wordnet-base wordnet-sense-index" >&2
        exit 1
    fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends wordnet-base wordnet-sense-index
fi

dest="$target/corpora/wordnet"
mkdir -p "$dest"
for f in $FILES; do
    if ! cmp -s "$SRC/$f" "$dest/$f"; then
        rm -f "$dest/$f"
        cp -L "$SRC/$f" "$dest/$f"
    fi
done

lex="$(mktemp)"
i=0
for name in adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body \
    noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location noun.motive \
    noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process noun.quantity noun.relation \
    noun.shape noun.state noun.substance noun.time verb.body verb.change verb.cognition verb.communication \
    verb.competition verb.consumption verb.contact verb.creation verb.emotion verb.motion verb.perception \
    verb.possession verb.social verb.stative verb.weather adj.ppl; do
    case "${name%%.*}" in noun) cat=1 ;; verb) cat=2 ;; adj) cat=3 ;; adv) cat=4 ;; esac
    printf '%02d\t%s\t%d\n' "$i" "$name" "$cat" >> "$lex"
    i=$((i + 1))
done
if ! cmp -s "$lex" "$dest/lexnames"; then
    rm -f "$dest/lexnames"
    cp "$lex" "$dest/lexnames"
fi
rm -f "$lex"
echo "setup_wordnet: WordNet ready in $dest"
