"""``python -m medres``: the ``medres`` command line (what ``torchrun -m medres`` starts)."""

from __future__ import annotations

from medres.cli.app import main

if __name__ == "__main__":
    main()
