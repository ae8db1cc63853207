#!/usr/bin/env bash
# The main job on a fresh machine: set up .venv, then train TD3CnnClip on CarlaScenario0-v0 with the embedded
# surrogate simulator (no CARLA server needed), writing TensorBoard logs under runs/, then check them with `report`.
# Extra arguments go to `sb3-td3-cnnclip train` (e.g. --max-timesteps 5000 --seed 1).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh "surrogate,report"
sb3-td3-cnnclip train --scenario 0 --simulator surrogate --max-timesteps 2000 --log-dir runs/quickstart "$@"
