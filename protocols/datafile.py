"""Reading the data files (catalog, HJ 212 codes, detector settings, dose limits, record rules,
sterilization programmes): YAML validated by a pydantic model.

One loader, so every file fails the same way: the path, then each problem with the entry's
location (``limits.2.scope: Input should be ...``), as the caller's error type (a ``ValueError``
subclass) that the platform shows at start.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def load_yaml_model(
    path: Path, model: type[M], error: Callable[[str], Exception] = ValueError
) -> M:
    """``path`` parsed as YAML and validated as ``model``; ``error(message)`` is raised with
    the file and every problem's entry named."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise error(f"{path}: cannot read: {exc}") from exc
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise error(f"{path}: {problems}") from exc


def duplicates(names: Iterable[str]) -> list[str]:
    """The names that occur more than once, sorted (for a validator's message)."""
    seen: set[str] = set()
    dupes: set[str] = set()
    for name in names:
        (dupes if name in seen else seen).add(name)
    return sorted(dupes)
