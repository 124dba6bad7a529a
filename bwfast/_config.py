"""Numba options shared by every compiled kernel in bwfast."""

# Fastmath is off: the kernels must see NaN and inf honestly, and the
# eigenvalue cutoffs rely on IEEE comparisons. If it is ever switched on,
# it must exclude the "nnan" and "ninf" flags.
FASTMATH = False

# On-disk caching is safe for every kernel here: none closes over global
# arrays or depends on runtime configuration beyond argument types.
CACHE = True

JIT = dict(nogil=True, cache=CACHE, fastmath=FASTMATH)
