"""What every record of a prediction folder shares: frozen pydantic models that ignore
unknown keys, one bounded JSON reader that names the file, one compact JSON writer."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from medres.errors import OutputError
from medres.io.files import read_regular_bytes
from medres.limits import MAX_RECORD_BYTES


def compact_json(data: Any) -> str:
    """Indented JSON with short lists of numbers or strings kept on one line."""
    text = json.dumps(data, indent=2)
    return (
        re.sub(
            r"\[\s+([^\[\]{}]*?)\s+\]",
            lambda m: "[" + re.sub(r",\s*\n\s*", ", ", m.group(1)) + "]",
            text,
        )
        + "\n"
    )


class Record(BaseModel):
    """Frozen, ignores keys it does not know (files of other medres versions)."""

    model_config = ConfigDict(frozen=True, extra="ignore")


def read_json_record(path: Path, record: type[Any], what: str) -> Any:
    """Read a record through medres's bounded opener (regular files only, capped size)."""
    data = read_regular_bytes(path, limit=MAX_RECORD_BYTES, error=OutputError, what=what)
    try:
        return record.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "top level"
        raise OutputError(
            f"{path}: not a medres {what} ({where}: {first['msg']}); re-run medres predict"
        ) from None


__all__ = ["Record", "compact_json", "read_json_record"]
