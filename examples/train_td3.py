"""Train from a script with the flags of ``sb3-td3-cnnclip train`` (``--help`` lists them all).

    python examples/train_td3.py --scenario 0 --max-timesteps 500 --seed 42 --debug
    python examples/train_td3.py --config my_run.yaml --lr 1e-4

The run directory (TensorBoard logs, config.json, model.zip) is printed at the start and the end; check it with
``sb3-td3-cnnclip report <run dir>``.
"""

import sys

from sb3_td3_cnnclip.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
