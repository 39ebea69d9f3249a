"""A stand-in for the user's copy of the official AlpsBench code (commit 0fd801c layout).

Our own short prompts in the files and variables the official code uses, so the prompt reader and
the judges can be tested without the benchmark's text (which this repository must not hold).
"""

from __future__ import annotations

from pathlib import Path

MEMORY_SYSTEM = "FAKE MEMORY JUDGE: review pairs, missing and extra items; reply with JSON only."
MEMORY_USER_PREFIX = "FAKE payload follows.\n"
T4_FOLDERS = ("ability1", "ability2_general", "ability3", "ability4", "ability5")

COMPARE = """import json


def build_llm_judge_from_config(config_path="configs/api.json", model_id=None):
    def judge(payload):
        system = ("FAKE MEMORY JUDGE: review pairs, missing and extra items; "
                  "reply with JSON only.")
        user = (
            "FAKE payload follows.\\n"
            f"{json.dumps(payload, ensure_ascii=False)}"
        )
        return system, user

    return judge
"""


def t4_prompt(folder: str) -> str:
    return f"FAKE T4 JUDGE {folder}: score the answer; reply with JSON only."


def write_official_code(root: Path) -> Path:
    """Write the fake official tree under ``root`` and return ``root``."""
    agents = root / "src" / "agents"
    agents.mkdir(parents=True, exist_ok=True)
    (agents / "compare_memory_records.py").write_text(COMPARE, encoding="utf-8")
    for folder in T4_FOLDERS:
        d = agents / "task4_memory_grounded_qa" / folder
        d.mkdir(parents=True, exist_ok=True)
        (d / "curator.py").write_text(f'JUDGE_PROMPT = """{t4_prompt(folder)}"""\n', encoding="utf-8")
    return root
