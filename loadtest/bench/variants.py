"""Model-repository variants for A/B scenarios (copies; the committed repository is never edited)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from common import contract


def strip_dynamic_batching(text: str) -> str:
    """Removes the ``dynamic_batching { ... }`` block (nested braces included) from a model config."""
    match = re.search(r"^[ \t]*dynamic_batching\s*\{", text, re.M)
    if match is None:
        return text
    depth, i = 0, match.end() - 1
    while i < len(text):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
        if depth == 0:
            break
    if depth:
        raise ValueError("unbalanced braces in dynamic_batching block")
    end = i + 1 if text[i : i + 1] == "\n" else i
    return text[: match.start()] + text[end:]


def repository_without_dynamic_batching(
    repository: Path, dest: Path, models: tuple[str, ...] = contract.TASK_MODELS
) -> Path:
    """Copies ``repository`` to ``dest`` with dynamic batching removed from every config of ``models``."""
    shutil.copytree(repository, dest, ignore=shutil.ignore_patterns(".tmp-*", "__pycache__"))
    for model in models:
        configs = [dest / model / "config.pbtxt", *sorted((dest / model / "configs").glob("*.pbtxt"))]
        for config in configs:
            if config.is_file():
                config.write_text(strip_dynamic_batching(config.read_text()))
    return dest
