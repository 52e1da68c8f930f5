"""From bytes, text or a parsed mapping to a validated :class:`PipelineConfig`.

Validation errors become one line listing each bad key with its dotted path
(:func:`format_validation_errors`), prefixed by the file they came from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from medres.errors import ConfigError
from medres.pipeline.caps import _short
from medres.pipeline.config import PipelineConfig
from medres.pipeline.loader import decode_config_text, parse_yaml, read_config_bytes

#: How many problems one error message lists before "... and N more".
_MAX_LISTED = 5


def format_validation_errors(exc: ValidationError) -> str:
    """One line listing each bad key with its dotted path (the first few of many).

    Example: ``training.batchsize: unknown key (...); model: required key is missing``.
    """
    parts = []
    errors = exc.errors()
    for err in errors[:_MAX_LISTED]:
        where = ".".join(_short(p) for p in err["loc"])
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; see docs/user-guide.md)"
        elif err["type"] == "missing":
            message = "required key is missing"
        elif err["type"] == "value_error":
            message = message.removeprefix("Value error, ")
            if message.startswith(".") and where:  # a validator naming a key inside its field
                where, message = where + message.split(":", 1)[0], message.split(":", 1)[1][1:]
        parts.append(f"{where}: {message}" if where else message)
    if len(errors) > _MAX_LISTED:
        parts.append(f"... and {len(errors) - _MAX_LISTED} more")
    return "; ".join(parts)


def parse_pipeline(data: Any, *, source: str = "<config>") -> PipelineConfig:
    """Validate a parsed YAML/JSON mapping into a :class:`PipelineConfig`.

    Raises:
        ConfigError: Listing every bad key with its path, prefixed by ``source``.
    """
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: a pipeline must be a mapping of keys, got {type(data).__name__}"
        )
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            f"{source}: invalid pipeline config: {format_validation_errors(exc)}"
        ) from None


def pipeline_from_bytes(data: bytes, *, source: str) -> PipelineConfig:
    """Decode, parse (see :func:`parse_yaml`) and validate the bytes of a pipeline file.

    Raises:
        ConfigError: Not UTF-8, not valid YAML, refused as too large, or invalid config.
    """
    return parse_pipeline(
        parse_yaml(decode_config_text(data, source=source), source=source), source=source
    )


def load_pipeline(path: str | Path) -> PipelineConfig:
    """Read and validate a pipeline YAML file.

    The file is read with :func:`read_config_bytes` (regular files up to
    :data:`~medres.limits.MAX_CONFIG_BYTES` only) and parsed with :func:`parse_yaml`.

    Raises:
        ConfigError: Missing file, not a regular file, too large, YAML syntax error, alias
            bomb, unknown keys or bad values; the message starts with ``path``.
    """
    path = Path(path)
    return pipeline_from_bytes(read_config_bytes(path, what="pipeline file"), source=str(path))
