"""One import for the data pipeline: readers → prompt builder → collators, and the synthetic set.

::

    from flythinker.train.data import read_records, PromptBuilder, encode_records, PaddingCollator

    records = read_records("user_train.jsonl")               # list[PersonalizedRecord]
    builder = PromptBuilder(tokenizer, max_length=2048, max_target_tokens=512)
    features = encode_records(records, builder)             # input_ids / labels / prompt_length ...
    collate = PaddingCollator(tokenizer.pad_token_id)       # or PackingCollator(2048, pad_id)
"""

from flythinker.train.collators import IGNORE_INDEX, PackingCollator, PaddingCollator, pack_indices
from flythinker.train.prompts import (
    DEFAULT_PROFILE_HEADER,
    DEFAULT_SYSTEM_PROMPT,
    PromptBuilder,
    PromptConfig,
    drop_order,
    encode_records,
    relevance_scores,
    render_profile,
    render_profile_item,
)
from flythinker.train.readers import (
    USER_ID_FIELDS,
    detect_task,
    normalize_record,
    read_records,
    read_splits,
    write_jsonl,
)
from flythinker.train.records import TASK_SCHEMAS, TASKS, PersonalizedRecord
from flythinker.train.synthetic import STYLES, SYNTHETIC_NOTE, make_synthetic_dataset, write_synthetic_dataset

__all__ = [
    "DEFAULT_PROFILE_HEADER",
    "DEFAULT_SYSTEM_PROMPT",
    "IGNORE_INDEX",
    "STYLES",
    "SYNTHETIC_NOTE",
    "TASKS",
    "TASK_SCHEMAS",
    "USER_ID_FIELDS",
    "PackingCollator",
    "PaddingCollator",
    "PersonalizedRecord",
    "PromptBuilder",
    "PromptConfig",
    "detect_task",
    "drop_order",
    "encode_records",
    "make_synthetic_dataset",
    "normalize_record",
    "pack_indices",
    "read_records",
    "read_splits",
    "relevance_scores",
    "render_profile",
    "render_profile_item",
    "write_jsonl",
    "write_synthetic_dataset",
]
