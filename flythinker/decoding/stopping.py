"""Stop strings: find where a row's generated text first contains one, in tokens and characters.

Checked on the host every ``check_every`` steps (never per token). A row stops at the first token
whose decoded prefix contains a stop string: its tokens end there (that token included, as in
transformers' ``StopStringCriteria``) and its text ends right after the stop string.
"""

from __future__ import annotations


def find_stop(tokenizer, token_ids: list[int], stop_strings: tuple[str, ...]) -> tuple[int, int] | None:
    """``(n_tokens, n_chars)`` of the shortest token prefix whose text contains a stop string, or None.

    ``n_chars`` is the end of the earliest stop string in ``decode(token_ids[:n_tokens])``.
    """
    if not stop_strings or not token_ids:
        return None
    text = tokenizer.decode(token_ids, skip_special_tokens=False)
    if not any(s in text for s in stop_strings):
        return None
    low, high = 1, len(token_ids)  # the shortest prefix containing a stop string (monotone in n)
    while low < high:
        mid = (low + high) // 2
        if any(s in tokenizer.decode(token_ids[:mid], skip_special_tokens=False) for s in stop_strings):
            high = mid
        else:
            low = mid + 1
    prefix = tokenizer.decode(token_ids[:low], skip_special_tokens=False)
    end = min(prefix.find(s) + len(s) for s in stop_strings if s in prefix)
    return low, end
