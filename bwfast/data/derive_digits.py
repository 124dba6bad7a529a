"""Derive ``digits_cov.npy``, the covariance of the 8x8 handwritten digits.

Run once by hand (it needs scikit-learn, which bwfast does not depend on):

    python bwfast/data/derive_digits.py

The package only reads the resulting ``.npy`` file; this script is not
imported by it. See ``README.md`` in this folder for the source and licence.
"""

from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

OUT = Path(__file__).with_name("digits_cov.npy")

# 1797 images x 64 pixels, pixel values 0..16, as bundled with scikit-learn.
X = load_digits().data.astype(np.float64)
if X.shape != (1797, 64):
    raise SystemExit(f"unexpected digits shape {X.shape}; expected (1797, 64)")

# Sample covariance over images (ddof=1), pixels as variables.
cov = np.cov(X, rowvar=False, ddof=1)

# np.cov computes X_c^T X_c / (m - 1), which comes out exactly symmetric.
if not np.array_equal(cov, cov.T):
    raise SystemExit("covariance is not exactly symmetric")

constant = np.flatnonzero(X.std(axis=0) == 0)
rank = np.linalg.matrix_rank(cov)
print(f"shape {cov.shape}, constant pixels {constant.tolist()}, rank {rank}")

np.save(OUT, cov, allow_pickle=False)
print(f"wrote {OUT}")
