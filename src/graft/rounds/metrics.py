"""Continual-learning metrics from an accuracy matrix, as Avalanche defines them.

R[i, j] is the accuracy on round j's test split of the model trained in round i (0-based here; NaN where not
measured, e.g. j > i). After round k:

- average accuracy  ACC_k = mean_{j <= k} R[k, j]
- forgetting of j   F_kj  = R[j, j] - R[k, j]       (Avalanche: first accuracy after training on j, minus now)
- forgetting        F_k   = mean_{j < k} F_kj       (Avalanche's StreamForgetting)
- backward transfer BWT_k = mean_{j < k} (R[k, j] - R[j, j]) = -F_k
- max forgetting    M_k   = mean_{j < k} (max_{j <= l < k} R[l, j] - R[k, j])   (Chaudhry et al. 2018; also shown)

Forgetting and BWT are undefined (None) after the first round.
"""

from __future__ import annotations

import numpy as np


def average_accuracy(matrix: np.ndarray, k: int) -> float:
    return float(np.mean(matrix[k, : k + 1]))


def forgetting_per_round(matrix: np.ndarray, k: int) -> list[float]:
    """F_kj for every earlier round j < k."""
    return [float(matrix[j, j] - matrix[k, j]) for j in range(k)]


def forgetting(matrix: np.ndarray, k: int) -> float | None:
    values = forgetting_per_round(matrix, k)
    return float(np.mean(values)) if values else None


def backward_transfer(matrix: np.ndarray, k: int) -> float | None:
    values = [float(matrix[k, j] - matrix[j, j]) for j in range(k)]
    return float(np.mean(values)) if values else None


def max_forgetting(matrix: np.ndarray, k: int) -> float | None:
    values = [float(np.max(matrix[j:k, j]) - matrix[k, j]) for j in range(k)]
    return float(np.mean(values)) if values else None


def summary(matrix: np.ndarray, k: int) -> dict:
    """Every metric after round k, in one JSON-ready dict."""
    return {
        "average_accuracy": average_accuracy(matrix, k),
        "backward_transfer": backward_transfer(matrix, k),
        "forgetting": forgetting(matrix, k),
        "max_forgetting": max_forgetting(matrix, k),
        "forgetting_per_round": forgetting_per_round(matrix, k),
    }


def matrix_from_rows(rows: list[list[float]]) -> np.ndarray:
    """A square matrix from ragged rows (row i holds R[i, 0..]); missing entries are NaN."""
    n = len(rows)
    matrix = np.full((n, n), np.nan)
    for i, row in enumerate(rows):
        matrix[i, : min(len(row), n)] = row[:n]
    return matrix
