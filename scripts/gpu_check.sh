#!/usr/bin/env bash
# Check medres's GPU path (--device cuda) against the CPU on one CUDA GPU, in at most
# 8 minutes, and print one table: 1-minute LGG and BraTS members trained on the GPU, the
# LGG test patients and a synthetic 512x512x300 CT (3-member demo ensemble) predicted on
# the GPU and on the CPU, their masks compared (Dice >= 0.99), seconds and peak GPU memory
# per stage. The work is done by benchmarks/gpu_check.py (its docstring lists the stages).
#
# Usage, from anywhere:
#   bash scripts/gpu_check.sh             # on the GPU machine
#   bash scripts/gpu_check.sh --dry-run   # on a CPU machine: small sizes, --device cpu
#
# Python: the first of $PYTHON, build/gpu-venv/bin/python, .venv/bin/python, python3
# whose torch sees a GPU (any torch for --dry-run) and that imports medres's dependencies
# (medres itself comes from the working tree through PYTHONPATH). When one has a CUDA torch
# but lacks the dependencies, `pip install -e .` adds them (into its virtual environment,
# or into build/gpu-venv made on top of it with --system-site-packages); when none has a
# CUDA torch, build/gpu-venv gets `pip install $TORCH_SPEC` first, on its own (with
# --index-url in one command with medres, pip would look for every dependency on the
# torch index). Both need network access; without it, give PYTHON=... a python that has
# a CUDA torch and the dependencies installed already.
#
# Environment:
#   TORCH_SPEC          [torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126]
#                       (a CUDA 12.x build of torch 2.13; installed on its own, before medres)
#   MEDRES_DATA         the real data [../shared/data from the repository root]
#   GPU_CHECK_BUDGET_S  the whole run, setup included [480]
#   GPU_CHECK_WORK      working folder [a new temporary folder]
#   GPU_CHECK_VENV      where an environment is made when needed [build/gpu-venv]
# Exit status: 0 every stage ran and every check passed; 1 a check or a stage failed or
# the budget ran out; 2 no CUDA GPU (or no data, or no usable python).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
START=$SECONDS
BUDGET_S="${GPU_CHECK_BUDGET_S:-480}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126}"
DATA="${MEDRES_DATA:-$ROOT/../shared/data}"
VENV="${GPU_CHECK_VENV:-$ROOT/build/gpu-venv}"  # build/ is git-ignored
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

NEED_CUDA=1
CHECK_ARGS=(--device cuda --minutes 1)  # each member: medres train --max-minutes 1
if [[ "${1:-}" == "--dry-run" ]]; then
    NEED_CUDA=0
    CHECK_ARGS=(--device cpu --dry-run)  # members of 0.1 minute
fi

log() { echo "[gpu_check.sh] $*" >&2; }

has_torch() {  # has_torch PYTHON: torch imports (and sees a GPU unless a dry run)
    "$1" -c "import sys, torch; sys.exit(0 if $NEED_CUDA == 0 or torch.cuda.is_available() else 1)" \
        >/dev/null 2>&1
}

has_deps() {  # has_deps PYTHON: medres and its dependencies import
    "$1" -c "import monai, nibabel, pydicom, typer, medres.cli.app, medres.inference.batch, medres.training.run" \
        >/dev/null 2>&1
}

in_venv() {  # in_venv PYTHON: it runs in a virtual environment
    "$1" -c 'import sys; sys.exit(0 if sys.prefix != sys.base_prefix else 1)' >/dev/null 2>&1
}

pick_python() {  # the first usable python, or nothing
    local candidate
    for candidate in "${PYTHON:-}" "$VENV/bin/python" "$ROOT/.venv/bin/python" python3; do
        [[ -n "$candidate" ]] && command -v "$candidate" >/dev/null 2>&1 || continue
        if has_torch "$candidate" && has_deps "$candidate"; then
            echo "$candidate"
            return 0
        fi
    done
    return 0
}

install_env() {  # make build/gpu-venv: on a python with a CUDA torch when there is one
    local base="" candidate
    for candidate in "${PYTHON:-}" "$ROOT/.venv/bin/python" python3; do
        [[ -n "$candidate" ]] && command -v "$candidate" >/dev/null 2>&1 || continue
        if has_torch "$candidate"; then base="$candidate"; break; fi
    done
    if [[ -n "$base" ]] && in_venv "$base"; then  # a venv's packages: not "system" ones
        log "$base (a virtual environment) has torch with CUDA; adding medres's dependencies"
        "$base" -m pip install --quiet -e "$ROOT" "pytest>=8" || return 1
        return 0
    elif [[ -n "$base" ]]; then
        log "$base has torch with CUDA; adding medres's dependencies in $VENV"
        [[ -x "$VENV/bin/python" ]] || "$base" -m venv --system-site-packages "$VENV" || return 1
    else
        log "no python with a CUDA torch; installing $TORCH_SPEC into $VENV"
        [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV" || return 1
        # shellcheck disable=SC2086  # TORCH_SPEC holds several words on purpose
        "$VENV/bin/pip" install --quiet $TORCH_SPEC || return 1
    fi
    # (set -e does not apply inside a function called as an if condition: || return 1)
    "$VENV/bin/pip" install --quiet -e "$ROOT" "pytest>=8" || return 1
}

PY="$(pick_python)"
if [[ -z "$PY" ]]; then
    if ! install_env; then
        log "installing failed (no network on this machine?): give PYTHON=/path/to/python" \
            "with a CUDA build of torch and medres's dependencies (pip install -e .)"
        exit 2
    fi
    PY="$(pick_python)"
fi
if [[ -z "$PY" ]]; then
    if [[ $NEED_CUDA == 1 ]]; then
        log "no python here whose torch sees a CUDA GPU (nvidia-smi below, if present);" \
            "set TORCH_SPEC to a CUDA build matching the driver, or run with --dry-run"
        command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi || true
    else
        log "no python with torch and medres's dependencies; run make dev first"
    fi
    exit 2
fi

SETUP_S=$((SECONDS - START))
LEFT_S=$((BUDGET_S - SETUP_S))
log "python $PY ($("$PY" -c 'import torch; print("torch", torch.__version__)')), setup ${SETUP_S} s," \
    "${LEFT_S} s left of ${BUDGET_S} s"
if ((LEFT_S < 120)); then
    log "the setup took ${SETUP_S} s: too little of the budget is left for the checks"
    exit 1
fi
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2 || true
fi

WORK_ARGS=()
[[ -n "${GPU_CHECK_WORK:-}" ]] && WORK_ARGS=(--work "$GPU_CHECK_WORK")
# the stages stop at --deadline-s; timeout is the backstop (the table needs ~10 s)
RC=0
timeout --kill-after=10 "$((LEFT_S - 5))" "$PY" "$ROOT/benchmarks/gpu_check.py" \
    "${CHECK_ARGS[@]}" --data "$DATA" --deadline-s "$((LEFT_S - 25))" \
    ${WORK_ARGS[@]+"${WORK_ARGS[@]}"} || RC=$?
if ((RC == 124 || RC == 137)); then
    log "the checks ran past the ${BUDGET_S} s budget and were stopped"
    exit 1
fi
log "finished in $((SECONDS - START)) s (exit $RC)"
exit "$RC"
