"""Helpers shared by the data sources: argument checks, seeded splits, normalisation."""

from __future__ import annotations

import numpy as np

from worker.data._errors import DatasetError

__all__ = [
    "cap_index",
    "cap_train",
    "check_split_args",
    "resolve_split_seed",
    "stratified_split",
    "three_way_split",
]


def resolve_split_seed(split_seed: int, seed: int | None) -> int:
    """``split_seed``, or the older keyword ``seed`` when only that one is given.

    ``seed`` is the name this argument had before it was told apart from the search seed; it
    still means the split seed here. Giving both with different values is an error.
    """
    if seed is None:
        return split_seed
    if split_seed not in (0, seed):
        raise DatasetError(
            f"seed={seed!r} and split_seed={split_seed!r} disagree; seed is the old name of "
            "split_seed, give only split_seed"
        )
    return seed


def check_split_args(
    *,
    seed: int,
    val_fraction: float | None,
    max_train: int | None,
    test_fraction: float = 0.0,
) -> None:
    """Raise :class:`DatasetError` for a split seed, fraction or train cap out of range.

    ``val_fraction`` may be ``None`` (the source's default); ``test_fraction`` may be 0 (no
    test split carved out).
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DatasetError(f"split_seed must be a non-negative integer, got {seed!r}")
    if val_fraction is not None:
        _check_fraction("val_fraction", val_fraction, allow_zero=False)
    _check_fraction("test_fraction", test_fraction, allow_zero=True)
    if (val_fraction or 0.0) + test_fraction >= 1.0:
        raise DatasetError(
            f"val_fraction ({val_fraction}) plus test_fraction ({test_fraction}) must stay "
            "below 1, leaving examples to train on"
        )
    if max_train is not None and (
        isinstance(max_train, bool) or not isinstance(max_train, int) or max_train < 1
    ):
        raise DatasetError(f"max_train must be None or a positive integer, got {max_train!r}")


def _check_fraction(name: str, value: float, *, allow_zero: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DatasetError(f"{name} must be a number in [0, 1), got {value!r}")
    low_ok = float(value) >= 0.0 if allow_zero else float(value) > 0.0
    if not (low_ok and float(value) < 1.0):
        bound = "in [0, 1)" if allow_zero else "strictly between 0 and 1"
        raise DatasetError(f"{name} must lie {bound}, got {value}")


def stratified_split(
    labels: np.ndarray, *, seed: int, val_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a seeded, stratified train/validation split of ``labels``.

    Each class contributes ``round(n_class * val_fraction)`` examples to validation; both index
    arrays are then shuffled. The same ``seed`` always gives the same split.
    """
    train_idx, val_idx = _stratified(labels, seed=seed, fraction=val_fraction)
    if len(train_idx) == 0 or len(val_idx) == 0:
        empty = "training" if len(train_idx) == 0 else "validation"
        raise DatasetError(
            f"val_fraction={val_fraction} leaves the {empty} split empty "
            f"({len(labels)} examples in all); use more data or another val_fraction"
        )
    return train_idx, val_idx


def _stratified(labels: np.ndarray, *, seed: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    keep_parts: list[np.ndarray] = []
    out_parts: list[np.ndarray] = []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n_out = int(np.floor(len(members) * fraction + 0.5))
        out_parts.append(members[:n_out])
        keep_parts.append(members[n_out:])
    empty = np.empty(0, dtype=np.int64)
    keep = rng.permutation(np.concatenate(keep_parts)) if keep_parts else empty
    out = rng.permutation(np.concatenate(out_parts)) if out_parts else empty
    return keep.astype(np.int64), out.astype(np.int64)


def three_way_split(
    labels: np.ndarray, *, seed: int, val_fraction: float, test_fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Seeded, stratified train/val/test indices of ``labels``; fractions of the whole.

    Validation is drawn first, exactly as :func:`stratified_split` draws it (so adding a test
    split leaves validation as it was); the test split is then drawn, stratified, from the rest
    with seed ``seed + 1``. ``test`` is ``None`` when ``test_fraction`` is 0 or rounds to no
    example. The three index sets are disjoint.
    """
    train_idx, val_idx = stratified_split(labels, seed=seed, val_fraction=val_fraction)
    if test_fraction <= 0:
        return train_idx, val_idx, None
    share = test_fraction / (1.0 - val_fraction)
    keep, out = _stratified(labels[train_idx], seed=seed + 1, fraction=share)
    if len(out) == 0 or len(keep) == 0:
        return train_idx, val_idx, None
    return train_idx[keep], val_idx, train_idx[out]


def cap_train(
    x: np.ndarray, y: np.ndarray, *, max_train: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Keep a seeded random subset of at most ``max_train`` training examples, in order."""
    keep = cap_index(len(y), max_train=max_train, seed=seed)
    return (x, y) if keep is None else (x[keep], y[keep])


def cap_index(n: int, *, max_train: int | None, seed: int) -> np.ndarray | None:
    """Sorted indices of a seeded random subset of ``max_train`` of ``n``; ``None``: keep all."""
    if max_train is None or n <= max_train:
        return None
    return np.sort(np.random.default_rng(seed).permutation(n)[:max_train])
