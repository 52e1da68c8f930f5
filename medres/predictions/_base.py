"""What every record of a prediction folder shares: frozen pydantic models that ignore
unknown keys, one bounded JSON reader that names the file, one compact JSON writer."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from medres.errors import OutputError
from medres.io.files import read_regular_bytes
from medres.io.units import keys_in_mm, keys_in_unit
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


class MeasuredRecord(Record):
    """A record whose JSON names its sizes in the scan's length unit (``area_px2`` for an
    image measured in pixels, :mod:`medres.io.units`); in memory they keep their ``_mm``
    names. Subclasses say their unit in :meth:`unit`."""

    @model_validator(mode="before")
    @classmethod
    def _measurements_in_mm(cls, data: Any) -> Any:
        """A pixel-measured file's ``*_px`` keys read back under their ``*_mm`` names."""
        return keys_in_mm(data) if isinstance(data, dict) else data

    def unit(self) -> str:
        """The length unit the JSON names its sizes in (``mm`` or ``px``)."""
        return "mm"

    def to_json(self) -> dict[str, Any]:
        """The record as its file stores it: sizes named in its unit."""
        data: dict[str, Any] = keys_in_unit(self.model_dump(mode="json"), self.unit())
        return data


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
