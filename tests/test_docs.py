"""The user guide's pipeline reference names every config key the code accepts."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from medres.pipeline import PipelineConfig
from tests.conftest import REPO


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        annotation: Any = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += _keys(annotation, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def test_config_reference_lists_every_key() -> None:
    guide = (REPO / "docs" / "user-guide.md").read_text()
    reference = guide.split("### Pipeline config reference", 1)[1].split("\n### ", 1)[0]
    missing = [
        key
        for key in _keys(PipelineConfig)
        if f"`{key}`" not in reference and f"`{key.rsplit('.', 1)[-1]}`" not in reference
    ]
    assert missing == []
    # and it documents nothing the code does not accept
    documented = {line.split("`")[1] for line in reference.splitlines() if line.startswith("| `")}
    top = {k.split(".")[0] for k in _keys(PipelineConfig)}
    assert {d.split(".")[0] for d in documented if "." in d or d in top} <= top


def test_every_cli_option_is_in_the_user_guide() -> None:
    """Each command's options (their long names) appear in docs/user-guide.md."""
    import typer.main

    from medres.cli.app import app

    guide = (REPO / "docs" / "user-guide.md").read_text()
    group: Any = typer.main.get_command(app)  # typer's bundled click group
    missing = []
    for name, command in group.commands.items():
        assert f"medres {name}" in guide, f"command {name} is not in the guide"
        for param in command.params:
            if getattr(param, "param_type_name", "") != "option":
                continue
            names = [n for n in param.opts + param.secondary_opts if n.startswith("--")]
            if names and not any(n in guide for n in names) and "--help" not in names:
                missing.append(f"{name} {names[0]}")
    assert missing == []
