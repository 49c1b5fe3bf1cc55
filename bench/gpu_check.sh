#!/usr/bin/env bash
# One run of at most 8 minutes on a machine with an NVIDIA GPU: checks that cnnlab's CUDA paths (bf16/fp16
# autocast, channels_last, torch.compile, TTA evaluation, export) work and match the CPU within tolerance,
# and times the Fashion-MNIST recipes on the GPU. The checks, tolerances and options are in
# bench/gpu_check.py; this wrapper finds the repository's python and holds the wall-clock limit.
#
#   bash bench/gpu_check.sh [--data-dir DIR] [--checks LIST] [--best-epochs N] [--budget S] [--work DIR]
#   bash bench/gpu_check.sh --device cpu [...]   # a rehearsal without a GPU: the checks on the CPU, against the CPU
#   bash bench/gpu_check.sh --help
#
# Exit status: 0 no check failed, 1 a check failed (or the time limit hit), 2 no CUDA device here (without
# --device cpu), a bad option or environment variable, or a package cnnlab needs is missing for this python; 130
# after a Ctrl-C, 143 after a SIGTERM (the checks measured so far are printed, with a FAIL line "interrupted").
# Environment: GPU_CHECK_LIMIT (seconds to the stop signal, a number above 0, default 470) and PYTHON (the
# interpreter: a path or a command on PATH) override the defaults.
set -euo pipefail

# 8 minutes as a hard stop: SIGUSR1 at 470 s (gpu_check.py then prints its summary; not SIGTERM, which a
# training run takes over to stop at its next step), SIGKILL 10 s later. gpu_check.py plans for its own
# --budget (450 s by default) inside it and skips slow parts when that runs short; this limit only catches a
# hang (a stuck compile, a driver).
limit="${GPU_CHECK_LIMIT:-470}"
kill_after=10  # seconds between timeout's SIGUSR1 and SIGKILL
# Checked here: timeout itself would exit 125 on a bad interval, and take 0 for no limit at all.
if ! [[ "$limit" =~ ^[0-9]+(\.[0-9]+)?$ ]] || [[ "$limit" =~ ^[0.]+$ ]]; then
  echo "error: GPU_CHECK_LIMIT='$limit' is not a number of seconds above 0 (the wall-clock limit, default 470). Set it to one, such as GPU_CHECK_LIMIT=600, or unset it." >&2
  exit 2
fi

# Run from the repository root whatever the caller's directory: recipes/ and .venv are found from there. The
# caller's directory goes along, so that gpu_check.py reads a relative --data-dir or --work from where it was typed.
export GPU_CHECK_CALLER_DIR="$PWD"
export GPU_CHECK_STOP_AFTER="$limit"  # gpu_check.py fits --budget (and its default) inside the limit
here="$(cd -- "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")" && pwd)"  # through a symlink too
cd -- "$here/.."

if [[ -n "${PYTHON:-}" ]]; then
  python="$PYTHON"
  # A missing interpreter would end the run with the shell's 127 (timeout's, 126 or 127), outside the statuses above.
  if ! command -v -- "$python" >/dev/null 2>&1 || [[ -d "$python" ]]; then
    echo "error: PYTHON='$python' is not a python this shell can run (no such file, not executable, or not on PATH). Set PYTHON to a python with torch (such as PYTHON=python3), or unset it to use the checkout's .venv/bin/python." >&2
    exit 2
  fi
elif [[ -x .venv/bin/python ]]; then
  python=.venv/bin/python  # the checkout's environment: torch 2.14.1 and cnnlab installed (make test creates it)
elif command -v python3 >/dev/null 2>&1; then
  python=python3
else
  echo "cannot run here: no .venv/bin/python in $(pwd) and no python3 on PATH. Create the environment with 'make test' or install python3 with torch." >&2
  exit 2
fi

for arg in "$@"; do
  if [[ "$arg" == "-h" || "$arg" == "--help" ]]; then
    echo "bench/gpu_check.sh runs bench/gpu_check.py with $python under a wall-clock limit: SIGUSR1 after ${limit} s (GPU_CHECK_LIMIT), SIGKILL ${kill_after} s later."
    echo
    exec "$python" bench/gpu_check.py --help
  fi
done

if ! command -v timeout >/dev/null 2>&1; then
  echo "cannot run here: the 'timeout' command (GNU coreutils) is missing, and without it the ${limit} s limit cannot hold." >&2
  exit 2
fi

status=0
# --foreground: without it timeout moves the python into a process group of its own, which a terminal's Ctrl-C never
# reaches (the run went on to its end). With it Ctrl-C stops the checks, exit 130; timeout passes the Ctrl-C on too,
# so a training run may see two and stop at once rather than at its next step (the checks' runs are scratch).
# In the background, waited for: bash runs a trap only between commands, so a SIGTERM sent to this script alone
# (kill PID) waited for the checks to end while they ran on; now it is passed on at once. The terminal's Ctrl-C
# reaches the checks itself (the same process group), so this shell only goes on waiting for them.
timeout --foreground --signal=USR1 --kill-after="$kill_after" "$limit" "$python" bench/gpu_check.py "$@" &
checks=$!
trap 'kill -TERM "$checks" 2>/dev/null' TERM
trap ':' INT
while true; do
  wait "$checks" && status=0 || status=$?
  kill -0 "$checks" 2>/dev/null || break  # wait returned for a signal this shell trapped: the checks still run
done
if [[ $status -eq 124 || $status -eq 137 ]]; then
  echo "FAIL  wall-clock limit: bench/gpu_check.py was stopped after ${limit} s (exit $status); the lines above are what it measured." >&2
  exit 1
fi
exit "$status"
