#!/usr/bin/env bash
# One-shot GPU measurement of the update speed (issues 12 and 24), for a session with a lent GPU machine.
#
# The GPU machine has torch but not SB3 / gymnasium / highway-env / pygame-ce. Prepare here, once, from the repository
# root:
#     benchmarks/gpu_update_speed.sh --prepare
# which copies the pure-Python packages the benchmarks and tests import (stable_baselines3, sb3_contrib, gymnasium,
# cloudpickle, farama_notifications, highway_env) from this Python into .gpu_site/ (git-ignored) and downloads this
# Python's pygame-ce as a wheel for the GPU machine's Python 3.12 (the surrogate's renderer). Then run there,
# carrying that folder (device tool: carry [".gpu_site"], timeout_s 600):
#     benchmarks/gpu_update_speed.sh
# To keep uncommitted edits in the working tree off the GPU machine, run a clean export of HEAD instead: here
#     rm -rf .gpu_clean && mkdir .gpu_clean && git archive HEAD | tar -x -C .gpu_clean
# (git-ignored), carry [".gpu_site", ".gpu_clean"], and there
#     cd .gpu_clean && ln -s ../.gpu_site .gpu_site && SDL_VIDEODRIVER=offscreen bash benchmarks/gpu_update_speed.sh
# It writes into $OUT (or benchmarks/results/gpu/ without $OUT), each stage's files as soon as the stage ends:
#   log.txt                 everything printed, with the card's name first
#   tests.txt               the CUDA checks: the device replay buffer and augmentation tests, and those of
#                           test_update_speed.py whose name or parameters say cuda or waits (the host's waits per
#                           update: once per optimizer step on the default path, never inside a step on the fast path)
#   b256/                   clip_overhead.{json,md}: time per update vs SB3 TD3 (base), of B256_VARIANTS
#   kernels.json            per gradient step of a train() call at batch 256: CUDA kernel and graph launches, copies
#                           and waits (torch.profiler), and the host's time, of SB3's TD3, TD3CnnClip's default path
#                           and the fast path (compile_update=True with a DeviceReplayBuffer)
#   learn.json              learn(LEARN_STEPS) wall time per path (LEARN_PATHS, of td3, clip (TD3CnnClip's defaults),
#                           compiled+device_buffer, compiled+bf16+device_buffer), on the surrogate's CarlaScenario0-v0
#                           with action_repeat=LEARN_ACTION_REPEAT when highway-env imports there, else on the 4x84x84
#                           toy image env (the file names the env)
#   b64/                    as b256/, of B64_VARIANTS (last: the stage most likely cut by the time limit)
# Each stage has its own time limit (TEST_TIMEOUT + 150 + 60 + 200 + 60 s: 580 s with the defaults, within a 600 s
# call); on an H100 the whole script took 220 s.
# Environment: LEARN_STEPS (5000), LEARN_PATHS (compiled+device_buffer td3), LEARN_ACTION_REPEAT (1: the setting of
# the earlier figures), REPEATS (15), STEPS_PER_CALL (20), B256_VARIANTS (base clip compiled compiled_device_buffer),
# B64_VARIANTS (base clip compiled_device_buffer), TEST_TIMEOUT (110 s).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--prepare" ]]; then
    rm -rf .gpu_site && mkdir .gpu_site
    python - <<'EOF'
import importlib, pathlib, shutil
for name in ("stable_baselines3", "sb3_contrib", "gymnasium", "cloudpickle", "farama_notifications", "highway_env"):
    source = pathlib.Path(importlib.import_module(name).__file__)
    if source.name == "__init__.py":
        shutil.copytree(source.parent, f".gpu_site/{name}", ignore=shutil.ignore_patterns("__pycache__"))
    else:
        shutil.copy(source, ".gpu_site/")
EOF
    pygame_ce="pygame-ce==$(python -c 'from importlib.metadata import version; print(version("pygame-ce"))')"
    python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux2014_x86_64 -d .gpu_site/wheels "$pygame_ce"
    du -sh .gpu_site
    exit 0
fi

OUT="${OUT:-benchmarks/results/gpu}"
mkdir -p "$OUT"
python -m pip install -q --no-index --no-deps --no-compile --target /tmp/gpu_wheels .gpu_site/wheels/*.whl
export PYTHONPATH="$PWD:$PWD/.gpu_site:/tmp/gpu_wheels" OMP_NUM_THREADS=1
LEARN_STEPS="${LEARN_STEPS:-5000}" LEARN_PATHS="${LEARN_PATHS:-compiled+device_buffer td3}"
REPEATS="${REPEATS:-15}" STEPS_PER_CALL="${STEPS_PER_CALL:-20}"
exec > >(tee -a "$OUT/log.txt") 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
CARD="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

echo "== CUDA checks"
timeout "${TEST_TIMEOUT:-110}" bash -c 'python -m pytest -q -p no:cacheprovider tests/test_device_buffer.py \
    tests/test_augmentation.py && python -m pytest -q -p no:cacheprovider -k "cuda or waits" tests/test_update_speed.py' \
    >"$OUT/tests.txt" 2>&1 || echo "CUDA checks FAILED (see tests.txt)"
tail -3 "$OUT/tests.txt"

echo "== time per update, batch 256"
timeout 150 python benchmarks/clip_overhead.py --device cuda --batch-sizes 256 --repeats "$REPEATS" \
    --gradient-steps "$STEPS_PER_CALL" --variants ${B256_VARIANTS:-base clip compiled compiled_device_buffer} \
    --machine "$CARD" --output-dir "$OUT/b256" | tail -7 || echo "batch 256 FAILED"

echo "== kernel launches per gradient step, batch 256"
timeout 60 python - "$OUT/kernels.json" "$CARD" "$STEPS_PER_CALL" <<'EOF' || echo "kernel count FAILED"
import json, sys, time
import torch as th
from torch.profiler import ProfilerActivity, profile
from stable_baselines3 import TD3
from stable_baselines3.common.logger import Logger
from sb3_td3_cnnclip import TD3CnnClip
from sb3_td3_cnnclip.device_buffer import DeviceReplayBuffer
from sb3_td3_cnnclip.envs.toy import ToyImageEnv

path, card, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
calls = ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx", "cudaLaunchKernelExC", "cudaGraphLaunch",
         "cudaMemcpyAsync", "cudaStreamSynchronize", "cudaDeviceSynchronize")
paths = {"td3": (TD3, {}), "clip": (TD3CnnClip, {}),
         "compiled+device_buffer": (TD3CnnClip, {"compile_update": True, "replay_buffer_class": DeviceReplayBuffer})}
results = {"card": card, "batch_size": 256, "gradient_steps_per_call": steps, "paths": {}}
for name, (cls, kwargs) in paths.items():
    model = cls("CnnPolicy", ToyImageEnv(size=84, channels=4), buffer_size=1000, learning_starts=300, seed=0,
                device="cuda", **kwargs)
    model.learn(300)
    model.set_logger(Logger(folder=None, output_formats=[]))
    for _ in range(5):  # the first calls compile (also for profiling) and record the CUDA graphs; the last counts
        th.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            start = time.perf_counter()
            model.train(gradient_steps=steps, batch_size=256)
            host_s = time.perf_counter() - start
            th.cuda.synchronize()
    counts = {event.key: event.count / steps for event in prof.key_averages() if event.key in calls}
    results["paths"][name] = {"calls_per_step": counts, "host_ms_per_step_profiled": host_s / steps * 1e3}
    print(name, results["paths"][name], flush=True)
    with open(path, "w") as file:
        json.dump(results, file, indent=2)
EOF

echo "== learn($LEARN_STEPS)"
timeout 200 python - "$OUT/learn.json" "$LEARN_STEPS" "$CARD" cuda "${LEARN_ACTION_REPEAT:-1}" $LEARN_PATHS <<'EOF' \
    || echo "learn FAILED or timed out (learn.json has the paths done)"
import json, sys, time
import gymnasium as gym
import torch as th
from stable_baselines3 import TD3
from sb3_td3_cnnclip import TD3CnnClip
from sb3_td3_cnnclip.device_buffer import DeviceReplayBuffer

path, steps, card, device, repeat = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
try:
    import highway_env  # noqa: F401  (the surrogate backend of CarlaScenario0-v0)
    env_name = f"CarlaScenario0-v0 (surrogate, action_repeat={repeat})"
    make_env = lambda: gym.make("CarlaScenario0-v0", simulator="surrogate", action_repeat=repeat)
except ImportError:
    from sb3_td3_cnnclip.envs.toy import ToyImageEnv
    env_name = "ToyImageEnv(size=84, channels=4)"
    make_env = lambda: ToyImageEnv(size=84, channels=4)
paths = {
    "td3": (TD3, {}),
    "clip": (TD3CnnClip, {}),
    "compiled+device_buffer": (TD3CnnClip, {"compile_update": True, "replay_buffer_class": DeviceReplayBuffer}),
    "compiled+bf16+device_buffer": (
        TD3CnnClip, {"compile_update": True, "bf16_encoders": True, "replay_buffer_class": DeviceReplayBuffer}),
}
paths = {name: paths[name] for name in sys.argv[6:]}
results = {"card": card, "env": env_name, "steps": steps, "torch": th.__version__, "paths": {}}
for name, (cls, kwargs) in paths.items():
    model = cls("CnnPolicy", make_env(), buffer_size=10_000, seed=0, device=device, **kwargs)
    start = time.perf_counter()
    model.learn(steps)
    if device == "cuda":
        th.cuda.synchronize()
    results["paths"][name] = {"wall_s": time.perf_counter() - start, "updates": model._n_updates}
    print(name, results["paths"][name], flush=True)
    with open(path, "w") as file:
        json.dump(results, file, indent=2)
EOF
echo "== time per update, batch 64"
timeout 60 python benchmarks/clip_overhead.py --device cuda --batch-sizes 64 --repeats "$REPEATS" \
    --gradient-steps "$STEPS_PER_CALL" --variants ${B64_VARIANTS:-base clip compiled_device_buffer} --machine "$CARD" \
    --output-dir "$OUT/b64" | tail -6 || echo "batch 64 FAILED"
echo "== done"
