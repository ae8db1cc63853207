"""Train TD3CnnClip (or SACCnnClip, DDPGCnnClip, TQCCnnClip) with RL Baselines3 Zoo (``pip install ".[zoo]"``).

rl-zoo3 looks algorithms up by name in its ``rl_zoo3.ALGOS`` dict and builds envs with ``gymnasium.make``. Two
lines make the package usable there: add the classes to ``ALGOS`` (here as ``"td3_cnnclip"``, ``"sac_cnnclip"``,
``"ddpg_cnnclip"`` and ``"tqc_cnnclip"``) before the zoo parses its flags, and let the zoo import
``sb3_td3_cnnclip`` (``--gym-packages``) so the envs are registered. This script does both, then runs the zoo's own
``train`` with the hyperparameters file of the algorithm, ``<algo>_zoo.yml`` beside this script; any other
rl-zoo3 flag can follow and overrides the defaults below:

    python examples/rl_zoo.py
    python examples/rl_zoo.py --algo sac_cnnclip
    python examples/rl_zoo.py -n 20000 -params learning_rate:1e-4 --env-kwargs "simulator:'surrogate'"

Models and logs go to ``logs/<algo>/`` (rl-zoo3's layout). The same registration before calling
``rl_zoo3.enjoy.enjoy()`` replays a trained agent. ``--eval-freq -1`` is the default here: an evaluation env would
need a second simulator (with CARLA, a second server and Traffic Manager port).

``SB3_CNNCLIP_EXAMPLE_TIMESTEPS`` shrinks the budget (the tests use it).
"""

import argparse
import os
import sys
from pathlib import Path

import rl_zoo3
from rl_zoo3.train import train

from sb3_td3_cnnclip import DDPGCnnClip, SACCnnClip, TD3CnnClip, TQCCnnClip

rl_zoo3.ALGOS.update(td3_cnnclip=TD3CnnClip, sac_cnnclip=SACCnnClip, ddpg_cnnclip=DDPGCnnClip, tqc_cnnclip=TQCCnnClip)

algo_flag = argparse.ArgumentParser(add_help=False)
algo_flag.add_argument("--algo", default="td3_cnnclip")
algo = algo_flag.parse_known_args()[0].algo  # its hyperparameters file is the default --conf-file
defaults = [
    "--algo", algo, "--env", "CarlaScenario0-v0", "--gym-packages", "sb3_td3_cnnclip",
    "--conf-file", str(Path(__file__).with_name(f"{algo}_zoo.yml")), "--eval-freq", "-1",
]  # fmt: skip
if "SB3_CNNCLIP_EXAMPLE_TIMESTEPS" in os.environ:
    defaults += ["-n", os.environ["SB3_CNNCLIP_EXAMPLE_TIMESTEPS"]]
# argparse keeps the last value of a repeated flag: the user's flags win
sys.argv = [sys.argv[0], *defaults, *sys.argv[1:]]
train()
