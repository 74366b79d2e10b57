"""Stopping a trial early only when it cannot meet the accuracy tolerance.

Optuna's median pruner stops a trial whose accuracy after an epoch is below the median of the
earlier trials' at that epoch. In a constrained search that is the wrong test: the more
compressed a plan, the lower its accuracy, so the median pruner stops exactly the trials that
explore beyond the seeds, even those well within the tolerance. :class:`FeasibilityPruner`
asks instead whether the trial can still end within reach of the tolerance: its accuracy
after epoch ``e`` plus the largest gain any completed trial made from epoch ``e`` to its end
must leave a drop of at most ``max_drop`` points (the tolerance plus the verification slack,
since a trial that close may still be verified and kept).
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

from worker.search._config import drop_points

#: Trial user attribute holding the accuracy a completed trial ended with.
ACCURACY_ATTR = "accuracy"


class FeasibilityPruner(optuna.pruners.BasePruner):
    """Prune a trial whose drop cannot come back within ``max_drop`` points.

    Args:
        baseline_accuracy: the original model's accuracy, as a fraction.
        max_drop: the largest drop, in points, a trial may end with and still count.
        n_startup_trials: completed trials needed (with a value at the step) before any
            pruning: until then how much a trial recovers is unknown.
    """

    def __init__(
        self, baseline_accuracy: float, max_drop: float, *, n_startup_trials: int = 3
    ) -> None:
        if not 0 <= baseline_accuracy <= 1:
            raise ValueError(f"baseline_accuracy is a fraction, got {baseline_accuracy}")
        if max_drop < 0:
            raise ValueError(f"max_drop is in points, >= 0; got {max_drop}")
        if n_startup_trials < 1:
            raise ValueError(f"n_startup_trials must be >= 1, got {n_startup_trials}")
        self.baseline_accuracy = baseline_accuracy
        self.max_drop = max_drop
        self.n_startup_trials = n_startup_trials

    def recovery(self, study: optuna.Study, step: int) -> float | None:
        """The largest accuracy gain from ``step`` to the end among completed trials (None:
        fewer than ``n_startup_trials`` to judge by)."""
        gains = [
            float(t.user_attrs[ACCURACY_ATTR]) - float(t.intermediate_values[step])
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if step in t.intermediate_values and ACCURACY_ATTR in t.user_attrs
        ]
        if len(gains) < self.n_startup_trials:
            return None
        return max(0.0, max(gains))

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        gain = self.recovery(study, step)
        if gain is None:
            return False
        best_case = float(trial.intermediate_values[step]) + gain
        return drop_points(self.baseline_accuracy, best_case) > self.max_drop
