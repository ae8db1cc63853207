#!/usr/bin/env bash
# The main job on a fresh machine: set up .venv, then train TD3CnnClip on CarlaScenario0-v0 with the embedded
# surrogate simulator (no CARLA server needed), writing TensorBoard logs under runs/quickstart/ (check a run with
# `sb3-td3-cnnclip report <run dir>`). Measured on a 2-core CPU shared with other jobs (load average about 10): the
# training (2000 steps, 1800 updates at batch 64) took 16.6 min of wall time for 5.3 min of CPU time
# (benchmarks/results/train_sh.md); a trial on a fresh clone took 8.5 min. The first run also installs the packages.
# SB3's training table is off (--table-interval 0), so the progress bar shows how far it is.
# Extra arguments go to `sb3-td3-cnnclip train` (e.g. --max-timesteps 5000 --seed 1).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh "surrogate,report,yaml"
sb3-td3-cnnclip train --scenario 0 --simulator surrogate --max-timesteps 2000 --batch-size 64 --log-dir runs/quickstart "$@"
