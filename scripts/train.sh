#!/usr/bin/env bash
# The main job on a fresh machine: set up .venv, train the driving recipe (examples/drive.yml: a camera-only
# CnnPolicy, each action held 4 ticks, 3-step returns, 12,500 decisions = 50k simulator ticks) on CarlaScenario0-v0 with the
# embedded surrogate simulator (no CARLA server needed), then drive the trained policy on 10 seeds training never
# saw (1000-1009), print each episode and write the camera view of those episodes to <run dir>/drive.gif.
# The run directory is runs/drive/drive_<n>/ (TensorBoard logs, config.json, model.zip; check it with
# `sb3-td3-cnnclip report <run dir>`). Wall time on 2 cores: see README (Set-up). The first run also installs the
# packages. Extra arguments go to `sb3-td3-cnnclip train` (e.g. --seed 1, or --max-timesteps 500 for a short try).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh "surrogate,report,yaml"
log_dir=runs/drive
sb3-td3-cnnclip train --config examples/drive.yml --seed 0 --log-dir "$log_dir" "$@"
run_dir=$(ls -d "$log_dir"/drive_* | sort -V | tail -n 1)
sb3-td3-cnnclip evaluate "$run_dir" --episodes 10 --seed 1000 --video "$run_dir/drive.gif"
