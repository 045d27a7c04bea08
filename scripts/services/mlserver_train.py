"""Train the small scikit-learn model that the test MLServer serves as `pcvr-test`.

    python mlserver_train.py OUTPUT.joblib FEATURES

Run by scripts/services.py with the MLServer venv's own Python (the services script itself
has no scikit-learn). Everything is seeded, so every run writes an equivalent model: a
logistic regression on FEATURES features, binary labels drawn from a fixed logistic ground
truth.
Tests load the same file in the project's venv and compare predictions with the server's.
"""

from __future__ import annotations

import sys
from pathlib import Path

import joblib  # type: ignore[import-untyped]
import numpy as np
from sklearn.linear_model import LogisticRegression

ROWS = 2000
SEED = 20240611


def train(width: int) -> LogisticRegression:
    rng = np.random.default_rng(SEED)
    features = rng.normal(size=(ROWS, width))
    true_weights = rng.normal(scale=1.5, size=width)
    probability = 1.0 / (1.0 + np.exp(-(features @ true_weights - 0.5)))
    labels = (rng.random(ROWS) < probability).astype(np.int64)
    return LogisticRegression(max_iter=1000).fit(features, labels)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit():
        print(__doc__, file=sys.stderr)
        return 2
    target, width = Path(argv[0]), int(argv[1])
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed: a server never loads half a file.
    partial = target.with_name(target.name + ".partial")
    joblib.dump(train(width), partial)
    partial.replace(target)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
