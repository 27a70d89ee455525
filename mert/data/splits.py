"""The seeded, stratified train/valid/test split every labelled set in the package uses.

Probe manifests without a split column (:mod:`mert.probe.tasks`), the data-set layouts that have no official
split (:mod:`mert.probe.layouts`), the probe monitor's held-out set and the demo's synthetic probe tasks
(:mod:`mert.data.probe_tasks`) all call :func:`seeded_split`, so one seed means one split wherever it is made.
It lives in ``mert.data`` (numpy only) so that data, probing and the demo can import it without cycles.

Shape legend: ``N`` items.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["SPLITS", "seeded_split"]

SPLITS = ("train", "valid", "test")


def seeded_split(strata: Sequence | np.ndarray, seed: int, fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> np.ndarray:
    """Train/valid/test per item, stratified: each stratum is shuffled and cut by ``fractions``.

    Strata are visited in sorted order and items within one in their given order, so the result depends only on
    the sequence of strata and the seed. Counts round to nearest (``round``: ties to even). A stratum too small
    to reach every split keeps at least one item in train first, then valid.

    Args:
        strata: ``(N,)`` labels to stratify by (class indices or names; all equal for no stratification).
        seed: seed of the shuffles.
        fractions: ``(train, valid, test)``, non-negative, summing to 1 (test may be 0).
    Returns:
        ``(N,)`` object array of ``"train"``, ``"valid"``, ``"test"``.
    Raises:
        ValueError: ``fractions`` is not three non-negative numbers summing to 1.
    """
    fr = np.asarray(fractions, dtype=np.float64)
    if fr.shape != (3,) or (fr < 0).any() or not np.isclose(fr.sum(), 1.0):
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {list(fractions)}")
    strata = np.asarray(strata)
    rng = np.random.default_rng(seed)
    out = np.empty(len(strata), dtype=object)
    for s in np.unique(strata):
        idx = np.flatnonzero(strata == s)
        rng.shuffle(idx)
        n = len(idx)
        n_test = int(round(fr[2] * n))
        n_valid = int(round(fr[1] * n))
        if n - n_test - n_valid < 1:  # tiny strata: train first
            n_test, n_valid = max(0, min(n_test, n - 2)), max(0, min(n_valid, n - 1))
        out[idx[: n - n_valid - n_test]] = "train"
        out[idx[n - n_valid - n_test : n - n_test]] = "valid"
        out[idx[n - n_test :]] = "test"
    return out
