"""``benchmarks/learning_curve.py`` end to end at its tiny size: results, plot, resuming and extending a run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import gymnasium as gym
import pytest
import torch
from conftest import require

from sb3_td3_cnnclip import TD3CnnClip
from sb3_td3_cnnclip.evaluation import drive_episode

require("highway_env")

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def run_benchmark(tmp_path: Path, *flags: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BENCHMARKS.parent), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "learning_curve.py"), "--size", "tiny", "--output-dir", str(tmp_path),
         "--run-dir", str(tmp_path / "runs"), *flags],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture
def learning_curve(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The benchmark's module, imported from ``benchmarks/``."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import learning_curve

    return learning_curve


@pytest.mark.slow
def test_tiny_learning_curve_runs_resumes_and_extends(tmp_path):
    out = run_benchmark(tmp_path)
    assert "td3 scenario 0 seed 0: 0 -> 120 steps" in out  # 480 ticks, each action held 4 ticks
    results = json.loads((tmp_path / "learning_curve.json").read_text())
    assert set(results["curves"]) == {"td3/scenario_0", "recommended+shift+encoder+nstep3/scenario_0"}
    assert results["configs"]["td3"]["actor_cnn_max_grad_norm"] is None
    expert = results["experts"]["0"]
    assert [e["seed"] for e in expert["episodes"]] == [1000, 1001] and expert["mean_speed"] > 0
    for points in results["curves"].values():
        assert [p["step"] for p in points] == [0, 60, 120] and [p["ticks"] for p in points] == [0, 240, 480]
        for point in points:
            assert 0 <= point["route_completion"]["mean"] <= 1
            rates = sum(point[f"{r}_rate"]["mean"] for r in ("collision", "off_lane", "goal", "time_limit"))
            assert rates == pytest.approx(1.0)  # every evaluation episode ends for one reason
            assert point["speed_vs_expert"]["mean"] == pytest.approx(point["mean_speed"]["mean"] / expert["mean_speed"])
        assert 0 < points[0]["eval_s"]["mean"] < points[1]["eval_s"]["mean"]  # each evaluation timed, summed so far
    updates = [r["n_updates"] for r in results["evaluations"]["td3/scenario_0"]["0"]]
    assert updates[0] == 0 and updates[1] > 0 and updates[2] > updates[1]
    episodes = results["evaluations"]["td3/scenario_0"]["0"][-1]["episodes"]
    assert len(episodes) == 2 and all(e["length"] <= 20 for e in episodes)
    assert (tmp_path / "learning_curve.png").stat().st_size > 0
    markdown = (tmp_path / "learning_curve.md").read_text()
    assert "| td3 | 0 | 480 | 1 |" in markdown and "missed: route < 95%" in markdown

    # the final evaluation: the model at the end of the budget on the 3 seeds after the curve's
    final = results["final"]["td3/scenario_0"]
    record, summary = final["seeds"]["0"], final["summary"]
    assert [e["seed"] for e in record["episodes"]] == [1002, 1003, 1004] and record["step"] == 120
    assert [e["seed"] for e in results["experts_final"]["0"]["episodes"]] == [1002, 1003, 1004]
    model = TD3CnnClip.load(tmp_path / "runs" / "td3" / "scenario_0" / "seed_0" / "model.zip")
    env = gym.make("CarlaScenario0-v0", simulator="surrogate", action_repeat=4, max_episode_steps=20)
    for episode in record["episodes"]:  # driven again, independently of the benchmark's loop
        again = drive_episode(model, env, seed=episode["seed"])
        assert (again["return"], again["route_completion"]) == (episode["return"], episode["route_completion"])
    env.close()
    assert summary["route_completion"]["mean"] == pytest.approx(
        sum(e["route_completion"] for e in record["episodes"]) / 3)
    assert summary["collisions"] == sum(e["termination_reason"] == "collision" for e in record["episodes"])
    assert "| td3 | 0 | 480 | 1 | 3 |" in markdown and "seeds 1002-1004" in markdown

    # started again, a run continues from its last checkpoint (here, extended by a larger --ticks) and evaluates the
    # model at its new end
    assert "td3 scenario 0 seed 0: 120 -> 180 steps" in run_benchmark(tmp_path, "--ticks", "720")
    results = json.loads((tmp_path / "learning_curve.json").read_text())
    assert [p["step"] for p in results["curves"]["td3/scenario_0"]] == [0, 60, 120, 180]
    assert results["final"]["td3/scenario_0"]["seeds"]["0"]["step"] == 180
    # a final evaluation of other seeds, or before the end of the budget, is not the verdict
    run_benchmark(tmp_path, "--report-only", "--final-eval-episodes", "4")
    assert json.loads((tmp_path / "learning_curve.json").read_text())["final"] == {}
    assert "(no final evaluation yet)" in (tmp_path / "learning_curve.md").read_text()
    run_benchmark(tmp_path, "--report-only")  # the budget of 480 ticks: the final evaluation is at 720
    assert json.loads((tmp_path / "learning_curve.json").read_text())["final"] == {}


def test_other_settings_in_the_run_folder_raise(tmp_path, learning_curve):
    args = learning_curve.parse_args(["--size", "tiny", "--run-dir", str(tmp_path)])
    folder = learning_curve.job_folder(args, "td3", 0, 0)
    folder.mkdir(parents=True)
    (folder / "job.json").write_text(json.dumps({**learning_curve.job_settings(args, "td3", 0, 0), "batch_size": 4}))
    with pytest.raises(ValueError, match="other settings"):
        learning_curve.run_job(args, "td3", 0, 0)


def test_flush_denormal_is_a_job_setting_switched_on_before_the_job_runs(tmp_path, monkeypatch, learning_curve):
    calls = []
    monkeypatch.setattr(torch, "set_flush_denormal", lambda flush: calls.append(flush) or True)
    off = learning_curve.parse_args(["--size", "tiny", "--run-dir", str(tmp_path)])
    on = learning_curve.parse_args(["--size", "tiny", "--run-dir", str(tmp_path), "--flush-denormal"])
    assert "flush_denormal" not in learning_curve.job_settings(off, "td3", 0, 0)  # run folders from before resume
    assert learning_curve.job_settings(on, "td3", 0, 0)["flush_denormal"] is True
    folder = learning_curve.job_folder(off, "td3", 0, 0)
    folder.mkdir(parents=True)
    (folder / "job.json").write_text(json.dumps(learning_curve.job_settings(off, "td3", 0, 0)))
    with pytest.raises(ValueError, match="other settings"):  # a run trained without the flush does not go on with it
        learning_curve.run_job(on, "td3", 0, 0)
    assert calls == [True]
    monkeypatch.setattr(torch, "set_flush_denormal", lambda flush: False)  # a CPU that cannot flush
    with pytest.raises(RuntimeError, match="cannot flush denormal floats"):
        learning_curve.run_job(on, "td3", 0, 0)


def test_configs_and_scenarios_replace_the_sizes_runs(learning_curve):
    cpu = learning_curve.parse_args([])
    recipe, traffic = learning_curve.RECIPE, learning_curve.TRAFFIC_RECIPE
    assert cpu.runs == [(recipe, 0), ("td3", 0), (traffic, 1), (traffic, 2)]
    assert [learning_curve.ticks_budget(cpu, s) for s in (0, 1, 2)] == [50_000, 100_000, 100_000]
    chosen = learning_curve.parse_args(["--configs", "td3", "--scenarios", "1", "2", "--ticks", "800"])
    assert chosen.runs == [("td3", 1), ("td3", 2)] and learning_curve.ticks_budget(chosen, 2) == 800


def test_each_configuration_builds_its_algorithm_with_its_exploration(learning_curve):
    from sb3_td3_cnnclip import SACCnnClip, TD3CnnClip, TQCCnnClip
    from sb3_td3_cnnclip.envs.toy import ToyImageEnv

    args = learning_curve.parse_args(["--size", "tiny"])
    expected = {"td3": (TD3CnnClip, 0.0), "recommended+scripted": (TD3CnnClip, 0.01), "sac": (SACCnnClip, 0.0),
                "tqc_recommended": (TQCCnnClip, TQCCnnClip.default_pre_tanh_penalty)}  # fmt: skip
    for config, (algo, penalty) in expected.items():
        model = learning_curve.make_model(args, config, ToyImageEnv(size=36), seed=0)
        assert type(model) is algo and model.pre_tanh_penalty == penalty
        assert (model.action_noise is not None) == (algo is TD3CnnClip)
        assert model.warmup_actions == ("scripted" if "scripted" in config else "random")
        assert (model.actor_cnn_max_grad_norm is None) == (config in ("td3", "sac"))


def test_ttc3_sets_the_time_to_collision_threshold_of_the_envs_not_of_the_model(learning_curve):
    from sb3_td3_cnnclip.envs.toy import ToyImageEnv

    args = learning_curve.parse_args(["--size", "tiny"])
    for config, threshold in (("recommended+nstep3+ttc3", 3.0), ("recommended+nstep3", 0.0)):
        envs = learning_curve.make_envs(args, config, 1)
        assert [env.unwrapped.config.time_to_collision_threshold for env in envs] == [threshold, threshold]
        assert envs[1].spec.max_episode_steps == args.eval_max_steps and envs[0].spec.max_episode_steps is None
        for env in envs:
            env.close()
        model = learning_curve.make_model(args, config, ToyImageEnv(size=36), seed=0)
        assert model.n_steps == 3  # built: the env option did not reach the model
    assert learning_curve.job_settings(args, "recommended+nstep3+ttc3", 1, 0)["kwargs"]["env_kwargs"] == {
        "time_to_collision_threshold": 3.0}  # a resumed run checks it


def test_lindecay_decays_the_learning_rate_over_the_whole_budget_across_learn_calls_and_a_reload(
    tmp_path, learning_curve
):
    from sb3_td3_cnnclip import TD3CnnClip
    from sb3_td3_cnnclip.envs.toy import ToyImageEnv

    args = learning_curve.parse_args(["--size", "tiny"])
    budget, start = 40, learning_curve.COMMON["learning_rate"]
    model = learning_curve.make_model(args, "recommended+nstep3+lindecay", ToyImageEnv(size=36), seed=0)
    model.learning_starts = 4  # updates in both calls
    for chunk in range(2):  # SB3 alone would count each learn() call's progress from 1 to 0 (the rate 0 at its end)
        if chunk == 1:  # a restart from the checkpoint, as run_job's
            model.save(tmp_path / "model.zip")
            model = TD3CnnClip.load(tmp_path / "model.zip", env=ToyImageEnv(size=36))
        model.learn(20, reset_num_timesteps=False, callback=learning_curve.BudgetProgress(budget))
        # the last update's rate: its progress is read after the last decision of the call
        expected = start * (1 - model.num_timesteps / budget)
        assert model.num_timesteps == 20 * (chunk + 1)
        for optimizer in (model.actor.optimizer, model.critic.optimizer):
            assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, abs=1e-12)
    assert learning_curve.make_model(args, "recommended+nstep3", ToyImageEnv(size=36), seed=0).learning_rate == start


@pytest.mark.slow
def test_curric_trains_from_scenario_0_up_and_evaluates_the_runs_scenario(tmp_path, monkeypatch, learning_curve):
    from sb3_td3_cnnclip.envs import DrivingEnv

    calls, set_scenario = [], DrivingEnv.set_scenario
    monkeypatch.setattr(DrivingEnv, "set_scenario", lambda env, scenario, **kwargs: calls.append(
        (env, scenario)) or set_scenario(env, scenario, **kwargs))  # fmt: skip
    made, make_envs = [], learning_curve.make_envs
    monkeypatch.setattr(learning_curve, "make_envs", lambda *a: made.append(make_envs(*a)) or made[-1])
    args = learning_curve.parse_args(["--size", "tiny", "--run-dir", str(tmp_path), "--eval-episodes", "1"])
    config = "recommended+nstep3+bf16+lindecay+ttc3+privileged+curric"
    assert "0 -> 120 steps" in learning_curve.run_job(args, config, 2, 0)  # 3 stages of 40 decisions
    (train_env, eval_env), = made
    assert [(env is train_env.unwrapped, scenario) for env, scenario in calls] == [(True, 0), (True, 1), (True, 2)]
    assert (train_env.unwrapped.config.scenario, eval_env.unwrapped.config.scenario) == (2, 2)
    with pytest.raises(ValueError, match="needs scenario 1 or 2"):
        learning_curve.curriculum_callback(config, 0, 0, 120)
    assert learning_curve.curriculum_callback("recommended+nstep3", 2, 0, 120) is None
    # a finished run is left as it is; a stopped one cannot resume its curriculum
    assert "120 -> 120 steps" in learning_curve.run_job(args, config, 2, 0)
    short = ["--size", "tiny", "--run-dir", str(tmp_path / "short"), "--eval-episodes", "1"]
    stopped = learning_curve.parse_args([*short, "--ticks", "240"])  # the first 60 of 120 decisions
    assert "0 -> 60 steps" in learning_curve.run_job(stopped, config, 2, 0)
    with pytest.raises(ValueError, match="stopped curriculum run"):
        learning_curve.run_job(learning_curve.parse_args(short), config, 2, 0)


def test_goal_status_names_each_miss_and_says_when_fewer_than_3_seeds(learning_curve):
    def point(seeds: int, route: float, collisions: float, speed: float) -> dict:
        figures = {"route_completion": route, "collision_rate": collisions, "speed_vs_expert": speed}
        return {"seeds": seeds, **{key: {"mean": value} for key, value in figures.items()}}

    assert learning_curve.goal_status(1, point(3, 0.90, 0.05, 0.85)) == "met"  # the goals' bounds are inclusive
    assert learning_curve.goal_status(0, point(3, 0.94, 0.06, 0.89)) == (
        "missed: route < 95%, collisions > 5%, speed < 90%")
    assert learning_curve.goal_status(2, point(1, 0.99, 0.0, 1.0)) == "met (1 seed(s): the goals are for the mean of 3)"


def test_summarise_sums_each_seeds_evaluation_time_only_where_every_evaluation_was_timed(learning_curve):
    def record(step: int, eval_s: float | None) -> dict:
        figures = dict.fromkeys((*learning_curve.FIGURES, "train_s"), 0.5)
        return {"step": step, "ticks": 4 * step, **figures, **({} if eval_s is None else {"eval_s": eval_s})}

    timed = {0: [record(0, 1.0), record(10, 2.0), record(20, 4.0)], 1: [record(0, 3.0), record(10, 5.0)]}
    points = learning_curve.summarise({("td3", 0): timed})[("td3", 0)]
    assert [p["seeds"] for p in points] == [2, 2, 1]  # seed 1 stopped at step 10
    assert [p["eval_s"]["mean"] for p in points] == [2.0, 5.5, 7.0]  # sums so far: (1, 3), (3, 8), (7,)
    assert points[1]["eval_s"]["min"] == 3.0 and points[1]["eval_s"]["max"] == 8.0
    untimed = {0: [record(0, None), record(10, 2.0)], 1: [record(0, 3.0), record(10, 5.0)]}
    points = learning_curve.summarise({("td3", 0): untimed})[("td3", 0)]
    assert "eval_s" not in points[0] and "eval_s" not in points[1]  # seed 0's first evaluation was not timed
    assert points[1]["route_completion"]["mean"] == 0.5


@pytest.mark.parametrize("flag", ["--final-eval-episodes", "--learning-starts"])
def test_negative_counts_are_refused_with_the_flag_named(flag, capsys, learning_curve):
    with pytest.raises(SystemExit):
        learning_curve.parse_args(["--size", "tiny", flag, "-1"])
    assert f"{flag}=-1 must be >= 0." in capsys.readouterr().err
    assert learning_curve.parse_args(["--size", "tiny", "--final-eval-episodes", "0"]).final_eval_episodes == 0
