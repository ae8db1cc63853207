"""Every benchmark script imports and builds its command line (``--help``): a renamed helper breaks them here, not
in the next session that runs one."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = sorted(path.stem for path in BENCHMARKS.glob("*.py") if path.stem != "common")


def test_the_scripts_are_found():
    assert {"clip_overhead", "env_throughput", "learn_5000", "learning_curve", "replay_memory"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_imports_and_prints_its_help(script, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = importlib.import_module(script)
    monkeypatch.setattr("sys.argv", [f"{script}.py", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        module.main()
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("usage:")


def test_denormals_counts_the_denormal_adam_moments_and_names_missing_checkpoint_files(tmp_path, monkeypatch):
    import torch as th

    from sb3_td3_cnnclip import TD3CnnClip
    from sb3_td3_cnnclip.envs.toy import ToyImageEnv

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    denormals = importlib.import_module("denormals")
    model = TD3CnnClip("CnnPolicy", ToyImageEnv(size=36, channels=1), buffer_size=40, batch_size=8, learning_starts=20,
                       seed=0).learn(30)  # fmt: skip
    moments = [state[key] for optimizer in (model.actor.optimizer, model.critic.optimizer)
               for state in optimizer.state.values() for key in ("exp_avg", "exp_avg_sq")]  # fmt: skip
    for moment in moments:
        moment.fill_(1.0)
    flat = [moment.view(-1) for moment in moments if moment.is_contiguous()]  # views that write into the moments
    flat[0][:7] = th.finfo(th.float32).tiny / 4  # denormal
    flat[1][:5] = th.finfo(th.float32).tiny  # the smallest normal float: not denormal
    flat[1][5:8] = 0.0  # zero: not denormal
    assert denormals.denormal_fraction(model) == 7 / sum(moment.numel() for moment in moments)
    (tmp_path / "job.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="lacks model.zip, replay_buffer.ckpt"):
        denormals.load_checkpoint(tmp_path)
