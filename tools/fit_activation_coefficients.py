"""Fit the polynomial coefficients of the normal CDF used by the GELU kernel.

    python tools/fit_activation_coefficients.py      (needs numpy and scipy)

src/lemur/_kernels.pyx evaluates Phi(x) = erfc(-x / sqrt 2) / 2 with two
polynomials, z = x / sqrt 2:

* |z| < 1:  erf(z) = z + z P(z^2), P of degree 5, fitted to erf(z)/z - 1 with
  a uniform (relative) error weight;
* |z| >= 1: erfc(|z|) = exp(Q(|z|)), Q of degree 9, fitted to log erfc(t) on
  [1, 5] with a uniform weight (so erfc has a uniform relative error).

Each fit is a weighted minimax fit by Lawson's algorithm (iteratively
reweighted least squares) on Chebyshev nodes; the coefficients are printed
rounded to float32, lowest degree first, as the kernel's Horner schemes use
them (highest first).
"""

from __future__ import annotations

import numpy as np
from scipy import special


def minimax(function, basis, low, high, degree, iterations=30, nodes=4000):
    """Lawson's algorithm: the least-squares weights converge to the minimax fit."""
    x = np.cos(np.linspace(0, np.pi, nodes)) * (high - low) / 2 + (low + high) / 2
    y = function(x)
    design = basis(x, degree)
    weights = np.full(nodes, 1.0 / nodes)
    for _ in range(iterations):
        root = np.sqrt(weights)
        coefficients, *_ = np.linalg.lstsq(design * root[:, None], y * root, rcond=None)
        error = np.abs(design @ coefficients - y)
        weights = weights * error
        weights /= weights.sum()
    return coefficients.astype(np.float32), float(error.max())


def main() -> None:
    even_powers = lambda z, degree: np.stack([(z * z) ** k for k in range(degree + 1)], axis=1)
    powers = lambda t, degree: np.stack([t**k for k in range(degree + 1)], axis=1)

    p, error = minimax(lambda z: special.erf(z) / z - 1.0, even_powers, 1e-4, 1.0, 5)
    print(f"P (erf(z)/z - 1 in z^2 on [0, 1]), max relative error {error:.2g}:")
    print("  " + ", ".join(repr(float(c)) for c in p))

    q, error = minimax(lambda t: np.log(special.erfc(t)), powers, 1.0, 5.0, 9)
    print(f"Q (log erfc(t) on [1, 5]), max absolute error {error:.2g}:")
    print("  " + ", ".join(repr(float(c)) for c in q))


if __name__ == "__main__":
    main()
