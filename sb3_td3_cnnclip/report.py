"""Check a training run's TensorBoard logs against the success criteria of the original failure report.

The criteria (one row each, PASS / FAIL / N/A):

1. actor CNN gradient norm AFTER clipping <= its limit on every update;
2. critic CNN gradient norm AFTER clipping <= its limit on every update;
3. actor MLP gradient norm > 0 on every actor update (shown with the actor's action saturation, which tells a
   saturated tanh, the "dead actor", from a healthy one);
4. SAC and TQC only: the entropy coefficient's gradient (group ``ent_coef``) was measured and never clipped, as
   :class:`~sb3_td3_cnnclip.sac_cnnclip.SoftCnnClipMixin` promises;
5. every ``alerts/*`` counter is zero;
6. the actor loss stays finite and within a bound (no explosion; SAC's and TQC's actor loss adds
   ``ent_coef * log pi`` to ``-Q``, which the bound on ``|Q|`` still catches when Q explodes);
7. the run trained for all its configured timesteps.

The groups are those of the run's algorithm (``algo`` in its ``config.json``; ``td3`` for runs written before it
existed): TD3, DDPG, SAC and TQC all log ``actor_cnn``, ``actor_mlp``, ``critic_cnn`` and ``critic_mlp`` (SAC and
TQC update their actor on every update, TD3 every ``policy_delay``-th); SAC and TQC add ``ent_coef``
(:data:`MEASURED_ONLY_GROUPS`).

Per-update values logged by ``--debug`` runs (``debug/<key>``, in the run's ``debug/`` sub-directory) are used when
present; otherwise the per-dump aggregates under ``train/`` (``*_grad_after_max`` and ``actor_loss_abs_max`` are
maxima over every update of a dump, ``actor_mlp_zero_grad_frac`` a mean over every actor update of a dump, and the CLI
writes a last dump at the end of training, so no update escapes). Limits and the budget come
from the run's ``config.json`` (written by ``sb3-td3-cnnclip train``) or from overrides.

What a missing metric means is decided per criterion: a missing CNN group (e.g. ``share_features_extractor=True``)
while other groups were logged is N/A, but a run with no gradient update at all FAILs the gradient criteria, since
it cannot show clipping at work. No ``alerts/*`` counter (run without the early-stop callback) is N/A. A limit of
``none`` (measure only) is N/A. N/A never hides a failure: the row says why it was not checked.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sb3_td3_cnnclip.config_file import run_algo
from sb3_td3_cnnclip.envs.errors import MissingExtraError

#: file names inside a run directory written by ``sb3-td3-cnnclip train``
CONFIG_FILE = "config.json"
RESULT_FILE = "result.json"
#: sub-directory of a run directory holding the per-update ``debug/`` scalars of a ``--debug`` run
DEBUG_SUBDIR = "debug"
EVENT_FILE_GLOB = "events.out.tfevents.*"
#: float32 rounding: an AFTER norm may exceed its limit by this relative amount and still count as clipped
REL_TOLERANCE = 1e-5
#: actor-loss bound when the run did not record the reward bound needed for r_max / (1 - gamma)
FIXED_ACTOR_LOSS_BOUND = 1e4

PASS, FAIL, NOT_APPLICABLE = "PASS", "FAIL", "N/A"
#: per algorithm, the groups whose gradient is measured and logged but never clipped (SAC's and TQC's entropy
#: coefficient, learned with ``ent_coef="auto"``: one parameter, no limit)
MEASURED_ONLY_GROUPS: dict[str, tuple[str, ...]] = {"td3": (), "ddpg": (), "sac": ("ent_coef",), "tqc": ("ent_coef",)}
#: the groups every algorithm clips, in the order of the plots
CLIPPED_GROUPS = ("actor_cnn", "actor_mlp", "critic_cnn", "critic_mlp")


class RunDirError(ValueError):
    """The run directory is missing or does not hold a readable TensorBoard run."""


@dataclass
class Series:
    """One scalar tag: steps and values, in the order written.

    :param steps: the TensorBoard steps (timesteps for ``train/``, update numbers for ``debug/``)
    :param values: the values
    """

    steps: np.ndarray
    values: np.ndarray


@dataclass
class Criterion:
    """One row of the report.

    :param name: what is checked
    :param measured: the measured figure
    :param limit: what it must satisfy
    :param status: ``"PASS"``, ``"FAIL"`` or ``"N/A"``
    :param note: where the figure comes from, or why the row is N/A
    """

    name: str
    measured: str
    limit: str
    status: str
    note: str = ""


@dataclass
class RunReport:
    """The checked run.

    :param run_dir: the directory holding the run's event files
    :param criteria: one row per criterion
    :param config: the run's ``config.json`` content (empty when absent)
    :param scalars: every scalar of the run, by tag
    :param plots: the PNG files written
    :param algo: the run's algorithm, whose groups were checked
    """

    run_dir: Path
    criteria: list[Criterion]
    config: dict[str, Any]
    scalars: dict[str, Series] = dataclasses.field(repr=False)
    plots: list[Path] = dataclasses.field(default_factory=list)
    algo: str = "td3"

    @property
    def passed(self) -> bool:
        """No criterion failed."""
        return all(c.status != FAIL for c in self.criteria)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable summary."""
        return {
            "run_dir": str(self.run_dir),
            "algo": self.algo,
            "passed": self.passed,
            "criteria": [dataclasses.asdict(c) for c in self.criteria],
            "plots": [str(p) for p in self.plots],
        }

    def table(self) -> str:
        """The criteria as a fixed-width text table, with notes below."""
        header = ("Criterion", "Measured", "Limit", "Status")
        rows = [header, *((c.name, c.measured, c.limit, c.status) for c in self.criteria)]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        notes = [f"  [{c.name}] {c.note}" for c in self.criteria if c.note]
        verdict = "PASSED" if self.passed else "FAILED"
        return "\n".join([f"Run: {self.run_dir} (algo {self.algo})", *lines, "", "Notes:", *notes, "", f"Result: {verdict}"])


def _event_dirs(directory: Path) -> list[Path]:
    """``directory`` and its direct sub-directories that hold event files, except ``debug/`` ones."""
    candidates = [directory, *sorted(p for p in directory.iterdir() if p.is_dir() and p.name != DEBUG_SUBDIR)]
    return [d for d in candidates if any(d.glob(EVENT_FILE_GLOB))]


def find_run_dir(path: str | Path) -> Path:
    """The directory of one run: ``path`` itself if it holds event files, else its only sub-directory that does.

    :param path: a run directory (``runs/TD3CnnClip_1``) or a log directory holding exactly one run
    :return: the run directory
    """
    path = Path(path)
    expected = (
        "expected the run directory printed by `sb3-td3-cnnclip train` (e.g. runs/TD3CnnClip_1), or a log "
        f"directory with exactly one sub-directory holding TensorBoard event files ({EVENT_FILE_GLOB})"
    )
    if not path.exists():
        raise RunDirError(f"Run directory {str(path)!r} does not exist; {expected}.")
    if not path.is_dir():
        raise RunDirError(f"{str(path)!r} is a file, not a directory; {expected}.")
    runs = _event_dirs(path)
    if not runs:
        found = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())[:20]
        raise RunDirError(f"No TensorBoard event file in {str(path)!r} or its sub-directories (found: {found}); {expected}.")
    if len(runs) > 1:
        names = [str(r) for r in runs]
        raise RunDirError(f"{str(path)!r} holds {len(runs)} runs: {names}; pass one of them.")
    return runs[0]


def load_scalars(run_dir: Path) -> dict[str, Series]:
    """Every scalar of a run directory and of its ``debug/`` sub-directory.

    :param run_dir: a directory returned by :func:`find_run_dir`
    :return: tag -> series
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, Series] = {}
    for directory in (run_dir, run_dir / DEBUG_SUBDIR):
        if not directory.is_dir():
            continue
        # purge_orphaned_data=False: steps are not monotonic across tags (debug/ counts updates, train/ timesteps)
        accumulator = EventAccumulator(str(directory), size_guidance={"scalars": 0}, purge_orphaned_data=False)
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            events = accumulator.Scalars(tag)
            scalars[tag] = Series(np.array([e.step for e in events]), np.array([e.value for e in events], dtype=float))
    if not scalars:
        raise RunDirError(f"The event files in {str(run_dir)!r} hold no scalar: the run logged nothing (crashed at start?) or they are corrupt.")
    return scalars


def _read_json(path: Path) -> dict[str, Any]:
    """The content of a JSON file, or an empty dict when it does not exist."""
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise RunDirError(f"{str(path)!r} is not valid JSON ({error}); delete it or fix it.") from error


def _first(scalars: dict[str, Series], *tags: str) -> tuple[str, Series] | None:
    """The first of ``tags`` that was logged, with its series."""
    for tag in tags:
        if tag in scalars and len(scalars[tag].values) > 0:
            return tag, scalars[tag]
    return None


def _source(tag: str) -> str:
    """Describe whether a tag holds per-update or per-dump values."""
    return f"{tag}, per update" if tag.startswith("debug/") else f"{tag}, per log dump"


def _any_update(scalars: dict[str, Series]) -> bool:
    """Whether any gradient norm was logged (i.e. at least one gradient step ran)."""
    return any(tag.endswith("_before") or "_grad_before" in tag for tag in scalars)


def _check_cnn_after(scalars: dict[str, Series], network: str, limit: float | None, limit_known: bool) -> Criterion:
    """Criterion: the ``network`` CNN's AFTER-clipping norm never exceeds ``limit``."""
    name = f"{network} CNN grad AFTER <= limit"
    found = _first(scalars, f"debug/{network}_cnn_after", f"train/{network}_cnn_grad_after_max")
    if found is None:
        if _any_update(scalars):
            return Criterion(name, "not logged", str(limit), NOT_APPLICABLE, f"the policy has no {network} CNN parameter group")
        return Criterion(name, "not logged", str(limit), FAIL, "no gradient update was logged: learning_starts >= the timesteps trained?")
    tag, series = found
    worst = float(np.max(series.values))
    unit = "updates" if tag.startswith("debug/") else "log dumps"
    measured = f"max {worst:.4g} over {len(series.values)} {unit}"
    if not limit_known:
        return Criterion(name, measured, "unknown", NOT_APPLICABLE, f"no {CONFIG_FILE}: pass the limit as a flag ({_source(tag)})")
    if limit is None:
        return Criterion(name, measured, "none", NOT_APPLICABLE, f"the limit is none (measure only) ({_source(tag)})")
    over = int(np.sum(~(series.values <= limit * (1 + REL_TOLERANCE))))
    note = f"{_source(tag)}; {over} value(s) over the limit" if over else _source(tag)
    return Criterion(name, measured, f"<= {limit:g}", PASS if over == 0 else FAIL, note)


def _saturation_note(scalars: dict[str, Series]) -> str:
    """The actor's action saturation, which explains a zero actor-MLP gradient."""
    found = _first(scalars, "debug/actor_saturation", "train/actor_saturation")
    if found is None:
        return "actor saturation not logged"
    values = found[1].values
    return (
        f"actor saturation last {values[-1]:.3f}, max {np.max(values):.3f} (fraction of actions within 1e-3 of "
        "+-1; near 1 means a saturated tanh, whose gradient is zero: the dead actor)"
    )


def _check_actor_mlp(scalars: dict[str, Series]) -> Criterion:
    """Criterion: the actor MLP's gradient is non-zero on every actor update."""
    name = "actor MLP grad > 0"
    saturation = _saturation_note(scalars)
    if "debug/actor_mlp_after" in scalars:
        values = scalars["debug/actor_mlp_after"].values
        zeros = int(np.sum(~(values > 0)))
        measured = f"min {np.min(values):.4g}; zero on {zeros}/{len(values)} actor updates"
        return Criterion(name, measured, "> 0 on all", PASS if zeros == 0 else FAIL, f"debug/actor_mlp_after, per update; {saturation}")
    if "train/actor_mlp_zero_grad_frac" in scalars:
        worst = float(np.max(scalars["train/actor_mlp_zero_grad_frac"].values))
        measured = f"zero on {worst:.1%} of actor updates (worst dump)"
        status = PASS if worst == 0 else FAIL
        return Criterion(name, measured, "> 0 on all", status, f"train/actor_mlp_zero_grad_frac, per log dump; {saturation}")
    return Criterion(name, "not logged", "> 0 on all", FAIL, "no actor update was logged (too few timesteps after learning_starts?)")


def _check_measured_only(scalars: dict[str, Series], group: str) -> Criterion:
    """Criterion: a group without a limit (SAC's ``ent_coef``) was measured and its gradient never changed."""
    name = f"{group} grad measured, never clipped"
    found = _first(scalars, f"debug/{group}_before", f"train/{group}_grad_before_max")
    if found is None:
        if _any_update(scalars):
            return Criterion(name, "not logged", "none", NOT_APPLICABLE, f"no {group} optimizer (a fixed {group})")
        return Criterion(name, "not logged", "none", FAIL, "no gradient update was logged: learning_starts >= the timesteps trained?")
    tag, series = found
    unit = "updates" if tag.startswith("debug/") else "log dumps"
    measured = f"max {np.max(series.values):.4g} over {len(series.values)} {unit}"
    if tag.startswith("debug/"):  # AFTER equals BEFORE on every update
        changed = int(np.sum(scalars[f"debug/{group}_after"].values != series.values))
    else:  # the fraction of clipped updates of each dump is 0
        changed = int(np.sum(scalars[f"train/{group}_clip_frac"].values != 0))
    note = f"{_source(tag)}; " + (f"clipped on {changed} {unit}" if changed else "AFTER = BEFORE everywhere")
    return Criterion(name, measured, "none", PASS if changed == 0 else FAIL, note)


def _check_alerts(scalars: dict[str, Series]) -> Criterion:
    """Criterion: every ``alerts/*`` counter stays at zero."""
    name = "alerts/* == 0"
    tags = sorted(tag for tag in scalars if tag.startswith("alerts/"))
    if not tags:
        return Criterion(name, "not logged", "0", NOT_APPLICABLE, "no alerts/* counter logged: the run had no early-stop callback")
    fired = {tag: float(np.max(scalars[tag].values)) for tag in tags}
    bad = {tag: value for tag, value in fired.items() if value != 0}
    measured = ", ".join(f"{tag.removeprefix('alerts/')}={value:g}" for tag, value in bad.items()) or f"0 on {len(tags)} counters"
    return Criterion(name, measured, "0", PASS if not bad else FAIL, "largest value of each counter")


def q_bound(config: dict[str, Any]) -> float | None:
    """r_max / (1 - gamma): no discounted return exceeds it in absolute value, so neither should a Q estimate.

    :param config: the run's ``config.json`` content
    :return: the bound, or ``None`` when the run recorded no reward bound or gamma is 1
    """
    max_abs_reward = config.get("env", {}).get("max_abs_reward")
    gamma = config.get("config", {}).get("gamma")
    if max_abs_reward is None or gamma is None or gamma >= 1:
        return None
    return max_abs_reward / (1 - gamma)


def actor_loss_bound(config: dict[str, Any]) -> tuple[float, str]:
    """The bound on ``|actor loss|``: :func:`q_bound` when known, else :data:`FIXED_ACTOR_LOSS_BOUND`.

    The actor loss is -Q(s, pi(s)), so an actor loss beyond the Q bound is a Q over-estimate: the start of the
    explosion the failure report shows at -7.5e12.

    :param config: the run's ``config.json`` content
    :return: the bound and a sentence on where it comes from
    """
    bound = q_bound(config)
    if bound is not None:
        return bound, f"Q bound r_max / (1 - gamma) = {config['env']['max_abs_reward']:g} / (1 - {config['config']['gamma']:g})"
    return FIXED_ACTOR_LOSS_BOUND, "fixed threshold: the run recorded no reward bound (or gamma = 1)"


def _check_actor_loss(scalars: dict[str, Series], bound: float, bound_source: str) -> Criterion:
    """Criterion: the actor loss is finite and within ``bound``."""
    name = "|actor loss| bounded"
    found = _first(scalars, "debug/actor_loss", "train/actor_loss_abs_max", "train/actor_loss")
    if found is None:
        return Criterion(name, "not logged", f"<= {bound:.4g}", FAIL, "no actor update was logged")
    tag, series = found
    worst = float(np.max(np.abs(series.values)))
    ok = bool(np.all(np.isfinite(series.values))) and worst <= bound
    source = _source(tag)
    if tag == "train/actor_loss":  # a run logged before the per-dump maximum existed
        source += " (mean of the last train() call before each dump: updates in between are not checked)"
    return Criterion(name, f"max {worst:.4g}, last {series.values[-1]:.4g}", f"<= {bound:.4g}", PASS if ok else FAIL, f"{source}; {bound_source}")


def _check_completed(scalars: dict[str, Series], budget: int | None, result: dict[str, Any]) -> Criterion:
    """Criterion: the last logged timestep reaches the configured budget."""
    name = "trained all timesteps"
    reason = result.get("stop_reason")
    note = f"last logged step; run status: {result.get('status', 'unknown')}" + (f" ({reason})" if reason else "")
    steps = [int(s.steps[-1]) for tag, s in scalars.items() if not tag.startswith("debug/") and len(s.steps)]
    if not steps:
        return Criterion(name, "not logged", "unknown" if budget is None else f">= {budget}", FAIL, f"no logger dump (only debug/ values); {note}")
    last = max(steps)
    if budget is None:
        return Criterion(name, str(last), "unknown", NOT_APPLICABLE, f"no {CONFIG_FILE}: pass --max-timesteps; {note}")
    return Criterion(name, str(last), f">= {budget}", PASS if last >= budget else FAIL, note)


def check_run(
    path: str | Path,
    actor_cnn_max_grad_norm: float | None = None,
    critic_cnn_max_grad_norm: float | None = None,
    max_timesteps: int | None = None,
    loss_bound: float | None = None,
    algo: str | None = None,
) -> RunReport:
    """Read a run's logs and check every criterion. Overrides replace the values of the run's ``config.json``.

    :param path: a run directory, or a log directory holding exactly one run
    :param actor_cnn_max_grad_norm: the actor CNN limit to check against
    :param critic_cnn_max_grad_norm: the critic CNN limit to check against
    :param max_timesteps: the timesteps the run should have reached
    :param loss_bound: the bound on ``|actor loss|`` (default: see :func:`actor_loss_bound`)
    :param algo: the run's algorithm (default: the ``algo`` of its ``config.json``, ``td3`` without one); one that
        differs from the ``config.json``'s raises :class:`~sb3_td3_cnnclip.config_file.AlgorithmMismatchError`
    :return: the report (no plots; see :func:`write_plots`)
    """
    run_dir = find_run_dir(path)
    scalars = load_scalars(run_dir)
    config = _read_json(run_dir / CONFIG_FILE)
    options = config.get("config", {})
    algo = run_algo(options, algo, run_dir) if config else algo or "td3"
    if loss_bound is not None:
        bound, bound_source = loss_bound, "bound given by the user"
    else:
        bound, bound_source = actor_loss_bound(config)
    criteria = []
    for network, override in (("actor", actor_cnn_max_grad_norm), ("critic", critic_cnn_max_grad_norm)):
        key = f"{network}_cnn_max_grad_norm"
        limit_known = override is not None or key in options
        limit = override if override is not None else options.get(key)
        criteria.append(_check_cnn_after(scalars, network, limit, limit_known))
    criteria.append(_check_actor_mlp(scalars))
    criteria.extend(_check_measured_only(scalars, group) for group in MEASURED_ONLY_GROUPS[algo])
    criteria.append(_check_alerts(scalars))
    criteria.append(_check_actor_loss(scalars, bound, bound_source))
    budget = max_timesteps if max_timesteps is not None else options.get("max_timesteps")
    criteria.append(_check_completed(scalars, budget, _read_json(run_dir / RESULT_FILE)))
    return RunReport(run_dir, criteria, config, scalars, algo=algo)


def write_plots(report: RunReport, out_dir: str | Path | None = None) -> list[Path]:
    """Write PNG plots of gradient norms (with limits), losses, Q estimates (with the bound) and episode reward.

    :param report: a report returned by :func:`check_run`
    :param out_dir: where to write them (default: the run directory)
    :return: the files written (also stored in ``report.plots``)
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib import ticker
    except ImportError as error:
        raise MissingExtraError("Plots need matplotlib: pip install matplotlib (or the package's report extra), or pass --no-plots.") from error
    out = Path(out_dir) if out_dir is not None else report.run_dir
    out.mkdir(parents=True, exist_ok=True)
    scalars = report.scalars
    options = report.config.get("config", {})
    per_update = any(tag.startswith("debug/") for tag in scalars)

    def panel(ax: Any, title: str, tags: list[str], hline: float | None = None, linthresh: float | None = None, hline_label: str = "limit") -> None:
        values = []
        for tag in tags:
            if tag in scalars:
                ax.plot(scalars[tag].steps, scalars[tag].values, label=tag, linewidth=1)
                values.extend(abs(v) for v in scalars[tag].values if np.isfinite(v))
        if not any(tag in scalars for tag in tags):
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
        if hline is not None:
            ax.axhline(hline, color="red", linestyle="--", label=f"{hline_label} {hline:.4g}")
        # symmetric log where the values span orders of magnitude (zeros, e.g. a dead gradient, are still drawn),
        # with plain tick labels (-1000, 0.01); linear without offset or exponent otherwise
        if linthresh is not None and values and max(values) > 100 * max(min(values), linthresh):
            ax.set_yscale("symlog", linthresh=linthresh)
            ax.yaxis.set_major_formatter(ticker.StrMethodFormatter("{x:.4g}"))
        else:
            ax.yaxis.set_major_formatter(ticker.ScalarFormatter(useOffset=False))
        ax.set_title(title)
        ax.set_xlabel("update" if tags and tags[0].startswith("debug/") else "timestep")
        if ax.lines:
            ax.legend(fontsize=7)

    def grad_tags(group: str) -> list[str]:
        if per_update:
            return [f"debug/{group}_before", f"debug/{group}_after"]
        return [f"train/{group}_grad_before_max", f"train/{group}_grad_after_max", f"train/{group}_grad_after"]

    figures = {}
    groups = (*CLIPPED_GROUPS, *MEASURED_ONLY_GROUPS[report.algo])
    fig, axes = plt.subplots(2, (len(groups) + 1) // 2, figsize=(5.5 * ((len(groups) + 1) // 2), 7), squeeze=False)
    for ax in axes.flat[len(groups) :]:
        ax.set_axis_off()
    for ax, group in zip(axes.flat, groups):
        panel(ax, f"{group} gradient norm", grad_tags(group), options.get(f"{group}_max_grad_norm"), 1e-6)
        ax.set_ylim(bottom=0)
    figures["grad_norms.png"] = fig
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    prefix = "debug" if per_update else "train"
    panel(axes[0], "actor loss", [f"{prefix}/actor_loss"], linthresh=1.0)
    panel(axes[1], "critic loss", [f"{prefix}/critic_loss"], linthresh=1e-3)
    figures["losses.png"] = fig
    fig, ax = plt.subplots(figsize=(7, 4))
    q_tags = ["debug/q_replay", "debug/q_abs_max"] if per_update else ["train/q_replay", "train/q_abs_max", "train/q_policy_gap"]
    panel(ax, "Q estimates", q_tags, q_bound(report.config), 1.0, "Q bound")
    figures["q_values.png"] = fig
    fig, ax = plt.subplots(figsize=(7, 4))
    panel(ax, "episode reward", ["rollout/ep_rew_mean"])
    figures["episode_reward.png"] = fig
    written = []
    for name, figure in figures.items():
        figure.tight_layout()
        figure.savefig(out / name, dpi=80)
        plt.close(figure)
        written.append(out / name)
    report.plots = written
    return written

