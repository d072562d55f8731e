"""Exact t-SNE (van der Maaten and Hinton, 2008) in numpy, for a few hundred points.

Fig. 8 of the paper shows 200 test samples of face, projected-face and
speech embeddings in one t-SNE map. scikit-learn is not a dependency of
this package, and for ~600 points the exact O(n^2) algorithm is fast
(seconds), so it is written here: the reference implementation's
perplexity calibration by binary search, early exaggeration, momentum
and per-parameter gains.

Authors
 * speechbrain_xmkd contributors
"""

import numpy as np

__all__ = ["tsne", "pca"]


def pca(x, dims):
    """Projects rows of ``x`` on their top ``dims`` principal components.

    Example
    -------
    >>> pca(np.eye(4), 2).shape
    (4, 2)
    """
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(axis=0)
    dims = min(dims, x.shape[1], x.shape[0])
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:dims].T


def _conditional_p(distances, perplexity, tol=1e-5, max_steps=100):
    """Row-wise Gaussian affinities whose entropy matches ``log(perplexity)``."""
    n = distances.shape[0]
    target = np.log(perplexity)
    p = np.zeros((n, n))
    for i in range(n):
        d = np.delete(distances[i], i)
        d = d - d.min()  # shift for stability; cancels in the normalisation
        beta, low, high = 1.0, 0.0, np.inf
        for _ in range(max_steps):
            w = np.exp(-d * beta)
            total = w.sum()
            entropy = np.log(total) + beta * (d * w).sum() / total
            if abs(entropy - target) < tol:
                break
            if entropy > target:
                low = beta
                beta = beta * 2 if high == np.inf else (beta + high) / 2
            else:
                high = beta
                beta = (beta + low) / 2
        p[i, np.arange(n) != i] = w / total
    return p


def tsne(x, dims=2, perplexity=30.0, n_iter=1000, seed=0, pca_dims=50, exaggeration=12.0,
         exaggeration_iter=None, learning_rate=None):
    """Embeds rows of ``x`` in ``dims`` dimensions with exact t-SNE.

    Arguments
    ---------
    x : array-like
        ``[n, features]`` points.
    dims : int
        Output dimensions.
    perplexity : float
        Effective number of neighbours; capped at ``(n - 1) / 3``.
    n_iter : int
        Gradient steps.
    seed : int
        Seed of the initial map.
    pca_dims : int
        PCA to this many dimensions first (as the reference code does).
    exaggeration, exaggeration_iter : float, int
        Early exaggeration factor and how long it lasts (default: the
        first quarter of the steps, at most 250).
    learning_rate : float, optional
        Default ``max(n / exaggeration, 50)``.

    Returns
    -------
    numpy.ndarray
        ``[n, dims]`` map.

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> x = np.concatenate([rng.normal(0, 1, (20, 5)), rng.normal(20, 1, (20, 5))])
    >>> y = tsne(x, perplexity=5, n_iter=300)
    >>> inside = np.linalg.norm(y[:20] - y[:20].mean(0), axis=1).mean()
    >>> between = np.linalg.norm(y[:20].mean(0) - y[20:].mean(0))
    >>> bool(between > 3 * inside)
    True
    """
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    if n < 4:
        raise ValueError(f"t-SNE needs at least 4 points, got {n}")
    if pca_dims and x.shape[1] > pca_dims:
        x = pca(x, pca_dims)
    perplexity = min(float(perplexity), (n - 1) / 3.0)
    squared = (x * x).sum(axis=1)
    distances = np.maximum(squared[:, None] + squared[None, :] - 2 * x @ x.T, 0.0)
    p = _conditional_p(distances, perplexity)
    # float32 from here: the map needs no more, and it halves the time.
    p = np.maximum((p + p.T) / (2 * n), 1e-12).astype(np.float32)
    rate = learning_rate or max(n / exaggeration, 50.0)

    if exaggeration_iter is None:
        exaggeration_iter = min(250, n_iter // 4)
    rng = np.random.default_rng(seed)
    y = rng.normal(0.0, 1e-4, (n, dims)).astype(np.float32)
    update = np.zeros_like(y)
    gains = np.ones_like(y)
    for step in range(n_iter):
        scale = exaggeration if step < exaggeration_iter else 1.0
        momentum = 0.5 if step < exaggeration_iter else 0.8
        sq = (y * y).sum(axis=1)
        kernel = sq[:, None] + sq[None, :]
        kernel -= 2 * y @ y.T
        np.maximum(kernel, 0.0, out=kernel)
        kernel += 1.0
        np.reciprocal(kernel, out=kernel)
        np.fill_diagonal(kernel, 0.0)
        q = np.maximum(kernel * (1.0 / kernel.sum()), 1e-12)
        weights = (scale * p - q) * kernel
        gradient = 4.0 * (weights.sum(axis=1)[:, None] * y - weights @ y)
        same_sign = np.sign(gradient) == np.sign(update)
        gains = np.maximum(np.where(same_sign, gains * 0.8, gains + 0.2), 0.01)
        update = momentum * update - rate * gains * gradient
        y = y + update
        y = y - y.mean(axis=0)
    return y
