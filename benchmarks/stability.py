"""Stability side by side: plain SB3 TD3 vs TD3CnnClip (and with ExplosionEarlyStopping), several seeds.

Two settings:

- ``harsh``: ``ToyImageEnv`` (4 stacked frames) with a large reward scale and learning rate, chosen so that plain
  TD3 diverges; episodes are long enough (``--toy-episode-length``) for Monte-Carlo returns.
- ``surrogate``: ``CarlaScenario0-v0`` on the surrogate backend with the package's defaults.

Every variant of a seed starts from the same weights and env seed. One probe callback measures all variants the
same way, independently of TD3CnnClip's own statistics. Every ``--probe-every`` steps, on a fixed batch of replay
transitions (drawn at the first probe): the actor loss ``-mean Q1(s, pi(s))``, ``max |Q|`` over both critics on the
replay actions and over Q1 on the policy's actions, the actor's and the critic's mean CNN feature norm and the
fraction of saturated action elements (within 1e-3 of a bound). At the end of every episode: its return, and the
critic's overestimation ``Q1(s_t, a_t) - G_t`` against the discounted Monte-Carlo return ``G_t`` of the episode
(all steps of an episode that terminated; on a truncated one only the steps whose missing tail weighs less than
``--mc-tail`` = gamma^(steps left)). The Q bound is ``r_max / (1 - gamma)``; a run counts as diverged at its first
probe with a non-finite value or ``max |Q|`` above ``--diverge-factor`` times that bound; its CNN features blew up at
its first probe with a mean feature norm above ``--feature-limit``; its actor saturated at its first probe with
more than 90 % of the action elements saturated. For TD3CnnClip the fraction of updates on which clipping fired
(any group) is read from ``update_stats``.

The returns are those of the behaviour policy (exploration noise included) while the critic keeps learning: the
overestimation is an indicator, not the exact bias of the critic at a fixed policy.

Run: ``python benchmarks/stability.py --seeds 0 1 2 --harsh-steps 2000 --surrogate-seeds 0 1 --surrogate-steps 1000``
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from common import add_common_args, describe_line, markdown_table, run_description, set_threads, write_results
from stable_baselines3 import TD3
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.noise import NormalActionNoise

from sb3_td3_cnnclip import TD3CnnClip
from sb3_td3_cnnclip.callbacks import ExplosionEarlyStopping
from sb3_td3_cnnclip.envs.toy import ToyImageEnv

#: the compared variants: (algorithm, with ExplosionEarlyStopping)
VARIANTS: dict[str, tuple[type[TD3], bool]] = {
    "td3": (TD3, False),
    "td3cnnclip": (TD3CnnClip, False),
    "td3cnnclip+early_stop": (TD3CnnClip, True),
}

#: max over the action box [-1, 1]^2 of ToyImageEnv's action term (a0 - 0.3)^2 + (a1 + 0.2)^2
TOY_ACTION_TERM_MAX = 1.3**2 + 1.2**2

SATURATION_EPS = 1e-3

#: TD3CnnClip's parameter groups
GROUPS = ("critic_cnn", "critic_mlp", "actor_cnn", "actor_mlp")


class StabilityProbe(BaseCallback):
    """Measures Q, actor loss, feature norms and saturation on a fixed replay batch, and Q against MC returns.

    Works for one env (``DummyVecEnv`` of size 1) and any SB3 TD3 (``TD3CnnClip`` included).

    :param probe_every: env steps between two probes (after ``learning_starts``)
    :param probe_size: transitions in the fixed probe batch
    :param mc_tail: largest ``gamma ** steps_left`` of a truncated episode's step that is compared with Q
    :param mc_states: most steps of one episode evaluated for the overestimation (evenly spaced)
    """

    def __init__(self, probe_every: int, probe_size: int, mc_tail: float, mc_states: int) -> None:
        super().__init__()
        self.probe_every = probe_every
        self.probe_size = probe_size
        self.mc_tail = mc_tail
        self.mc_states = mc_states
        self.probes: list[dict[str, float]] = []
        self.episodes: list[dict[str, float]] = []
        self._batch: tuple[th.Tensor, th.Tensor] | None = None
        self._trajectory: list[tuple[np.ndarray, np.ndarray, float]] = []
        self._probed_update = 0

    def _on_step(self) -> bool:
        observation = self.model._last_obs  # the observation the action was taken in (updated after callbacks)
        self._trajectory.append(
            (observation[0].copy(), self.locals["buffer_actions"][0].copy(), float(self.locals["rewards"][0]))
        )
        if self.locals["dones"][0]:
            info = self.locals["infos"][0]
            self._end_episode(bool(info.get("TimeLimit.truncated", False)), float(info["episode"]["r"]))
        if self.num_timesteps > self.model.learning_starts and self.num_timesteps % self.probe_every == 0:
            self.probes.append({"timestep": self.num_timesteps, **self._probe()})
        return True

    def _on_training_end(self) -> None:
        # a run stopped early (or not ending on a probe step) still gets its final state measured
        probed = bool(self.probes) and self.probes[-1]["timestep"] == self.num_timesteps
        if self.num_timesteps > self.model.learning_starts and not probed:
            self.probes.append({"timestep": self.num_timesteps, **self._probe()})

    def _probe(self) -> dict[str, float]:
        model = self.model
        if self._batch is None:  # drawn with a fixed seed, leaving the global generator (replay sampling) as it was
            state = np.random.get_state()
            np.random.seed(0)
            data = model.replay_buffer.sample(self.probe_size)
            np.random.set_state(state)
            self._batch = (data.observations, data.actions)
        observations, actions = self._batch
        with th.no_grad():
            actor_features = model.actor.extract_features(observations, model.actor.features_extractor)
            critic_features = model.critic.extract_features(observations, model.critic.features_extractor)
            actions_pi = model.actor(observations)
            q_pi = model.critic.q1_forward(observations, actions_pi)
            q_replay = th.cat(model.critic(observations, actions), dim=1)
        stats = {
            "actor_loss": -q_pi.mean().item(),
            "q_abs_max": max(q_replay.abs().max().item(), q_pi.abs().max().item()),
            "actor_feature_norm": actor_features.flatten(1).norm(dim=1).mean().item(),
            "critic_feature_norm": critic_features.flatten(1).norm(dim=1).mean().item(),
            "saturation": (actions_pi.abs() > 1.0 - SATURATION_EPS).float().mean().item(),
        }
        if hasattr(model, "update_stats"):  # TD3CnnClip: how often clipping fired since the previous probe
            new = [u for u in model.update_stats if u["n_updates"] > self._probed_update]
            clipped = [any(u[f"{g}_after"] < u[f"{g}_before"] for g in GROUPS if f"{g}_after" in u) for u in new]
            stats["clipped_fraction"] = sum(clipped) / len(clipped) if clipped else math.nan
        self._probed_update = model._n_updates
        return stats

    def _end_episode(self, truncated: bool, episode_return: float) -> None:
        observations, actions, rewards = zip(*self._trajectory)
        self._trajectory = []
        gamma = self.model.gamma
        returns = np.zeros(len(rewards))
        running = 0.0
        for t in reversed(range(len(rewards))):
            running = rewards[t] + gamma * running
            returns[t] = running
        steps_left = len(rewards) - np.arange(len(rewards))
        valid = np.flatnonzero(gamma**steps_left <= self.mc_tail) if truncated else np.arange(len(rewards))
        episode = {"timestep": self.num_timesteps, "return": episode_return, "length": len(rewards)}
        if len(valid) > 0:
            chosen = valid[np.linspace(0, len(valid) - 1, min(self.mc_states, len(valid))).astype(int)]
            obs = self.model.policy.obs_to_tensor(np.stack([observations[t] for t in chosen]))[0]
            act = th.as_tensor(np.stack([actions[t] for t in chosen]), device=self.model.device)
            with th.no_grad():
                q = self.model.critic.q1_forward(obs, act).squeeze(1).cpu().numpy()
            g = returns[chosen]
            episode.update(mc_states=len(chosen), q_mean=float(q.mean()), mc_return_mean=float(g.mean()),
                           overestimation=float((q - g).mean()))  # fmt: skip
        self.episodes.append(episode)


def make_env(setting: str, args: argparse.Namespace) -> Any:
    """The env of a setting: a ToyImageEnv, or CarlaScenario0-v0 on the surrogate backend.

    :param setting: ``"harsh"`` or ``"surrogate"``
    :param args: the parsed flags
    :return: the env
    """
    if setting == "harsh":
        return ToyImageEnv(size=args.toy_size, channels=4, episode_length=args.toy_episode_length,
                           reward_scale=args.toy_reward_scale)  # fmt: skip
    return gym.make("CarlaScenario0-v0", simulator="surrogate")


def run(setting: str, variant: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train one variant of one setting and seed, and collect its probes, episodes and divergence.

    :param setting: ``"harsh"`` or ``"surrogate"``
    :param variant: a key of :data:`VARIANTS`
    :param seed: seed of the model and the env
    :param args: the parsed flags
    :return: the run's measurements
    """
    algorithm, early_stop = VARIANTS[variant]
    steps = args.harsh_steps if setting == "harsh" else args.surrogate_steps
    kwargs: dict[str, Any] = {"seed": seed, "batch_size": args.batch_size, "buffer_size": args.buffer_size}
    if setting == "harsh":
        kwargs["learning_rate"] = args.toy_learning_rate
    model = algorithm("CnnPolicy", make_env(setting, args), device="cpu", **kwargs)
    model.action_noise = NormalActionNoise(np.zeros(2), args.action_noise * np.ones(2))
    if setting == "harsh":
        r_max = max(TOY_ACTION_TERM_MAX * args.toy_reward_scale, 1.0)
    else:
        r_max = float(model.get_env().get_attr("max_abs_reward")[0])
    q_bound = r_max / (1.0 - model.gamma)
    probe = StabilityProbe(args.probe_every, args.probe_size, args.mc_tail, args.mc_states)
    callbacks: list[BaseCallback] = [probe]
    with tempfile.TemporaryDirectory() as log_dir:
        stopper = ExplosionEarlyStopping(r_max=r_max, log_dir=log_dir) if early_stop else None
        if stopper is not None:
            callbacks.append(stopper)
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.learn(steps, callback=CallbackList(callbacks))
        wall = time.perf_counter() - start
    diverged_at = next(
        (p["timestep"] for p in probe.probes
         if not all(math.isfinite(v) for v in p.values()) or p["q_abs_max"] > args.diverge_factor * q_bound),
        None,
    )  # fmt: skip
    result = {
        "setting": setting, "variant": variant, "seed": seed, "timesteps": model.num_timesteps,
        "wall_s": wall, "r_max": r_max, "q_bound": q_bound, "diverged_at": diverged_at,
        "q_beyond_bound_at": next((p["timestep"] for p in probe.probes if p["q_abs_max"] > q_bound), None),
        "saturated_at": next((p["timestep"] for p in probe.probes if p["saturation"] > 0.9), None),
        "features_blew_up_at": next(
            (p["timestep"] for p in probe.probes
             if max(p["actor_feature_norm"], p["critic_feature_norm"]) > args.feature_limit),
            None,
        ),
        "probes": probe.probes, "episodes": probe.episodes,
        "early_stop": None if stopper is None else {"stopped": bool(stopper.triggered), "checks": stopper.triggered,
                                                    "reason": stopper.reason},
        "nonfinite_skips": getattr(model, "nonfinite_skips", None),
        "warnings": sorted({str(w.message)[:200] for w in caught}),
    }  # fmt: skip
    model.get_env().close()
    return result


def summarise(runs: list[dict[str, Any]], last_episodes: int) -> dict[str, Any]:
    """Aggregate the runs of one setting and variant over seeds (medians).

    :param runs: the runs
    :param last_episodes: episodes at the end of a run whose return and overestimation are averaged
    :return: the summary
    """

    def median(values: list[float]) -> float | None:
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    def tail(run: dict[str, Any], key: str) -> float | None:
        values = [e[key] for e in run["episodes"][-last_episodes:] if key in e]
        return statistics.mean(values) if values else None

    def clipped_fraction(probes: list[dict[str, float]]) -> float | None:
        values = [p["clipped_fraction"] for p in probes if math.isfinite(p.get("clipped_fraction", math.nan))]
        return statistics.mean(values) if values else None

    def finite_max(values: list[float]) -> float:
        return max(values) if all(math.isfinite(v) for v in values) else math.inf

    with_probes = [r for r in runs if r["probes"]]
    return {
        "seeds": len(runs),
        "diverged": [r["diverged_at"] for r in runs],
        "q_beyond_bound": [r["q_beyond_bound_at"] for r in runs],
        "saturated": [r["saturated_at"] for r in runs],
        "features_blew_up": [r["features_blew_up_at"] for r in runs],
        "early_stopped": [f"{'+'.join(r['early_stop']['checks'])} at {r['timesteps']}"
                          if r["early_stop"] and r["early_stop"]["stopped"] else None for r in runs],  # fmt: skip
        "q_bound": runs[0]["q_bound"],
        "median_final_abs_actor_loss": median([abs(r["probes"][-1]["actor_loss"]) for r in with_probes]),
        "median_peak_q_abs_max": median([finite_max([p["q_abs_max"] for p in r["probes"]]) for r in with_probes]),
        "median_final_actor_feature_norm": median([r["probes"][-1]["actor_feature_norm"] for r in with_probes]),
        "median_final_critic_feature_norm": median([r["probes"][-1]["critic_feature_norm"] for r in with_probes]),
        "median_final_saturation": median([r["probes"][-1]["saturation"] for r in with_probes]),
        "median_last_overestimation": median([tail(r, "overestimation") for r in runs]),
        "median_last_mc_return": median([tail(r, "mc_return_mean") for r in runs]),
        "median_last_episode_return": median([tail(r, "return") for r in runs]),
        "last_episode_return_per_seed": [tail(r, "return") for r in runs],
        "final_actor_feature_norm_per_seed": [r["probes"][-1]["actor_feature_norm"] if r["probes"] else None
                                              for r in runs],  # fmt: skip
        "median_wall_s": median([r["wall_s"] for r in runs]),
        "median_clipped_fraction": median([clipped_fraction(r["probes"]) for r in with_probes]),
    }


def per_seed(values: list[float | None]) -> str:
    """Format per-seed values with 3 significant digits.

    :param values: one value per seed (``None`` when absent)
    """
    return ", ".join("-" if v is None else f"{v:.3g}" for v in values)


def to_markdown(results: dict[str, Any]) -> str:
    """Summarise the results as one Markdown table per setting.

    :param results: the results of :func:`main`
    :return: the Markdown text
    """
    flags = results["run"]["flags"]
    text = ["# Stability: SB3 TD3 vs TD3CnnClip (CnnPolicy)", "", describe_line(results["run"])]
    headers = ["variant", "Q diverged at (per seed)", "abs(Q) > bound at",
               f"feature norm > {flags['feature_limit']:g} at", "saturated at", "early stop", "updates clipped",
               "final abs(actor loss)", "peak max abs(Q)", "actor feat. norm, per seed", "critic feat. norm",
               "saturation", f"Q - G (last {flags['last_episodes']} ep.)",
               f"return (last {flags['last_episodes']} ep.), per seed"]  # fmt: skip
    for setting, variants in results["summary"].items():
        bound = next(iter(variants.values()))["q_bound"]
        text += ["", f"## {setting}: {results['settings'][setting]}; Q bound r_max/(1-gamma) = {bound:.4g}", ""]
        rows = [
            [variant, s["diverged"], s["q_beyond_bound"], s["features_blew_up"], s["saturated"], s["early_stopped"],
             "" if s["median_clipped_fraction"] is None else f"{s['median_clipped_fraction']:.0%}",
             s["median_final_abs_actor_loss"], s["median_peak_q_abs_max"],
             per_seed(s["final_actor_feature_norm_per_seed"]), s["median_final_critic_feature_norm"],
             s["median_final_saturation"], s["median_last_overestimation"], per_seed(s["last_episode_return_per_seed"])]
            for variant, s in variants.items()
        ]  # fmt: skip
        text.append(markdown_table(headers, rows))
    text += ["", "Timestep lists are per seed (None: never). Other columns: medians over seeds (or per seed) of the "
             "last probe (peak for max abs(Q)) and of the mean over the last episodes. An early-stopped run ends "
             "rolled back to its last healthy snapshot, so its last probe measures that snapshot."]  # fmt: skip
    return "\n".join(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=["harsh", "surrogate"], choices=["harsh", "surrogate"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the harsh setting")
    parser.add_argument("--surrogate-seeds", type=int, nargs="+", default=[0, 1], help="seeds of the surrogate")
    parser.add_argument("--harsh-steps", type=int, default=2000, help="env steps per harsh run")
    parser.add_argument("--surrogate-steps", type=int, default=1000, help="env steps per surrogate run")
    parser.add_argument("--batch-size", type=int, default=32, help="minibatch size of every run")
    parser.add_argument("--buffer-size", type=int, default=10_000, help="replay buffer of every run")
    parser.add_argument("--action-noise", type=float, default=0.1, help="std of the Gaussian exploration noise")
    parser.add_argument("--toy-size", type=int, default=36, help="frame side of the harsh toy env")
    parser.add_argument("--toy-episode-length", type=int, default=500, help="episode length of the harsh toy env")
    parser.add_argument("--toy-reward-scale", type=float, default=100.0, help="reward scale of the harsh toy env")
    parser.add_argument("--toy-learning-rate", type=float, default=1e-2, help="learning rate of the harsh runs")
    parser.add_argument("--probe-every", type=int, default=50, help="env steps between two probes")
    parser.add_argument("--probe-size", type=int, default=64, help="transitions in the probe batch")
    parser.add_argument("--mc-tail", type=float, default=0.05, help="largest gamma^steps_left of a truncated step")
    parser.add_argument("--mc-states", type=int, default=64, help="most steps per episode compared with Q")
    parser.add_argument("--diverge-factor", type=float, default=10.0, help="max|Q| above this x the bound diverged")
    parser.add_argument("--feature-limit", type=float, default=1e3, help="CNN feature norm that counts as blown up")
    parser.add_argument("--last-episodes", type=int, default=3, help="episodes averaged at the end of a run")
    add_common_args(parser, threads=2)
    args = parser.parse_args()
    set_threads(args.threads)
    settings = {
        "harsh": f"ToyImageEnv(size={args.toy_size}, channels=4, episode_length={args.toy_episode_length}, "
        f"reward_scale={args.toy_reward_scale:g}), learning_rate={args.toy_learning_rate:g}, "
        f"{args.harsh_steps} steps, batch {args.batch_size}, buffer {args.buffer_size}",
        "surrogate": f"CarlaScenario0-v0 (surrogate), package defaults (learning_rate 1e-3) except batch "
        f"{args.batch_size} and buffer {args.buffer_size}, {args.surrogate_steps} steps",
    }
    results: dict[str, Any] = {"run": run_description(args), "settings": {}, "runs": [], "summary": {}}
    for setting in args.settings:
        results["settings"][setting] = settings[setting]
        seeds = args.seeds if setting == "harsh" else args.surrogate_seeds
        for seed in seeds:
            for variant in args.variants:
                outcome = run(setting, variant, seed, args)
                results["runs"].append(outcome)
                print(f"{setting} seed {seed} {variant}: {outcome['timesteps']} steps in {outcome['wall_s']:.0f} s, "
                      f"diverged at {outcome['diverged_at']}, early stop {outcome['early_stop']}")  # fmt: skip
        results["summary"][setting] = {
            variant: summarise([r for r in results["runs"] if r["setting"] == setting and r["variant"] == variant],
                               args.last_episodes)  # fmt: skip
            for variant in args.variants
        }
    write_results(args.output_dir, "stability", results, to_markdown(results))


if __name__ == "__main__":
    main()
