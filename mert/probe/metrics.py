"""Probe metrics in NumPy: accuracy, macro-F1, ROC-AUC, average precision, R2, beat F-measure.

Shape legend: ``N`` examples, ``C`` classes or tags, ``R`` regression outputs.

Written here rather than imported so that probing needs no scikit-learn; tests compare them with
scikit-learn and mir_eval where those are installed. All return floats in [0, 1] (R2 can be negative);
a metric that is undefined on the data (a tag with no positive example) is left out of the average.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "accuracy",
    "macro_f1",
    "roc_auc",
    "average_precision",
    "r2",
    "beat_f_measure",
    "onset_f_measure",
    "pick_peaks",
]


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of ``(N,)`` predicted class indices equal to the truth."""
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred))) if len(y_true) else float("nan")


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int | None = None) -> float:
    """Unweighted mean over classes present in truth or prediction of the per-class F1."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    classes = np.union1d(np.unique(y_true), np.unique(y_pred))
    scores = []
    for c in classes:
        tp = np.sum((y_pred == c) & (y_true == c))
        fp = np.sum((y_pred == c) & (y_true != c))
        fn = np.sum((y_pred != c) & (y_true == c))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return float(np.mean(scores)) if scores else float("nan")


def _rank_average(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (what the Mann-Whitney statistic needs)."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + 1 + ends) / 2)[inverse]


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Macro ROC-AUC over tags: ``(N, C)`` 0/1 truth and ``(N, C)`` scores (a 1-D pair is one tag).

    Tags without both a positive and a negative example are skipped (their AUC is undefined).
    """
    y_true, scores = np.atleast_2d(np.asarray(y_true).T).T, np.atleast_2d(np.asarray(scores).T).T
    out = []
    for c in range(y_true.shape[1]):
        pos = y_true[:, c] > 0.5
        n_pos, n_neg = int(pos.sum()), int((~pos).sum())
        if n_pos == 0 or n_neg == 0:
            continue
        ranks = _rank_average(scores[:, c].astype(np.float64))
        out.append((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return float(np.mean(out)) if out else float("nan")


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Macro average precision over tags (step-wise area under the precision-recall curve, as scikit-learn)."""
    y_true, scores = np.atleast_2d(np.asarray(y_true).T).T, np.atleast_2d(np.asarray(scores).T).T
    out = []
    for c in range(y_true.shape[1]):
        pos = y_true[:, c] > 0.5
        if not pos.any():
            continue
        order = np.argsort(-scores[:, c], kind="mergesort")
        s, p = scores[order, c], pos[order]
        # Tied scores form one threshold: precision and recall are read at the last item of each tie group.
        last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]
        tp = np.cumsum(p)[last]
        precision = tp / (last + 1)
        recall = tp / pos.sum()
        out.append(float(np.sum(np.diff(np.r_[0.0, recall]) * precision)))
    return float(np.mean(out)) if out else float("nan")


def r2(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Coefficient of determination averaged uniformly over outputs: ``(N, R)`` or ``(N,)``."""
    y_true = np.asarray(y_true, dtype=np.float64).reshape(len(y_true), -1)
    y_pred = np.asarray(y_pred, dtype=np.float64).reshape(len(y_pred), -1)
    ss_res = ((y_true - y_pred) ** 2).sum(0)
    ss_tot = ((y_true - y_true.mean(0)) ** 2).sum(0)
    ok = ss_tot > 0
    return float(np.mean(1 - ss_res[ok] / ss_tot[ok])) if ok.any() else float("nan")


def pick_peaks(
    activation: np.ndarray, frame_rate: float, threshold: float = 0.5, min_gap_seconds: float = 0.1
) -> np.ndarray:
    """Event times (seconds) from a ``(t,)`` probability curve: local maxima above ``threshold``, at least
    ``min_gap_seconds`` apart (the higher peak wins)."""
    a = np.asarray(activation, dtype=np.float64)
    if a.size == 0:
        return np.zeros(0)
    left = np.r_[-np.inf, a[:-1]]
    right = np.r_[a[1:], -np.inf]
    cand = np.flatnonzero((a >= left) & (a > right) & (a >= threshold))
    gap = max(1, int(round(min_gap_seconds * frame_rate)))
    kept: list[int] = []
    for i in cand[np.argsort(-a[cand], kind="mergesort")]:
        if all(abs(i - k) >= gap for k in kept):
            kept.append(int(i))
    return np.sort(np.array(kept, dtype=np.float64)) / frame_rate


def beat_f_measure(reference: np.ndarray, estimated: np.ndarray, tolerance: float = 0.07) -> float:
    """F-measure of estimated beat times against reference times, each reference matched at most once within
    ``tolerance`` seconds: ``mir_eval.beat.f_measure`` when mir_eval is installed, else the same computation
    here (the tests check they agree). Beats in the first 5 s are kept (mir_eval's ``trim_beats`` is not applied:
    probe clips are often shorter than 5 s)."""
    ref, est = np.sort(np.asarray(reference, float)), np.sort(np.asarray(estimated, float))
    try:
        import mir_eval.beat
    except ImportError:
        return _beat_f_measure(ref, est, tolerance)
    if len(ref) == 0 or len(est) == 0:  # mir_eval warns and returns 0 for both; keep our convention
        return _beat_f_measure(ref, est, tolerance)
    return float(mir_eval.beat.f_measure(ref, est, f_measure_threshold=tolerance))


def onset_f_measure(reference: np.ndarray, estimated: np.ndarray, tolerance: float = 0.05) -> float:
    """F-measure of estimated onset times within ``tolerance`` seconds: ``mir_eval.onset.f_measure`` when
    installed (maximum bipartite matching), else the greedy matching of :func:`beat_f_measure`, which is the
    same whenever onsets are further apart than twice the window."""
    ref, est = np.sort(np.asarray(reference, float)), np.sort(np.asarray(estimated, float))
    try:
        import mir_eval.onset
    except ImportError:
        return _beat_f_measure(ref, est, tolerance)
    if len(ref) == 0 or len(est) == 0:
        return _beat_f_measure(ref, est, tolerance)
    return float(mir_eval.onset.f_measure(ref, est, window=tolerance)[0])


def _beat_f_measure(ref: np.ndarray, est: np.ndarray, tolerance: float) -> float:
    if len(ref) == 0 and len(est) == 0:
        return 1.0
    if len(ref) == 0 or len(est) == 0:
        return 0.0
    # Greedy one-to-one matching in time order is optimal here because both lists are sorted and the window is
    # shorter than half the smallest inter-beat interval of real music.
    i = j = hits = 0
    while i < len(ref) and j < len(est):
        d = est[j] - ref[i]
        if abs(d) <= tolerance:
            hits += 1
            i += 1
            j += 1
        elif d < 0:
            j += 1
        else:
            i += 1
    precision, recall = hits / len(est), hits / len(ref)
    return 0.0 if hits == 0 else 2 * precision * recall / (precision + recall)
