#!/usr/bin/env bash
# The drop-in promise: SB3's own tests of TD3, SAC and DDPG and sb3-contrib's of TQC pass with TD3CnnClip,
# SACCnnClip, DDPGCnnClip and TQCCnnClip swapped in (.ci/upstream_swap.py). The tests come from the source
# distributions of the installed releases, fetched here and never copied into the project; they run against the
# installed packages (the sdists' own package copies are removed). Usage: .ci/upstream_tests.sh [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:-.venv/bin/python}
[[ $python == /* ]] || python=$(pwd)/$python  # the tests run from the sdist's directory
ci=$(pwd)/.ci
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
declare -A files=(
    [stable-baselines3]="test_run.py test_save_load.py test_cnn.py test_dict_env.py test_train_eval_mode.py
        test_deterministic.py test_n_step_replay.py test_her.py test_sde.py test_predict.py test_spaces.py
        test_tensorboard.py test_vec_normalize.py test_custom_policy.py test_callbacks.py"
    [sb3-contrib]="test_run.py test_save_load.py test_cnn.py test_dict_env.py test_deterministic.py
        test_train_eval_mode.py"
)
for dist in stable-baselines3 sb3-contrib; do
    version=$("$python" -c "import importlib.metadata as m; print(m.version('$dist'))")
    "$python" -m pip download -q --no-deps --no-binary :all: -d "$work/$dist" "$dist==$version"
    tar xzf "$work/$dist"/*.tar.gz -C "$work/$dist"
    source_dir=$(find "$work/$dist" -mindepth 1 -maxdepth 1 -type d)
    rm -rf "$source_dir/stable_baselines3" "$source_dir/sb3_contrib"
    echo "$dist $version: upstream tests with the package's classes"
    (cd "$source_dir" && PYTHONPATH="$ci" "$python" -m pytest -q -p upstream_swap -p no:cacheprovider \
        -m "not expensive" $(printf "tests/%s " ${files[$dist]}))
done
