"""Critical points of the network BW loss, their realization as balanced
weights, the classification of trained weights, the margin, and the
initializations of :func:`bwfast.fit`."""

import heapq
import math
import numbers
from dataclasses import dataclass, field

import numpy as np

from ._validate import scalar
from .linalg import bures_wasserstein, bures_wasserstein_squared
from .network import (
    Target,
    as_target,
    balanced_weights,
    check_tau,
    check_weights,
    end_to_end,
)
from .train import _check_widths

__all__ = [
    "CriticalPoint",
    "critical_points",
    "count_critical_points",
    "realize",
    "Classification",
    "classify",
    "margin",
    "init_weights",
    "INITS",
]

# Target eigenvalues closer than this fraction of lambda_1 count as one
# repeated eigenvalue. The eigendecomposition of a rotated diagonal matrix
# separates equal eigenvalues by a few n * eps * lambda_1 (1e-15 for small
# n); genuinely distinct eigenvalues this close make the critical points
# ill-determined anyway.
TIE_RTOL = 1e-9


ORDERS = ("loss", "size")
INITS = ("balanced", "margin", "orthogonal", "gaussian")


@dataclass(frozen=True)
class CriticalPoint:
    """One critical set of the function-space loss Sigma -> L_tau(Sigma).

    The point is Sigma_J = Omega_J diag(lambda_J - tau) Omega_J^T for an
    index set J of the target's eigenvalues (0-based, into
    ``target.eigvals``, which are sorted descending), and the model
    covariance there is Sigma_J + tau I.

    Attributes
    ----------
    index_set : tuple of int
        J, 0-based and increasing. When J takes some but not all indices of
        a repeated eigenvalue, the critical set is a manifold (any
        orthonormal basis of the chosen part of the eigenspace); J is then
        its canonical representative, which takes the first indices of each
        repeated eigenvalue.
    rank : int
        |J|, the rank of Sigma_J.
    loss : float
        L_tau at the point: sum over i not in J of (sqrt(lambda_i) -
        sqrt(tau))^2 (for tau = 0, the sum of the left-out eigenvalues),
        accurate to a few ulps (for tau > 0 each term is formed as
        ((lambda_i - tau) / (sqrt(lambda_i) + sqrt(tau)))^2, free of
        cancellation; the sum by math.fsum).
    optimum : float
        The global minimum over rank <= k (equal to :func:`optimal_loss`).
    is_global_minimum : bool
        True for J = {0 .. p-1}, p = min(k, number of eigenvalues > tau):
        the only critical set (point or manifold) at the optimum.
    dimension : int
        Dimension of the critical manifold, sum over repeated eigenvalues
        of j (m - j) for j of its m indices in J (a Grassmannian); 0 for an
        isolated point. The loss is the same all over the manifold.
    tau : float
    target : Target
        Kept to build the matrices; not part of equality or the repr.
    """

    index_set: tuple
    rank: int
    loss: float
    optimum: float
    is_global_minimum: bool
    dimension: int
    tau: float
    target: Target = field(repr=False, compare=False)

    @property
    def relative_gap(self):
        """(loss - optimum) / optimum; divided by tr Sigma0 when the optimum
        is zero (and 0 for a zero target), as in :class:`FitResult`."""
        gap = self.loss - self.optimum
        if self.optimum > 0:
            return gap / self.optimum
        return gap / self.target.trace if self.target.trace > 0 else gap

    def factor(self):
        """W_J = Omega_J diag(sqrt(lambda_J - tau)), shape (n, r): the
        end-to-end factor with W_J W_J^T = Sigma_J."""
        J = list(self.index_set)
        lam = self.target.eigvals[J]
        return self.target.eigvecs[:, J] * np.sqrt(lam - self.tau)

    def covariance(self):
        """Sigma_J = W_J W_J^T, shape (n, n), exactly symmetric."""
        W = self.factor()
        S = W @ W.T
        return 0.5 * (S + S.T)


class _Landscape:
    """The spectrum data shared by enumeration and classification."""

    def __init__(self, target, k, tau):
        t = as_target(target)
        k = scalar(k, "k", low=0, integer=True)
        if k > t.n:
            raise ValueError(f"`k` must be <= n = {t.n}; got {k}")
        tau = check_tau(tau)
        lam = t.eigvals
        self.t, self.k, self.tau = t, k, tau
        # only eigenvalues above tau give a PSD Sigma_J; one equal to tau
        # (or a zero eigenvalue at tau = 0) adds nothing to Sigma_J
        self.m = int(np.count_nonzero(lam > tau))
        self.p = min(k, self.m)
        self.terms = _terms(lam, tau)
        self.groups = _tie_groups(lam[: self.m])
        self.sizes = [hi - lo for lo, hi in self.groups]
        self.top = self._greedy(self.p)
        self.optimum = self._loss(self._indices(self.top))

    def _greedy(self, r):
        counts, left = [], r
        for size in self.sizes:
            counts.append(min(size, left))
            left -= counts[-1]
        return tuple(counts)

    def _indices(self, counts):
        return tuple(
            i for (lo, _), j in zip(self.groups, counts) for i in range(lo, lo + j)
        )

    def _loss(self, J):
        keep = np.ones(self.t.n, dtype=bool)
        keep[list(J)] = False
        return math.fsum(self.terms[keep])

    def point(self, counts):
        J = self._indices(counts)
        return CriticalPoint(
            index_set=J,
            rank=len(J),
            loss=self._loss(J),
            optimum=self.optimum,
            is_global_minimum=tuple(counts) == self.top,
            dimension=sum(j * (m - j) for j, m in zip(counts, self.sizes)),
            tau=self.tau,
            target=self.t,
        )

    def count(self):
        # coefficients of prod_e (1 + x + ... + x^{m_e}) up to degree p
        poly = [1] + [0] * self.p
        for size in self.sizes:
            new = [0] * (self.p + 1)
            for deg, c in enumerate(poly):
                if c:
                    for j in range(min(size, self.p - deg) + 1):
                        new[deg + j] += c
            poly = new
        return sum(poly)


def _terms(lam, tau):
    """(sqrt(lam) - sqrt(tau))^2 elementwise, formed as ((lam - tau) /
    (sqrt(lam) + sqrt(tau)))^2: no cancellation near tau."""
    if tau == 0.0:
        return np.array(lam, dtype=np.float64)
    return ((lam - tau) / (np.sqrt(lam) + math.sqrt(tau))) ** 2


def _tie_groups(lam):
    """Runs of (descending) eigenvalues within TIE_RTOL * lambda_1 of the
    first of the run, as (start, stop) index pairs."""
    groups, lo = [], 0
    tol = TIE_RTOL * (float(lam[0]) if lam.size else 0.0)
    for i in range(1, lam.size + 1):
        if i == lam.size or lam[lo] - lam[i] > tol:
            groups.append((lo, i))
            lo = i
    return groups


def count_critical_points(target, k, tau=0.0):
    """Number of critical sets :func:`critical_points` enumerates.

    With m eigenvalues above tau, all distinct, it is
    sum_{r=0}^{min(k, m)} C(m, r); for a positive definite target at
    tau = 0 that is sum_{r <= k} C(n, r). A repeated eigenvalue counts each
    manifold once (see :class:`CriticalPoint`). An exact Python int.

    Examples
    --------
    >>> import numpy as np
    >>> from bwfast.theory import count_critical_points
    >>> count_critical_points(np.diag([3.0, 2.0, 1.0]), 2)   # 1 + 3 + 3
    7
    >>> count_critical_points(np.diag([2.0, 1.0, 1.0]), 2)  # {},{0},{1},{0,1},{1,2}
    5
    """
    return _Landscape(target, k, tau).count()


def critical_points(target, k, tau=0.0, *, max_count=None, order="loss"):
    """Enumerate the function-space critical points of the BW loss.

    For every index set J of size r = 0 .. k of the eigenvalues lambda_i >
    tau, the critical point Sigma_J = Omega_J diag(lambda_J - tau)
    Omega_J^T of Sigma -> BW^2(Sigma + tau I, Sigma0) over rank(Sigma) <= k.
    Sigma_J + tau I and Sigma0 share the eigenvectors Omega, so

        L_tau(Sigma_J) = sum_{i not in J} (sqrt(lambda_i) - sqrt(tau))^2,

    which for tau = 0 is the sum of the left-out eigenvalues. Every set but
    J = {0 .. k-1} is a saddle.

    Eigenvalues <= tau never enter J: Sigma_J would not be PSD (or, for
    lambda_i = tau and for zero eigenvalues at tau = 0, would equal Sigma_J
    without i). The theory assumes 0 < tau <= lambda_k; for a larger tau the
    sets have at most m < k indices, m the number of eigenvalues above tau,
    and the global minimum is J = {0 .. m-1}, matching :func:`optimal_loss`.
    Repeated eigenvalues (equal within ``TIE_RTOL * lambda_1``) make
    critical manifolds; each is produced once, see :class:`CriticalPoint`.

    Parameters
    ----------
    target : Target or (n, n) array_like
    k : int
        Rank bound (the minimum width of the network), 0 <= k <= n.
    tau : float, default 0
    max_count : int, optional
        Stop after this many points (>= 0). The total is
        :func:`count_critical_points`, sum_r C(m, r), which explodes with n.
    order : {'loss', 'size'}
        'loss': increasing loss, the global minimum first, produced lazily
        by a best-first search, so the first ``max_count`` points cost
        O(max_count * n) work and memory even when the total is
        astronomical. 'size': r = 0, 1, .., k, each size in lexicographic
        order of J.

    Yields
    ------
    CriticalPoint

    Examples
    --------
    >>> import numpy as np
    >>> from bwfast.theory import critical_points
    >>> pts = list(critical_points(np.diag([3.0, 2.0, 1.0]), 2))
    >>> [(p.index_set, p.loss) for p in pts[:3]]
    [((0, 1), 1.0), ((0, 2), 2.0), ((0,), 3.0)]
    >>> pts[0].is_global_minimum, len(pts)
    (True, 7)
    """
    land = _Landscape(target, k, tau)
    if max_count is not None:
        max_count = scalar(max_count, "max_count", low=0, integer=True)
    if order not in ORDERS:
        raise ValueError(f"`order` must be one of {ORDERS}; got {order!r}")
    gen = _by_loss(land) if order == "loss" else _by_size(land)
    return _bounded(gen, max_count)


def _bounded(gen, max_count):
    for produced, point in enumerate(gen):
        if max_count is not None and produced >= max_count:
            return
        yield point


def _by_size(land):
    for r in range(land.p + 1):
        for counts in _count_vectors(land.sizes, r):
            yield land.point(counts)


def _count_vectors(sizes, r):
    """Vectors 0 <= j_e <= sizes[e] with sum r, the largest j_0 first (the
    lexicographic order of their index sets); an explicit stack, so that
    thousands of eigenvalues need no deep recursion."""
    G = len(sizes)
    if G == 0:
        if r == 0:
            yield ()
        return
    room = [0] * (G + 1)  # room[e]: how many indices groups e.. can take
    for e in range(G - 1, -1, -1):
        room[e] = room[e + 1] + sizes[e]
    if r > room[0]:
        return
    counts = [0] * G
    stack = [[min(sizes[0], r), r]]  # per level: [next choice, budget left]
    while stack:
        e = len(stack) - 1
        choice, left = stack[-1]
        if choice < max(0, left - room[e + 1]):
            stack.pop()
            if stack:
                stack[-1][0] -= 1
            continue
        counts[e] = choice
        if e == G - 1:
            yield tuple(counts)
            stack[-1][0] -= 1
        else:
            rest = left - choice
            stack.append([min(sizes[e + 1], rest), rest])


def _by_loss(land):
    # Best-first search from the optimum. The moves "drop one index of
    # group e" and "move one index from group e to group e + 1" each raise
    # the loss (the group's term is larger than the next one's), and every
    # admissible set is reached from the optimum by such moves, so popping
    # the heap yields the sets in increasing loss.
    start = land.top
    heap = [_entry(land, start)]
    seen = {start}
    while heap:
        _, _, _, counts = heapq.heappop(heap)
        yield land.point(counts)
        for nxt in _moves(counts, land.sizes):
            if nxt not in seen:
                seen.add(nxt)
                heapq.heappush(heap, _entry(land, nxt))


def _entry(land, counts):
    J = land._indices(counts)
    return (land._loss(J), len(J), J, counts)


def _moves(counts, sizes):
    for e, j in enumerate(counts):
        if j == 0:
            continue
        c = list(counts)
        c[e] -= 1
        yield tuple(c)
        if e + 1 < len(counts) and counts[e + 1] < sizes[e + 1]:
            c[e + 1] += 1
            yield tuple(c)


def realize(point, widths, *, seed=0):
    """Balanced network weights whose end-to-end matrix is a critical point.

    With W_J = Omega_J diag(s) (s = sqrt(lambda_J - tau), r columns), the
    end-to-end matrix is W = W_J V^T for a random d_0 x r matrix V with
    orthonormal columns, so W W^T = Sigma_J and rank W = r (below the
    bound k = min width when r < k: the missing singular values are zero).
    Layer j is O_j diag(s^{1/N}) O_{j-1}^T with O_0 = V, O_N = Omega_J and
    random orthonormal d_j x r frames O_j in between, so the layers are
    exactly balanced, W_{j+1}^T W_{j+1} = W_j W_j^T = O_j diag(s^{2/N})
    O_j^T, up to rounding (about 1e-16 relative).

    The realized weights are critical points of the network loss: the
    gradient vanishes up to rounding (about 1e-15 times the scale). At
    tau = 0 with r < k the rank of W is below k, where the loss has a kink;
    :func:`loss_and_grad` then warns and returns its minimum-norm
    subgradient, which is zero there too.

    Every point but the global minimum is a saddle, and an unstable one:
    gradient descent started exactly at realized saddle weights stays there
    only while the rounding error of the start (about 1e-16) is small, as
    the descent amplifies it exponentially. On an O(1) 5 x 5 target, widths
    (5, 3, 3, 5) and the default step size, the weights move by about 1e-14
    in 50 steps and 1e-8 in 200, and the run has left the saddle (lower
    loss, another nearest critical point) after a few hundred steps; at
    tau = 0.3 the growth is slower (1e-10 after 400 steps). So such a run
    stays at the saddle, to near rounding level, for tens of steps only.

    Parameters
    ----------
    point : CriticalPoint
    widths : sequence of int
        d_0 .. d_N with d_N = n and min width >= point.rank.
    seed : int or None
        Seed of V and of the hidden frames.

    Returns
    -------
    list of (d_j, d_{j-1}) ndarray, float64

    Examples
    --------
    >>> import numpy as np
    >>> from bwfast import end_to_end
    >>> from bwfast.theory import critical_points, realize
    >>> pt = next(critical_points(np.diag([3.0, 2.0, 1.0]), 2))
    >>> ws = realize(pt, (4, 2, 3))
    >>> bool(np.allclose(end_to_end(ws) @ end_to_end(ws).T, pt.covariance()))
    True
    """
    if not isinstance(point, CriticalPoint):
        raise TypeError(f"`point` must be a CriticalPoint; got {point!r}")
    dims = _dims(widths, point.target.n)
    if seed is not None:
        seed = scalar(seed, "seed", low=0, integer=True)
    if min(dims) < point.rank:
        raise ValueError(
            f"`widths` must all be >= the point's rank {point.rank}; got "
            f"{tuple(dims)}"
        )
    rng = np.random.default_rng(seed)
    r, N = point.rank, len(dims) - 1
    frames = [_frame(rng, d, r) for d in dims[:-1]]
    frames.append(point.target.eigvecs[:, list(point.index_set)])
    root = (point.target.eigvals[list(point.index_set)] - point.tau) ** (0.5 / N)
    return [(frames[j + 1] * root) @ frames[j].T for j in range(N)]


def _frame(rng, d, r):
    """A random d x r matrix with orthonormal columns (Haar distributed)."""
    Q, R = np.linalg.qr(rng.standard_normal((d, r)))
    return Q * np.where(np.diag(R) < 0, -1.0, 1.0)


def _dims(widths, n):
    if isinstance(widths, (str, bytes)) or not hasattr(widths, "__iter__"):
        raise TypeError(f"`widths` must be a sequence of integers; got {widths!r}")
    return [int(d) for d in _check_widths(list(widths), n)]


@dataclass(frozen=True)
class Classification:
    """Which critical point trained weights are nearest to (:func:`classify`).

    Attributes
    ----------
    point : CriticalPoint
        The nearest critical set (its canonical representative when it is a
        manifold).
    distance : float
        ||W W^T - Sigma*||_F, Sigma* the nearest point of that set (for a
        manifold, the nearest point on it, not the representative).
    relative_distance : float
        distance / ||Sigma0||_F (the distance itself for a zero target).
    bw_distance : float
        BW(W W^T + tau I, Sigma* + tau I).
    loss : float
        BW^2(W W^T + tau I, Sigma0) of the weights.
    is_global_minimum : bool
        Whether the nearest critical set is the global minimum.
    k : int
        Minimum width of the weights, the rank bound.
    tau : float
    """

    point: CriticalPoint
    distance: float
    relative_distance: float
    bw_distance: float
    loss: float
    is_global_minimum: bool
    k: int
    tau: float


def _weights_and_tau(obj, tau, n, name):
    """(W, tau, k) from a FitResult-like object, a sequence of layers or one
    matrix; ``name`` is the caller's argument, for the messages."""
    weights = getattr(obj, "weights", obj)
    if tau is None:
        tau = getattr(obj, "tau", 0.0)
    tau = check_tau(tau)
    # an array that is neither one matrix nor a stack of layers would be
    # iterated entry by entry (a 1-D array as "layers" of shape ())
    if isinstance(weights, (list, tuple)) and weights and all(
        isinstance(w, numbers.Number) for w in weights
    ):
        weights = np.asarray(weights)
    rule = f"`{name}` must be one (n, d_0) matrix W or a sequence of 2-D layers"
    if isinstance(weights, numbers.Number):
        raise TypeError(f"{rule}; got {weights!r}")
    if isinstance(weights, np.ndarray) and weights.ndim not in (2, 3):
        raise ValueError(f"{rule}; got an array of shape {weights.shape}")
    ws, dims, _ = check_weights(weights, n)
    W = end_to_end([np.asarray(w, dtype=np.float64) for w in ws])
    return W, tau, int(dims.min())


def classify(result_or_weights, target, tau=None):
    """Name the critical point nearest to trained weights.

    Nearest in function space, in the Frobenius norm of the covariances:
    the Sigma_J (:func:`critical_points`, |J| <= k) minimizing
    ||W W^T - Sigma_J||_F. Writing a_i = omega_i^T W W^T omega_i and
    d_i = lambda_i - tau > 0,

        ||W W^T - Sigma_J||_F^2 = ||W W^T||_F^2 + sum_{i in J} d_i (d_i - 2 a_i),

    so the nearest J takes the (at most k) indices with the most negative
    d_i (d_i - 2 a_i): no enumeration of the C(n, k) sets. For a repeated
    eigenvalue the a_i are the eigenvalues of W W^T compressed to the
    eigenspace, which also gives the nearest point of the critical manifold.
    Cost: O(n^2 d_0 + n^3). The losses reported are BW values, also for a
    result trained with ``loss='frobenius'``.

    Parameters
    ----------
    result_or_weights : FitResult or sequence of 2-D array_like
        Anything with ``.weights`` (and ``.tau``), or the layers W_1 .. W_N.
    target : Target or (n, n) array_like
    tau : float, optional
        Default: the result's ``tau``, else 0. An explicit value wins.

    Returns
    -------
    Classification

    Examples
    --------
    >>> import numpy as np
    >>> from bwfast.theory import classify
    >>> c = classify([np.diag([0.0, 1.4, 0.0])], np.diag([3.0, 2.0, 1.0]))
    >>> c.point.index_set, c.is_global_minimum, round(c.distance, 6)
    ((1,), False, 0.04)
    """
    t = as_target(target)
    W, tau, k = _weights_and_tau(result_or_weights, tau, t.n,
                                  "result_or_weights")
    land = _Landscape(t, k, tau)
    Y = t.eigvecs.T @ W  # rows: W in the target's eigenbasis
    cost, where = [], []
    frames = []
    for e, (lo, hi) in enumerate(land.groups):
        a, q = np.linalg.eigh(Y[lo:hi] @ Y[lo:hi].T)
        a, q = a[::-1], q[:, ::-1]
        frames.append(t.eigvecs[:, lo:hi] @ q)
        d = float(t.eigvals[lo]) - tau
        for i, ai in enumerate(a):
            cost.append(d * (d - 2.0 * ai))
            where.append((e, i))
    counts = [0] * len(land.groups)
    for c in sorted(range(len(cost)), key=cost.__getitem__)[: land.p]:
        if cost[c] >= 0:
            break
        counts[where[c][0]] += 1
    point = land.point(counts)

    S = W @ W.T
    S = 0.5 * (S + S.T)
    near = np.zeros((t.n, t.n))
    for (lo, _), j, F in zip(land.groups, counts, frames):
        if j:
            near += (F[:, :j] * (t.eigvals[lo] - tau)) @ F[:, :j].T
    near = 0.5 * (near + near.T)
    dist = float(np.linalg.norm(S - near))
    scale = float(np.linalg.norm(t.cov))
    shift = tau * np.eye(t.n)
    return Classification(
        point=point,
        distance=dist,
        relative_distance=dist / scale if scale > 0 else dist,
        bw_distance=float(bures_wasserstein(S + shift, near + shift)),
        loss=float(bures_wasserstein_squared(S + shift, t.cov)),
        is_global_minimum=point.is_global_minimum,
        k=k,
        tau=tau,
    )


def margin(weights_or_W, target, tau=None):
    """The margin c = sqrt(lambda_k) - BW(W W^T + tau I, Sigma0).

    k is the minimum width (for a single matrix W of shape (n, d_0),
    min(n, d_0)). When c > 0 the singular values of W stay away from zero
    along gradient flow and it converges exponentially. Since
    BW >= sqrt(optimal_loss), c > 0 is only possible when
    optimal_loss(target, k, tau) < lambda_k. At tau = 0 that holds for
    k = rank of the target (where optimal_loss = 0), for instance k = n for
    a positive definite target, but not for k = n with a singular one
    (lambda_n = 0).

    Parameters
    ----------
    weights_or_W : FitResult, sequence of 2-D array_like, or (n, d_0) array
    target : Target or (n, n) array_like
    tau : float, optional
        Default: the result's ``tau``, else 0.

    Returns
    -------
    float
        c, accurate to about 1e-15 times sqrt(lambda_1) plus the accuracy
        of :func:`bures_wasserstein`.

    Examples
    --------
    >>> import numpy as np
    >>> from bwfast.theory import margin
    >>> round(margin(np.diag([2.0, 1.0]), np.diag([4.0, 1.0])), 12)   # at the optimum
    1.0
    """
    t = as_target(target)
    W, tau, k = _weights_and_tau(weights_or_W, tau, t.n, "weights_or_W")
    S = W @ W.T
    bw = float(bures_wasserstein(0.5 * (S + S.T) + tau * np.eye(t.n), t.cov))
    return math.sqrt(float(t.eigvals[k - 1])) - bw


def init_weights(init, target, widths, *, tau=0.0, seed=0):
    """The initial layers :func:`bwfast.fit` starts from for ``init``.

    All four scale the end-to-end matrix to the energy of the optimum,
    ||W||_F^2 = lambda_1 + ... + lambda_k (k = min width; 1 for a zero
    target), except where said otherwise, and all are deterministic for a
    given seed.

    - 'balanced': a Gaussian n x d_0 matrix cut to rank k by its SVD,
      scaled to that energy exactly, factored by :func:`balanced_weights`.
      Exactly balanced; rank k almost surely; no margin guarantee.
    - 'margin': W = W* + t E with W* = Omega_p diag(sqrt(lambda_p - tau)) V^T
      an optimum (p = min(k, number of eigenvalues > tau), V random
      orthonormal), E a Gaussian direction with ||E||_F = 1 and
      t = c_max / 4, c_max = sqrt(lambda_k) - sqrt(optimal_loss), then cut
      to rank k and factored by :func:`balanced_weights`. Exactly balanced,
      rank k almost surely, and margin c >= c_max / 2 > 0 (the cut moves W
      by at most t more, and BW is 1-Lipschitz in W). ValueError unless
      c_max is clearly positive: it must stay > 0 when every eigenvalue
      moves by n eps lambda_1, the rounding error of a computed spectrum
      (so a c_max that is 0 in exact arithmetic, such as lambda_k =
      optimal_loss, is refused whatever its rounding gives); where
      optimal_loss >= lambda_k no W has c > 0. The message names the
      nearest bottleneck widths k that have a margin. Not scaled to the
      energy: it sits within c_max / 2 of the optimum.
    - 'orthogonal': W_j = alpha Q_j with Q_j a Haar random matrix with
      orthonormal columns (d_j >= d_{j-1}) or rows, and one alpha for all
      layers setting the energy exactly. Every layer has all singular
      values alpha; exactly balanced when each hidden width is at most both
      its neighbours (equal widths, or bottlenecks such as n, h, h, n with
      h <= n), otherwise not; rank k almost surely; no margin guarantee.
    - 'gaussian': independent N(0, g^2 / d_{j-1}) entries with
      g^{2N} = energy / n, so that E ||W||_F^2 = energy (in expectation
      only). Not balanced (defect of the order of the layers' size);
      rank k almost surely; no margin guarantee.

    Parameters
    ----------
    init : {'balanced', 'margin', 'orthogonal', 'gaussian'}
    target : Target or (n, n) array_like
    widths : sequence of int
        d_0 .. d_N, d_N = n.
    tau : float, default 0
        Only 'margin' depends on it.
    seed : int or None
        None draws fresh entropy.

    Returns
    -------
    list of (d_j, d_{j-1}) ndarray, float64

    Examples
    --------
    >>> import numpy as np
    >>> from bwfast.theory import init_weights, margin
    >>> S0 = np.diag([4.0, 2.0, 1.0])
    >>> ws = init_weights("margin", S0, (3, 3, 3), seed=1)
    >>> bool(margin(ws, S0) > 0)
    True
    """
    t = as_target(target)
    if not isinstance(init, str) or init not in INITS:
        raise ValueError(f"`init` must be one of {INITS}; got {init!r}")
    dims = np.array(_dims(widths, t.n), dtype=np.int64)
    tau = check_tau(tau)
    if seed is not None:
        seed = scalar(seed, "seed", low=0, integer=True)
    make = {"balanced": _balanced, "margin": _margin, "orthogonal": _orthogonal,
            "gaussian": _gaussian}[init]
    return make(t, dims, seed, tau)


def _energy(t, k):
    return float(t.eigvals[:k].sum()) or 1.0


def _balanced(t, dims, seed, tau):
    # A random end-to-end matrix of rank k, scaled so that its energy
    # matches the optimum's (the top-k eigenvalues of the target). The
    # operations are those fit has always used: results stay bit-identical.
    rng = np.random.default_rng(seed)
    k = int(min(dims))
    W = rng.standard_normal((int(dims[-1]), int(dims[0])))
    U, s, Vt = np.linalg.svd(W, full_matrices=False)
    W = (U[:, :k] * s[:k]) @ Vt[:k]
    W *= np.sqrt(_energy(t, k)) / np.linalg.norm(W)
    return balanced_weights(W, [int(d) for d in dims], seed=seed)


def _c_max(lam, k, tau):
    """(c_max, lower): c_max = sqrt(lambda_k) - sqrt(optimal_loss) for rank
    bound k >= 1, and the least value it takes when every eigenvalue moves
    by delta = n eps lambda_1, the rounding error of a computed spectrum
    (the cutoff below which :class:`Target` sets eigenvalues to zero).

    The optimum is the sum of the terms (sqrt(lambda_i) - sqrt(tau))^2 of
    the eigenvalues after the top p = min(k, #{lambda_i > tau}); each term
    is convex in lambda_i, so its largest value over lambda_i +- delta is at
    an end. The lower value is therefore sqrt(lambda_k - delta) -
    sqrt(sum of those largest terms), and c_max is positive beyond its
    rounding error exactly when that is > 0. (An eigenvalue within delta of
    tau might also swap in or out of the top p, changing the optimum by
    a term of at most delta^2 / (4 tau): far below delta, ignored.)
    """
    n = lam.size
    delta = n * np.finfo(np.float64).eps * float(lam[0])
    p = min(k, int(np.count_nonzero(lam > tau)))
    rest = lam[p:]
    c = math.sqrt(float(lam[k - 1])) - math.sqrt(math.fsum(_terms(rest, tau)))
    worst = np.maximum(_terms(np.maximum(rest - delta, 0.0), tau),
                       _terms(rest + delta, tau))
    lower = (math.sqrt(max(float(lam[k - 1]) - delta, 0.0))
             - math.sqrt(math.fsum(worst)))
    return c, lower


def _margin(t, dims, seed, tau):
    k = int(min(dims))
    land = _Landscape(t, k, tau)
    c_max, lower = _c_max(t.eigvals, k, tau)
    if not lower > 0:
        ok = [j for j in range(1, t.n + 1) if _c_max(t.eigvals, j, tau)[1] > 0]
        narrower = [j for j in ok if j < k]
        wider = [j for j in ok if j > k]
        hint = [f"k = {narrower[-1]}"] if narrower else []
        hint += [f"k = {wider[0]}"] if wider else []
        kinds = " or ".join((["a narrower"] if narrower else [])
                            + (["a wider"] if wider else []))
        where = (
            f"{kinds} bottleneck ({' or '.join(hint)}) has one for this target "
            "and tau"
            if hint
            else f"no bottleneck k = 1 .. {t.n} has one for this target and tau"
        )
        why = (
            f"{c_max:.3g} <= 0, so no weights have margin c > 0" if c_max <= 0
            else f"{c_max:.3g}, within its rounding error {c_max - lower:.2g} "
            "of zero (eigenvalues are known to n eps lambda_1), so no weights "
            "are known to have margin c > 0"
        )
        raise ValueError(
            f"`init` 'margin' needs c_max = sqrt(lambda_k) - sqrt(optimal_loss) "
            f"clearly > 0 for k = {k} (min width) and tau = {tau:g}; got {why}; "
            f"{where}"
        )
    rng = np.random.default_rng(seed)
    best = land.point(land.top)
    W = best.factor() @ _frame(rng, int(dims[0]), best.rank).T
    E = rng.standard_normal(W.shape)
    W = W + (0.25 * c_max / np.linalg.norm(E)) * E
    return balanced_weights(W, [int(d) for d in dims], seed=seed)


def _orthogonal(t, dims, seed, tau):
    rng = np.random.default_rng(seed)
    layers = []
    for rows, cols in zip(dims[1:], dims[:-1]):
        rows, cols = int(rows), int(cols)
        q = _frame(rng, max(rows, cols), min(rows, cols))
        layers.append(q if rows >= cols else q.T)
    size = float(np.linalg.norm(end_to_end(layers)))
    alpha = (math.sqrt(_energy(t, int(min(dims)))) / size) ** (1.0 / len(layers))
    return [alpha * q for q in layers]


def _gaussian(t, dims, seed, tau):
    rng = np.random.default_rng(seed)
    N = len(dims) - 1
    g2 = (_energy(t, int(min(dims))) / int(dims[-1])) ** (1.0 / N)
    return [
        rng.standard_normal((int(rows), int(cols))) * math.sqrt(g2 / int(cols))
        for rows, cols in zip(dims[1:], dims[:-1])
    ]
