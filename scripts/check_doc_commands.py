"""Run every concrete ``medres`` command and Python example of README.md and docs/*.md.

Commands are taken from fenced code blocks: lines starting with ``medres`` or
``.venv/bin/medres`` (``\\`` continuations joined, ``# comments`` dropped). A line with a
placeholder (an upper-case word such as ``SCANS`` or ``MODEL_DIR``, or ``[...]`` option
syntax) is a synopsis, not an example, and is listed as skipped. Python blocks that
import medres are run too. Everything runs in a scratch copy of the repository's tracked
files, in document order, so an example may use what an earlier one wrote.

    python scripts/check_doc_commands.py [--quick-train] [--keep DIR]

``--quick-train`` adds ``--max-minutes 0.05`` to ``medres train`` examples (a few
iterations per member instead of minutes), so the examples that use the model still run.

Exit code 1 when any example fails.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = (
    "README.md",
    "docs/user-guide.md",
    "docs/architecture.md",
    "docs/scaling-out.md",
    "docs/detection.md",
    "docs/runtimes.md",
)
PLACEHOLDER = re.compile(r"(^|[\s=/])[A-Z][A-Z0-9_]+($|[\s/])|\[|\.\.\.|…|<")


@dataclass
class Example:
    """One runnable example of a document."""

    document: str
    line: int
    kind: str  # "shell" or "python"
    text: str


def extract(document: Path) -> tuple[list[Example], list[str]]:
    """Examples of one Markdown file, and the synopsis lines that were skipped."""
    examples: list[Example] = []
    skipped: list[str] = []
    lines = document.read_text(encoding="utf-8").splitlines()
    in_block, language, block, start = False, "", [], 0
    for number, line in enumerate(lines, start=1):
        if line.startswith("```"):
            if not in_block:
                in_block, language, block, start = True, line[3:].strip(), [], number
                continue
            in_block = False
            if language == "python" and any("medres" in b for b in block):
                examples.append(Example(str(document.name), start, "python", "\n".join(block)))
            elif language in ("", "sh", "bash"):
                joined: list[str] = []
                for raw in block:
                    if joined and joined[-1].endswith("\\"):
                        joined[-1] = joined[-1][:-1] + " " + raw.strip()
                    else:
                        joined.append(raw)
                for offset, command in enumerate(joined):
                    command = command.split(" #", 1)[0].strip()
                    if not re.match(r"^(\.venv/bin/)?medres\s", command):
                        continue
                    if PLACEHOLDER.search(command.split(" ", 2)[-1]):
                        skipped.append(f"{document.name}:{start + offset + 1}: {command}")
                        continue
                    examples.append(
                        Example(str(document.name), start + offset + 1, "shell", command)
                    )
            continue
        if in_block:
            block.append(line)
    return examples, skipped


def scratch_copy(target: Path) -> None:
    """The tracked files of the repository, and its virtual environment linked in."""
    files = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    for name in files:
        source = REPO / name
        if source.is_file():
            destination = target / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)
    (target / ".venv").symlink_to(REPO / ".venv")


def run(example: Example, cwd: Path, *, timeout: float) -> tuple[bool, str, float]:
    start = time.perf_counter()
    if example.kind == "python":
        args = [sys.executable, "-c", example.text]
    else:
        command = example.text
        if command.startswith("medres"):
            command = ".venv/bin/" + command
        args = ["bash", "-c", command]
    try:
        proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout:.0f} s", time.perf_counter() - start
    ok = proc.returncode == 0
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] if not ok else []
    return ok, f"exit {proc.returncode} {tail}", time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick-train", action="store_true", help="train examples with --max-minutes 0.05"
    )
    parser.add_argument("--keep", type=Path, default=None, help="run in this folder, keep it")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    examples: list[Example] = []
    skipped: list[str] = []
    for name in DOCUMENTS:
        found, synopsis = extract(REPO / name)
        examples += found
        skipped += synopsis
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        scratch_copy(work)
        failures = 0
        for example in examples:
            if args.quick_train and " train " in f" {example.text} ":
                example = Example(
                    example.document,
                    example.line,
                    example.kind,
                    example.text + " --max-minutes 0.05",
                )
            ok, detail, seconds = run(example, work, timeout=args.timeout)
            failures += not ok
            status = "ok  " if ok else "FAIL"
            text = example.text if example.kind == "shell" else "python example"
            print(
                f"{status}  {example.document}:{example.line}: {text} ({seconds:.1f} s)"
                + ("" if ok else f": {detail}"),
                flush=True,
            )
    print(f"{len(examples)} example(s) run, {failures} failed;", end=" ")
    print(f"{len(skipped)} synopsis line(s) skipped")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
