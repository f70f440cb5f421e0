"""Reading the alerting data files (dose limits, record rules, sterilization programmes).

One loader, so every file fails the same way: the path, then each problem with the entry's
location (``limits.2.scope: Input should be ...``), as a ``ValueError`` the platform shows at start.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def load_yaml_model(path: Path, model: type[M]) -> M:
    """``path`` parsed as YAML and validated as ``model``; errors name the file and the entry."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read: {exc}") from exc
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ValueError(f"{path}: {problems}") from exc


def duplicates(names: Iterable[str]) -> list[str]:
    """The names that occur more than once, sorted (for a validator's message)."""
    seen: set[str] = set()
    dupes: set[str] = set()
    for name in names:
        (dupes if name in seen else seen).add(name)
    return sorted(dupes)
