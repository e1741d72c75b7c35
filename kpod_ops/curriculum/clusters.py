"""K-means question clusters for the diversity term of the value function (K = 5 in the paper)."""

from __future__ import annotations

import logging

import numpy as np

from .._optional import require
from ..errors import bad_input
from .convert import plain_int

logger = logging.getLogger(__name__)


def cluster_questions(embeddings: object, n_clusters: int = 5, *, seed: int = 0, n_init: int = 10) -> np.ndarray:
    """Cluster label (0..K−1) per question: k-means++ with a fixed seed, so labels are reproducible.

    With fewer questions than K, K is reduced to the number of questions (logged).
    """
    try:
        x = np.asarray(embeddings.detach().cpu().float().numpy() if hasattr(embeddings, "detach") else embeddings, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise bad_input("embeddings", "a 2-D array of numbers [questions, dim]", f"{type(embeddings).__name__} ({exc})") from None
    if x.ndim != 2 or x.shape[0] == 0:
        raise bad_input("embeddings", "a non-empty 2-D array [questions, dim]", f"shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise bad_input("embeddings", "finite values", "NaN or inf")
    n_clusters = plain_int("n_clusters", n_clusters, "an int K >= 1", minimum=1)
    seed = plain_int("seed", seed, "an int")
    n_init = plain_int("n_init", n_init, "an int >= 1", minimum=1)
    k = min(int(n_clusters), x.shape[0])
    if k < n_clusters:
        logger.info("cluster_questions: %d questions < K=%d; using K=%d", x.shape[0], n_clusters, k)
    if k == 1:
        return np.zeros(x.shape[0], dtype=np.int64)
    KMeans = require("sklearn.cluster", extra="curriculum", feature="cluster_questions").KMeans  # lazily: ~2 s to import

    km = KMeans(n_clusters=k, init="k-means++", n_init=n_init, random_state=seed)
    return km.fit_predict(x).astype(np.int64)
