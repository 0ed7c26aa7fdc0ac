"""Reading the small JSON files MedFusion is configured with (training configs, splits)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import InvalidInputError

__all__ = ["read_json_object"]


def read_json_object(path: str | os.PathLike, what: str) -> dict:
    """The JSON object in ``path``, or :class:`InvalidInputError` with one line naming the file.

    Parameters
    ----------
    path : path
        The file.
    what : str
        What the file is, for the messages (``"training config"``, ``"split file"``).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInputError(f"{path}: {what} not found.") from None
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"{path}: not valid JSON ({exc}).") from None
    if not isinstance(data, dict):
        raise InvalidInputError(f"{path}: a {what} is a JSON object.")
    return data
