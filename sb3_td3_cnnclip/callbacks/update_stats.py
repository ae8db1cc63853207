"""Every gradient update's statistics (``model.update_stats``) written to TensorBoard, one point per update."""

from __future__ import annotations

from pathlib import Path

from stable_baselines3.common.callbacks import BaseCallback
from torch.utils.tensorboard import SummaryWriter


class UpdateStatsWriter(BaseCallback):
    """Writes every entry of ``model.update_stats`` (one per gradient step) to TensorBoard as ``debug/<key>``, with
    the update number as step, in its own event file (steps count updates there, not timesteps).

    ``train()`` runs after the env step's callbacks, so the entries of one training phase are written at the next
    step, and the last ones at the end of training.

    :param log_dir: directory of the event file
    :param verbose: SB3 callback verbosity
    """

    def __init__(self, log_dir: str | Path, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.log_dir = Path(log_dir)
        self._writer: SummaryWriter | None = None
        self._last_update = 0

    def _on_training_start(self) -> None:
        self._writer = SummaryWriter(str(self.log_dir))
        self._last_update = self.model._n_updates

    def _on_step(self) -> bool:
        self._write_new()
        return True

    def _on_training_end(self) -> None:
        self._write_new()
        self._writer.close()

    def _write_new(self) -> None:
        new = []
        for stats in reversed(self.model.update_stats):
            if stats["n_updates"] <= self._last_update:
                break
            new.append(stats)
        if not new:
            return
        new.reverse()
        if new[0]["n_updates"] != self._last_update + 1:
            raise RuntimeError(
                f"Updates {self._last_update + 1} to {new[0]['n_updates'] - 1} left model.update_stats before they "
                f"were written: stats_history={self.model.stats_history} is smaller than the gradient steps of one "
                "training phase; raise stats_history."
            )
        for stats in new:
            for key, value in stats.items():
                if key != "n_updates":
                    self._writer.add_scalar(f"debug/{key}", value, stats["n_updates"])
        self._last_update = new[-1]["n_updates"]
