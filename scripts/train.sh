#!/usr/bin/env bash
# The main job on a fresh machine: set up .venv, then train TD3CnnClip on CarlaScenario0-v0 with the embedded
# surrogate simulator (no CARLA server needed), writing TensorBoard logs under runs/quickstart/ (check a run with
# `sb3-td3-cnnclip report <run dir>`). Batch 64 keeps it to a few minutes on a 2-core CPU.
# Extra arguments go to `sb3-td3-cnnclip train` (e.g. --max-timesteps 5000 --seed 1).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh "surrogate,report,yaml"
sb3-td3-cnnclip train --scenario 0 --simulator surrogate --max-timesteps 2000 --batch-size 64 --log-dir runs/quickstart "$@"
