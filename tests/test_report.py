"""The run report on synthetic TensorBoard logs: criteria, run-directory errors, plots, exit codes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from matplotlib.figure import Figure
from torch.utils.tensorboard import SummaryWriter

from sb3_td3_cnnclip.cli import main
from sb3_td3_cnnclip.config_file import AlgorithmMismatchError
from sb3_td3_cnnclip.report import DEBUG_SUBDIR, FAIL, NOT_APPLICABLE, PASS, RunDirError, check_run, load_scalars, write_plots

#: a healthy run: every criterion holds (Q bound 10 / (1 - 0.9) = 100)
HEALTHY = {
    "train/actor_cnn_grad_after_max": [0.4, 1.0],
    "train/critic_cnn_grad_after_max": [3.0, 9.5],
    "train/critic_mlp_grad_before_max": [2.0, 2.5],
    "train/actor_mlp_zero_grad_frac": [0.0, 0.0],
    "train/actor_saturation": [0.1, 0.2],
    "train/actor_loss": [-5.0, -20.0],
    "train/actor_loss_abs_max": [5.0, 20.0],
    "alerts/actor_loss": [0, 0],
    "alerts/dead_actor": [0, 0],
}
CONFIG = {
    "config": {"actor_cnn_max_grad_norm": 1.0, "critic_cnn_max_grad_norm": 10.0, "gamma": 0.9, "max_timesteps": 200},
    "env": {"max_abs_reward": 10.0},
}


def write_run(directory: Path, scalars: dict[str, list[float]], config: dict | None = CONFIG, steps: tuple = (100, 200)) -> Path:
    """Write ``scalars`` (tag -> values at ``steps``) as a TensorBoard run, with ``config.json`` unless ``None``."""
    directory.mkdir(parents=True, exist_ok=True)
    with SummaryWriter(str(directory)) as writer:
        for tag, values in scalars.items():
            for step, value in zip(steps, values):
                writer.add_scalar(tag, value, step)
    if config is not None:
        (directory / "config.json").write_text(json.dumps(config))
    return directory


def statuses(run_dir: Path, **overrides) -> dict[str, str]:
    return {c.name: c.status for c in check_run(run_dir, **overrides).criteria}


def test_healthy_run_passes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_dir = write_run(tmp_path / "run", HEALTHY)
    assert set(statuses(run_dir).values()) == {PASS}
    assert main(["report", str(run_dir), "--no-plots"]) == 0
    assert "Result: PASSED" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("tag", "values", "criterion"),
    [
        ("train/actor_cnn_grad_after_max", [0.4, 1.93], "actor CNN grad AFTER <= limit"),  # the failure report's figures
        ("train/critic_cnn_grad_after_max", [3.0, 20.25], "critic CNN grad AFTER <= limit"),
        ("train/actor_cnn_grad_after_max", [0.4, 1.001], "actor CNN grad AFTER <= limit"),
        ("train/actor_mlp_zero_grad_frac", [0.0, 0.98], "actor MLP grad > 0"),
        ("alerts/dead_actor", [0, 3], "alerts/* == 0"),
        ("train/actor_loss_abs_max", [5.0, 7.5e12], "|actor loss| bounded"),
        ("train/actor_loss_abs_max", [5.0, float("nan")], "|actor loss| bounded"),
        ("train/actor_loss_abs_max", [5.0, 101.0], "|actor loss| bounded"),  # just over the Q bound 100
    ],
)
def test_violation_fails_its_criterion_only(tmp_path: Path, tag: str, values: list[float], criterion: str) -> None:
    run_dir = write_run(tmp_path / "run", {**HEALTHY, tag: values})
    result = statuses(run_dir)
    assert result.pop(criterion) == FAIL
    assert set(result.values()) == {PASS}
    assert main(["report", str(run_dir), "--no-plots"]) == 1


def test_actor_loss_row_reads_the_per_dump_maximum(tmp_path: Path) -> None:
    # the per-dump mean of the last train() call looks healthy; the maximum over every update does not
    run_dir = write_run(tmp_path / "new", {**HEALTHY, "train/actor_loss_abs_max": [5.0, 7.5e12]})
    row = {c.name: c for c in check_run(run_dir).criteria}["|actor loss| bounded"]
    assert (row.status, row.measured) == (FAIL, "max 7.5e+12, last 7.5e+12")
    assert row.note.startswith("train/actor_loss_abs_max, per log dump;")
    # runs logged before the maximum existed are checked on the means, and the note says so
    old = {key: value for key, value in HEALTHY.items() if key != "train/actor_loss_abs_max"}
    row = {c.name: c for c in check_run(write_run(tmp_path / "old", old)).criteria}["|actor loss| bounded"]
    assert row.status == PASS and "updates in between are not checked" in row.note


def test_float32_rounding_above_the_limit_passes(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "run", {**HEALTHY, "train/actor_cnn_grad_after_max": [0.5, 1.0000001]})
    assert statuses(run_dir)["actor CNN grad AFTER <= limit"] == PASS


def test_unfinished_run_fails(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "run", HEALTHY, steps=(100, 150))
    (run_dir / "result.json").write_text(json.dumps({"status": "stopped_early", "stop_reason": "dead actor"}))
    row = check_run(run_dir).criteria[-1]
    assert (row.measured, row.status) == ("150", FAIL)
    assert "stopped_early (dead actor)" in row.note


def test_dead_actor_row_shows_saturation(tmp_path: Path) -> None:
    scalars = {**HEALTHY, "train/actor_mlp_zero_grad_frac": [0.0, 1.0], "train/actor_saturation": [0.5, 0.99]}
    row = check_run(write_run(tmp_path / "run", scalars)).criteria[2]
    assert row.status == FAIL
    assert "saturation last 0.990, max 0.990" in row.note


def test_per_update_debug_values_take_precedence(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "run", HEALTHY)
    # per-update values, with steps (update numbers) below the train/ steps: one update broke the limit
    write_run(run_dir / DEBUG_SUBDIR, {"debug/actor_cnn_after": [0.5, 1.5, 0.2], "debug/actor_mlp_after": [0.1, 0.0, 0.3]}, None, (1, 2, 3))
    report = check_run(run_dir)
    rows = {c.name: c for c in report.criteria}
    assert rows["actor CNN grad AFTER <= limit"].status == FAIL
    assert rows["actor CNN grad AFTER <= limit"].measured == "max 1.5 over 3 updates"
    assert rows["actor MLP grad > 0"].measured.endswith("zero on 1/3 actor updates")
    assert rows["trained all timesteps"].measured == "200"  # update numbers are not timesteps


def test_sac_and_tqc_runs_check_their_entropy_coefficient(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = "ent_coef grad measured, never clipped"
    sac = {**CONFIG, "config": {**CONFIG["config"], "algo": "sac"}}
    measured = {**HEALTHY, "train/ent_coef_grad_before_max": [0.5, 0.7], "train/ent_coef_clip_frac": [0.0, 0.0]}
    report = check_run(write_run(tmp_path / "sac", measured, sac))
    assert [c.name for c in report.criteria][3] == name
    assert (report.algo, report.criteria[3].status, report.criteria[3].measured) == ("sac", PASS, "max 0.7 over 2 log dumps")
    axes = []
    monkeypatch.setattr(Figure, "savefig", lambda figure, *args, **kwargs: axes.append([ax.get_title() for ax in figure.axes if ax.axison]))
    write_plots(report, tmp_path / "plots")
    assert axes[0] == [f"{group} gradient norm" for group in ("actor_cnn", "actor_mlp", "critic_cnn", "critic_mlp", "ent_coef")]
    assert statuses(write_run(tmp_path / "clipped", {**measured, "train/ent_coef_clip_frac": [0.0, 0.5]}, sac))[name] == FAIL
    assert statuses(write_run(tmp_path / "fixed", HEALTHY, sac))[name] == NOT_APPLICABLE  # a fixed ent_coef: no optimizer
    assert statuses(write_run(tmp_path / "no_update", {"rollout/ep_rew_mean": [1.0, 2.0]}, sac))[name] == FAIL
    # per update: AFTER must equal BEFORE
    debug = write_run(tmp_path / "debug", measured, sac)
    write_run(debug / DEBUG_SUBDIR, {"debug/ent_coef_before": [0.5, 0.7], "debug/ent_coef_after": [0.5, 0.6]}, None, (1, 2))
    row = next(c for c in check_run(debug).criteria if c.name == name)
    assert (row.status, row.note) == (FAIL, "debug/ent_coef_before, per update; clipped on 1 updates")
    # a run from before algo existed is a TD3 run; without config.json, --algo says which groups to check
    assert name not in statuses(write_run(tmp_path / "old", measured))
    assert statuses(write_run(tmp_path / "no_config", measured, None), algo="tqc")[name] == PASS
    with pytest.raises(AlgorithmMismatchError, match="was trained with algo 'td3' \\(its run's config.json\\), not 'tqc'"):
        check_run(tmp_path / "old", algo="tqc")


def test_absent_metrics(tmp_path: Path) -> None:
    # no alerts, no actor CNN group, but updates happened: N/A, not PASS
    scalars = {k: v for k, v in HEALTHY.items() if not k.startswith(("alerts/", "train/actor_cnn"))}
    result = statuses(write_run(tmp_path / "a", scalars))
    assert result["alerts/* == 0"] == NOT_APPLICABLE
    assert result["actor CNN grad AFTER <= limit"] == NOT_APPLICABLE
    # only per-update debug/ values (no logger dump): every row fails, none crashes
    only_debug = write_run(tmp_path / "d", {}, None)
    write_run(only_debug / DEBUG_SUBDIR, {"debug/actor_cnn_after": [0.5], "debug/actor_mlp_after": [0.1]}, None, (1,))
    assert statuses(only_debug)["trained all timesteps"] == FAIL
    # no gradient update at all: the gradient criteria cannot be shown, they fail
    result = statuses(write_run(tmp_path / "b", {"rollout/ep_rew_mean": [1.0, 2.0]}))
    for name in ("actor CNN grad AFTER <= limit", "critic CNN grad AFTER <= limit", "actor MLP grad > 0", "|actor loss| bounded"):
        assert result[name] == FAIL


def test_limits_without_config(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "run", HEALTHY, config=None)
    result = statuses(run_dir)
    assert result["actor CNN grad AFTER <= limit"] == NOT_APPLICABLE
    assert result["trained all timesteps"] == NOT_APPLICABLE
    # |actor loss| 20 against the fixed threshold
    assert result["|actor loss| bounded"] == PASS
    result = statuses(run_dir, actor_cnn_max_grad_norm=0.5, max_timesteps=300, loss_bound=10.0)
    assert (result["actor CNN grad AFTER <= limit"], result["trained all timesteps"], result["|actor loss| bounded"]) == (FAIL, FAIL, FAIL)


def test_measure_only_limit_is_not_applicable(tmp_path: Path) -> None:
    config = {**CONFIG, "config": {**CONFIG["config"], "critic_cnn_max_grad_norm": None}}
    assert statuses(write_run(tmp_path / "run", HEALTHY, config))["critic CNN grad AFTER <= limit"] == NOT_APPLICABLE


def test_log_dir_with_one_run(tmp_path: Path) -> None:
    write_run(tmp_path / "TD3CnnClip_1", HEALTHY)
    assert check_run(tmp_path).run_dir == tmp_path / "TD3CnnClip_1"


def test_run_dir_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(RunDirError, match="does not exist"):
        check_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(RunDirError, match=r"No TensorBoard event file .*notes\.txt"):
        check_run(tmp_path / "empty")
    write_run(tmp_path / "logs" / "TD3CnnClip_1", HEALTHY)
    write_run(tmp_path / "logs" / "TD3CnnClip_2", HEALTHY)
    with pytest.raises(RunDirError, match="holds 2 runs.*TD3CnnClip_1.*TD3CnnClip_2"):
        check_run(tmp_path / "logs")
    with SummaryWriter(str(tmp_path / "text")) as writer:
        writer.add_text("note", "no scalar here")
    with pytest.raises(RunDirError, match="hold no scalar"):
        check_run(tmp_path / "text")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "events.out.tfevents.1.host").write_bytes(b"\x00garbage")
    assert main(["report", str(tmp_path / "bad")]) == 2
    assert "report: error:" in capsys.readouterr().err


def test_malformed_config_json(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "run", HEALTHY, config=None)
    (run_dir / "config.json").write_text("{not json")
    with pytest.raises(RunDirError, match="config.json' is not valid JSON"):
        check_run(run_dir)


def test_json_output_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_dir = write_run(tmp_path / "run", {**HEALTHY, "train/critic_cnn_grad_after_max": [3.0, 20.25]})
    assert main(["report", str(run_dir), "--json", "--plots-dir", str(tmp_path / "plots")]) == 1
    output = json.loads(capsys.readouterr().out)
    assert output["passed"] is False
    assert [c["status"] for c in output["criteria"]] == [PASS, FAIL, PASS, PASS, PASS, PASS]
    assert sorted(Path(p).name for p in output["plots"]) == ["episode_reward.png", "grad_norms.png", "losses.png", "q_values.png"]
    for plot in output["plots"]:
        assert Path(plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_default_to_the_run_dir(tmp_path: Path) -> None:
    report = check_run(write_run(tmp_path / "run", HEALTHY))
    assert [p.parent for p in write_plots(report)] == [tmp_path / "run"] * 4


@pytest.mark.parametrize("q", [1e9, float("nan")])
def test_one_diverged_actor_update_fails_the_per_dump_report(tmp_path: Path, force_q, q: float) -> None:
    """Without --debug, one actor update among many with Q = 1e9 (or NaN) on the policy's actions fails the loss row."""
    from stable_baselines3.common.logger import configure

    from sb3_td3_cnnclip import TD3CnnClip
    from sb3_td3_cnnclip.envs.toy import ToyImageEnv

    model = TD3CnnClip("CnnPolicy", ToyImageEnv(), buffer_size=200, learning_starts=40, batch_size=8, seed=0,
                       policy_kwargs={"features_extractor_kwargs": {"features_dim": 16}, "net_arch": [32]})  # fmt: skip
    model.set_logger(configure(str(tmp_path / "run"), ["tensorboard"]))
    force_q(model, at_update=20, value=q)  # an actor update in the middle of the second 50-step episode
    model.learn(150, log_interval=1)  # one train() of one update per step, one dump per episode
    model.dump_logs()
    assert [s["actor_loss"] for s in model.update_stats if s["n_updates"] == 20] == [pytest.approx(-q, nan_ok=True)]
    row = {c.name: c for c in check_run(tmp_path / "run").criteria}["|actor loss| bounded"]
    assert row.status == FAIL
    assert row.measured.startswith(f"max {q:.4g}")
    assert "train/actor_loss_abs_max" in row.note


@pytest.mark.parametrize("actor_loss", [[-0.545768, -0.545770], [-0.5, -3.0e6]])
def test_plot_ticks_are_plain_numbers(actor_loss: list[float], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ticks: dict[str, list[str]] = {}
    savefig = Figure.savefig

    def record_ticks(figure: Figure, path: Path, *args: Any, **kwargs: Any) -> None:
        figure.canvas.draw()
        labels = [label for ax in figure.axes for label in [*ax.get_yticklabels(), *ax.get_yticklabels(minor=True), ax.yaxis.get_offset_text()]]
        ticks[Path(path).name] = [label.get_text() for label in labels if label.get_text()]
        savefig(figure, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record_ticks)
    write_plots(check_run(write_run(tmp_path / "run", {**HEALTHY, "train/actor_loss": actor_loss, "train/critic_loss": [1e-3, 5e3]})))
    assert set(ticks) == {"grad_norms.png", "losses.png", "q_values.png", "episode_reward.png"}
    for name, texts in ticks.items():
        assert texts, name
        assert [text for text in texts if "times" in text or "^" in text or "$" in text] == [], name  # no 5.45768×10⁻¹


def test_train_writes_a_last_dump_with_every_update(tmp_path: Path) -> None:
    """The updates after SB3's last dump (here: all of them, no episode ends) reach the logs the report reads."""
    flags = ["--simulator", "surrogate", "--max-timesteps", "12", "--learning-starts", "6", "--batch-size", "4",
             "--buffer-size", "20", "--seed", "1", "--debug", "--verbose", "0", "--no-progress-bar",
             "--log-dir", str(tmp_path)]  # fmt: skip
    assert main(["train", *flags]) == 0
    run_dir = tmp_path / "TD3CnnClip_1"
    scalars = load_scalars(run_dir)
    debug = scalars["debug/critic_mlp_after"]
    assert list(debug.steps) == [1, 2, 3, 4, 5, 6]  # updates after steps 7 to 12
    for tag in ("train/critic_mlp_grad_after_max", "train/actor_loss_abs_max", "alerts/dead_actor"):
        assert tag in scalars and scalars[tag].steps[-1] == 12, tag
    assert max(scalars["train/critic_mlp_grad_after_max"].values) == pytest.approx(max(debug.values), rel=1e-6)
    assert max(scalars["train/actor_loss_abs_max"].values) == pytest.approx(max(abs(scalars["debug/actor_loss"].values)), rel=1e-6)
