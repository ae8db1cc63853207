"""Every example script runs as is, with a tiny budget, on the surrogate (no CARLA server answers in the tests)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require

from sb3_td3_cnnclip import DDPGCnnClip, SACCnnClip, TD3CnnClip, TQCCnnClip

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover (Python 3.10: tomli is a dependency there)
    import tomli as tomllib

require("highway_env")  # every example runs on the surrogate

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SCRIPTS = ROOT / "scripts"


def run(script: Path, *args: str, cwd: Path, timesteps: int | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if timesteps is not None:
        env["SB3_CNNCLIP_EXAMPLE_TIMESTEPS"] = str(timesteps)
    result = subprocess.run([sys.executable, str(script), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_quickstart(tmp_path: Path) -> None:
    result = run(EXAMPLES / "quickstart.py", cwd=tmp_path, timesteps=110)
    assert TD3CnnClip.load(tmp_path / "td3cnnclip_scenario0.zip")._n_updates == 10
    assert "actor_cnn: before" in result.stdout


@pytest.mark.slow
def test_swap_into_sb3(tmp_path: Path) -> None:
    result = run(EXAMPLES / "swap_into_sb3.py", cwd=tmp_path, timesteps=110)
    assert "mean reward:" in result.stdout
    assert list((tmp_path / "runs").glob("TD3_1/events.out.tfevents.*"))


@pytest.mark.slow
def test_train_with_callbacks(tmp_path: Path) -> None:
    result = run(EXAMPLES / "train_with_callbacks.py", cwd=tmp_path, timesteps=120)
    assert "Result: PASSED" in result.stdout
    assert "ScenarioCallback: scenario 2 from timestep 80" in result.stdout
    assert (tmp_path / "runs" / "with_callbacks_1" / "grad_norms.png").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("algo", [TD3CnnClip, SACCnnClip, DDPGCnnClip, TQCCnnClip])
def test_rl_zoo(algo: type, tmp_path: Path) -> None:
    require("rl_zoo3")
    name = f"{algo.__name__.removesuffix('CnnClip').lower()}_cnnclip"
    chosen = [] if algo is TD3CnnClip else ["--algo", name]  # td3_cnnclip is the script's default
    extra = [*chosen, "-params", "learning_starts:40", "batch_size:8", "buffer_size:100", "--env-kwargs",
             "simulator:'surrogate'"]  # fmt: skip
    run(EXAMPLES / "rl_zoo.py", *extra, cwd=tmp_path, timesteps=60)
    model = algo.load(tmp_path / "logs" / name / "CarlaScenario0-v0_1" / "CarlaScenario0-v0.zip")
    assert (type(model), model._n_updates, model.batch_size, model.actor_cnn_max_grad_norm) == (algo, 20, 8, 1.0)


@pytest.mark.slow
@pytest.mark.parametrize("script", [EXAMPLES / "train_td3.py", SCRIPTS / "train_td3.py"])
def test_train_td3_scripts(script: Path, tmp_path: Path) -> None:
    flags = ["--scenario", "0", "--max-timesteps", "40", "--learning-starts", "20", "--batch-size", "8", "--buffer-size", "100",
             "--seed", "42", "--debug", "--simulator", "surrogate", "--no-progress-bar", "--log-dir", str(tmp_path)]  # fmt: skip
    result = run(script, *flags, cwd=tmp_path)
    assert "Training completed at timestep 40" in result.stdout
    assert TD3CnnClip.load(tmp_path / "TD3CnnClip_1" / "model.zip")._n_updates == 20


def test_train_sh_installs_what_a_yaml_config_needs() -> None:
    """``bash scripts/train.sh --config run.yaml`` must work: the extras it installs include PyYAML."""
    extras = re.search(r'source scripts/setup.sh "([^"]+)"', (SCRIPTS / "train.sh").read_text())[1].split(",")
    optional = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(requirement.lower().startswith("pyyaml") for extra in extras for requirement in optional[extra])


@pytest.mark.slow
def test_drive(tmp_path: Path) -> None:
    result = run(EXAMPLES / "drive.py", cwd=tmp_path, timesteps=60)
    assert (tmp_path / "drive_scenario0.zip").is_file()
    assert [line.split(":")[0] for line in result.stdout.splitlines() if line.startswith("seed ")] == [
        f"seed {seed}" for seed in range(1000, 1010)]


@pytest.mark.parametrize(("file", "flags", "recipe_name", "scenario"), [
    ("drive.yml", {}, "RECIPE", 0), ("drive_traffic.yml", {}, "TRAFFIC_RECIPE", 1),
    ("drive_traffic.yml", {"scenario": 2}, "TRAFFIC_RECIPE", 2)])
def test_the_recipe_files_are_what_the_learning_curve_benchmark_measures(
    monkeypatch: pytest.MonkeyPatch, file: str, flags: dict[str, float], recipe_name: str, scenario: int
) -> None:
    from sb3_td3_cnnclip.config_file import load_config_file, observation_of, resolve_config

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import learning_curve

    recipe, name = resolve_config(load_config_file(EXAMPLES / file), flags), getattr(learning_curve, recipe_name)
    cpu, kwargs = learning_curve.SIZES["cpu"], {**learning_curve.COMMON, **learning_curve.CONFIGS[name]}
    assert (name, scenario) in cpu["runs"]
    assert recipe.scenario == scenario
    assert recipe.max_timesteps * recipe.action_repeat == cpu["ticks"][scenario]
    for key in ("action_repeat", "batch_size", "buffer_size", "learning_starts"):
        assert getattr(recipe, key) == cpu[key], key
    assert recipe.action_noise_sigma == learning_curve.parse_args([]).action_noise_sigma
    env_options = {"observation": observation_of(kwargs.get("policy", "CnnPolicy")), **kwargs.pop("env_kwargs", {})}
    assert recipe.env_kwargs() == {"action_repeat": cpu["action_repeat"], "time_to_collision_threshold": 0.0,
                                   **env_options}  # 0.0: the env's default, no penalty
    for key, value in kwargs.items():
        assert getattr(recipe, key) == value, key
