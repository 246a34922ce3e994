# cython: language_level=3, cdivision=True
"""Element-wise math and row reductions for the kernels, written to vectorise.

Shared by every kernel module (``cimport``-ed, so each instruction-set variant
of ``_kernels.pyx`` compiles its own copy at its own vector width):

* no libm call per element: exp, erf, tanh and friends are polynomial
  approximations built from +, *, comparisons and one integer bit trick;
* reductions keep LANES = 16 independent partial sums, held in the vectors of
  _simd.h (one zmm, two ymm or four xmm) and added lane by lane at the end, so
  they need no -ffast-math and sum in the same order at every level. (Written
  as plain 16-lane loops, GCC vectorised them lane by lane with shuffles: the
  LayerNorm sums then took 18% of the feature map's time, now 6%.) Each loop
  takes the PARTIAL_VECTORS vectors of a block of LANES values in an inner
  loop of constant indices, so that the partial sums stay in registers:
  indexed as partial[vector % PARTIAL_VECTORS] they lived on the stack, and
  with two ymm (AVX2) the LayerNorm waited on a store and a load per add (10%
  of the feature map's time on Zen 3, by perf).
"""

from libc.math cimport fabsf, sqrtf
from libc.stdint cimport int32_t
from libc.string cimport memcpy

from lemur._simd cimport (
    PARTIAL_VECTORS,
    VECTOR_FLOATS,
    lemur_vector,
    vector_add,
    vector_broadcast,
    vector_fma,
    vector_fma_lanes,
    vector_load,
    vector_scale,
    vector_store,
    vector_subtract,
    vector_zero,
)

cdef enum:
    # Independent partial sums in reductions (the widest SIMD register holds
    # 16 floats).
    LANES = 16

# Activation codes (lemur.model.ACTIVATIONS maps names to them).
cdef enum Activation:
    RELU = 0
    GELU = 1
    GELU_TANH = 2
    SILU = 3
    MISH = 4


# Reinterprets the bits of an int32 as a float (compiles to no instruction).
cdef inline float float_from_bits(int32_t bits) noexcept nogil:
    cdef float value
    memcpy(&value, &bits, sizeof(value))
    return value


# --------------------------------------------------------------------------
# Element-wise math. Each function is accurate to about one float32 rounding
# of max(1, |x|) (tests/test_kernels.py measures it against float64).
# --------------------------------------------------------------------------

# exp(x) for x in [-87, 88] with a relative error of about 1 ulp; inputs outside
# are clamped there (exp(-87) ~ 1.6e-38 stands in for smaller values, exp(88)
# ~ 1.7e38 for larger ones; the callers only add these to 1 or divide by them).
# x = n ln2 + r with |r| <= ln2/2 (Cody-Waite split of ln2), exp(r) by its
# degree-6 Taylor polynomial, 2**n built from its exponent bits. n rounds
# x / ln2 to nearest as trunc(x / ln2 + 126.5) - 126: the argument of trunc is
# positive after clamping, and this form vectorises where a sign-dependent
# +-0.5 would be turned into a call to lroundf.
cdef inline float exp_approx(float x) noexcept nogil:
    cdef float clamped = min(max(x, <float>-87.0), <float>88.0)
    cdef float scaled = clamped * <float>1.4426950408889634
    cdef int32_t n = <int32_t>(scaled + <float>126.5) - 126
    cdef float n_float = <float>n
    cdef float r = clamped - n_float * <float>0.693359375
    r = r - n_float * <float>-2.12194440e-4
    cdef float p = <float>(1.0 / 720.0)
    p = p * r + <float>(1.0 / 120.0)
    p = p * r + <float>(1.0 / 24.0)
    p = p * r + <float>(1.0 / 6.0)
    p = p * r + <float>0.5
    p = p * r + <float>1.0
    p = p * r + <float>1.0
    return p * float_from_bits((n + 127) << 23)


# Standard normal CDF Phi(x) = erfc(-x / sqrt 2) / 2, without cancellation:
#   |z| < 1 (z = x / sqrt 2):  Phi = 1/2 + erf(z)/2, erf(z) = z + z P(z^2),
#                              P of degree 5, relative error 4e-8;
#   |z| >= 1:                  erfc(|z|) = exp(Q(|z|)), Q of degree 9 fitted to
#                              log erfc on [1, 5] (error 1.1e-8); Phi = erfc/2
#                              for x < 0 and 1 - erfc/2 for x > 0. Beyond
#                              |z| = 5, erfc(5)/2 = 8e-13 stands in for erfc.
# Coefficients: tools/fit_activation_coefficients.py.
cdef inline float normal_cdf(float x) noexcept nogil:
    cdef float z = x * <float>0.7071067811865476
    cdef float t = fabsf(z)
    cdef float s = z * z
    cdef float p = <float>-5.6605e-04
    p = p * s + <float>4.92488e-03
    p = p * s + <float>-2.67178e-02
    p = p * s + <float>1.1280415e-01
    p = p * s + <float>-3.7612358e-01
    p = p * s + <float>1.2837914e-01
    cdef float small = <float>0.5 + <float>0.5 * (z + z * p)
    cdef float u = min(t, <float>5.0)
    cdef float q = <float>-1.08160307e-07
    q = q * u + <float>4.04720686e-06
    q = q * u + <float>-6.93540205e-05
    q = q * u + <float>7.24799931e-04
    q = q * u + <float>-5.19936858e-03
    q = q * u + <float>2.73995139e-02
    q = q * u + <float>-1.11487545e-01
    q = q * u + <float>-6.30564868e-01
    q = q * u + <float>-1.13087177e+00
    q = q * u + <float>4.59173956e-04
    cdef float tail = <float>0.5 * exp_approx(q)
    cdef float large = (<float>1.0 - tail) if x > 0 else tail
    return small if t < 1 else large


# x / (1 + exp(-y)): x times the logistic sigmoid of y.
cdef inline float times_sigmoid(float x, float y) noexcept nogil:
    return x / (<float>1.0 + exp_approx(-y))


cdef inline float relu(float x) noexcept nogil:
    return x if x > 0 else <float>0.0


# GELU, exact erf form: x Phi(x) (PyTorch's nn.GELU()).
cdef inline float gelu(float x) noexcept nogil:
    return x * normal_cdf(x)


# GELU, tanh approximation (nn.GELU(approximate="tanh"), the Numba fork's):
# x (1 + tanh(u)) / 2 = x sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3).
cdef inline float gelu_tanh(float x) noexcept nogil:
    cdef float u = <float>0.7978845608028654 * (x + <float>0.044715 * x * x * x)
    return times_sigmoid(x, <float>2.0 * u)


# SiLU: x sigmoid(x).
cdef inline float silu(float x) noexcept nogil:
    return times_sigmoid(x, x)


# Mish: x tanh(softplus(x)). With e = exp(x), tanh(log(1 + e)) = n / (n + 2),
# n = e (e + 2), which keeps full relative accuracy for very negative x; for
# x > 20 the ratio is 1 in float32.
cdef inline float mish(float x) noexcept nogil:
    cdef float e = exp_approx(min(x, <float>20.0))
    cdef float n = e * (e + <float>2.0)
    return x * (n / (n + <float>2.0))


# The activations' derivatives, for training (tests/test_training.py checks
# each against finite differences in float64).

# GELU': Phi(x) + x phi(x), phi the standard normal density.
cdef inline float gelu_derivative(float x) noexcept nogil:
    return normal_cdf(x) + x * <float>0.3989422804014327 * exp_approx(<float>-0.5 * x * x)


# GELU (tanh form)': with s = sigmoid(2u), u = c (x + 0.044715 x^3):
# s + 2 x s (1 - s) c (1 + 3 * 0.044715 x^2).
cdef inline float gelu_tanh_derivative(float x) noexcept nogil:
    cdef float c = <float>0.7978845608028654
    cdef float u = c * (x + <float>0.044715 * x * x * x)
    cdef float s = <float>1.0 / (<float>1.0 + exp_approx(<float>-2.0 * u))
    return s + <float>2.0 * x * s * (<float>1.0 - s) * c * (<float>1.0 + <float>0.134145 * x * x)


# SiLU': s (1 + x (1 - s)), s = sigmoid(x).
cdef inline float silu_derivative(float x) noexcept nogil:
    cdef float s = <float>1.0 / (<float>1.0 + exp_approx(-x))
    return s * (<float>1.0 + x * (<float>1.0 - s))


# Mish': t + x sigmoid(x) (1 - t^2), t = tanh(softplus(x)) = n / (n + 2),
# n = e (e + 2), e = exp(x) (as in mish); sigmoid(x) = e / (1 + e).
cdef inline float mish_derivative(float x) noexcept nogil:
    cdef float e = exp_approx(min(x, <float>20.0))
    cdef float n = e * (e + <float>2.0)
    cdef float t = n / (n + <float>2.0)
    return t + x * (e / (<float>1.0 + e)) * (<float>1.0 - t * t)


cdef inline float activation_derivative(float x, int activation) noexcept nogil:
    if activation == RELU:
        return <float>1.0 if x > 0 else <float>0.0
    if activation == GELU:
        return gelu_derivative(x)
    if activation == GELU_TANH:
        return gelu_tanh_derivative(x)
    if activation == SILU:
        return silu_derivative(x)
    return mish_derivative(x)


# values[j] <- activation'(values[j]) for j < n, in place: a loop per
# activation, as apply_activation below, so that each vectorises (one loop
# over activation_derivative does not: layer_backward took 4x longer).
cdef inline void apply_activation_derivative(float *values, Py_ssize_t n, int activation) noexcept nogil:
    cdef Py_ssize_t j
    if activation == RELU:
        for j in range(n):
            values[j] = <float>1.0 if values[j] > 0 else <float>0.0
    elif activation == GELU:
        for j in range(n):
            values[j] = gelu_derivative(values[j])
    elif activation == GELU_TANH:
        for j in range(n):
            values[j] = gelu_tanh_derivative(values[j])
    elif activation == SILU:
        for j in range(n):
            values[j] = silu_derivative(values[j])
    elif activation == MISH:
        for j in range(n):
            values[j] = mish_derivative(values[j])


# values[j] <- activation(values[j]) for j < n, in place.
cdef inline void apply_activation(float *values, Py_ssize_t n, int activation) noexcept nogil:
    cdef Py_ssize_t j
    if activation == RELU:
        for j in range(n):
            values[j] = relu(values[j])
    elif activation == GELU:
        for j in range(n):
            values[j] = gelu(values[j])
    elif activation == GELU_TANH:
        for j in range(n):
            values[j] = gelu_tanh(values[j])
    elif activation == SILU:
        for j in range(n):
            values[j] = silu(values[j])
    elif activation == MISH:
        for j in range(n):
            values[j] = mish(values[j])


# --------------------------------------------------------------------------
# Row reductions with LANES partial sums.
# --------------------------------------------------------------------------

# The sum of LANES partial sums (PARTIAL_VECTORS vectors), lane by lane
# in order: the same at every vector width.
cdef inline float sum_partials(const lemur_vector *partial) noexcept nogil:
    cdef float lanes[LANES]
    cdef float total = 0
    cdef int part, lane
    for part in range(PARTIAL_VECTORS):
        vector_store(lanes + part * VECTOR_FLOATS, partial[part])
    for lane in range(LANES):
        total += lanes[lane]
    return total


# row[j] <- row[j] * scale + shift[j] (shift may be NULL); returns sum_j row[j].
cdef inline float scale_shift_and_sum(float *row, float scale, const float *shift, Py_ssize_t n) noexcept nogil:
    cdef lemur_vector partial[PARTIAL_VECTORS]
    cdef lemur_vector value
    cdef Py_ssize_t block, part, j, offset, num_blocks = n // LANES
    cdef float total
    for part in range(PARTIAL_VECTORS):
        partial[part] = vector_zero()
    for block in range(num_blocks):
        for part in range(PARTIAL_VECTORS):
            offset = (block * PARTIAL_VECTORS + part) * VECTOR_FLOATS
            if shift == NULL:
                value = vector_scale(vector_load(row + offset), scale)
            else:
                value = vector_fma(vector_load(shift + offset), vector_load(row + offset), scale)
            vector_store(row + offset, value)
            partial[part] = vector_add(partial[part], value)
    total = sum_partials(partial)
    for j in range(num_blocks * LANES, n):
        row[j] = row[j] * scale + (shift[j] if shift != NULL else <float>0.0)
        total += row[j]
    return total


# sum_j (row[j] - mean)^2.
cdef inline float squared_deviation_sum(const float *row, float mean, Py_ssize_t n) noexcept nogil:
    cdef lemur_vector partial[PARTIAL_VECTORS]
    cdef lemur_vector means = vector_broadcast(mean)
    cdef lemur_vector deviations
    cdef Py_ssize_t block, part, j, offset, num_blocks = n // LANES
    cdef float deviation, total
    for part in range(PARTIAL_VECTORS):
        partial[part] = vector_zero()
    for block in range(num_blocks):
        for part in range(PARTIAL_VECTORS):
            offset = (block * PARTIAL_VECTORS + part) * VECTOR_FLOATS
            deviations = vector_subtract(vector_load(row + offset), means)
            partial[part] = vector_fma_lanes(partial[part], deviations, deviations)
    total = sum_partials(partial)
    for j in range(num_blocks * LANES, n):
        deviation = row[j] - mean
        total += deviation * deviation
    return total


# sum_j a[j] * b[j].
cdef inline float dot_sum(const float *a, const float *b, Py_ssize_t n) noexcept nogil:
    cdef lemur_vector partial[PARTIAL_VECTORS]
    cdef Py_ssize_t block, part, j, offset, num_blocks = n // LANES
    cdef float total
    for part in range(PARTIAL_VECTORS):
        partial[part] = vector_zero()
    for block in range(num_blocks):
        for part in range(PARTIAL_VECTORS):
            offset = (block * PARTIAL_VECTORS + part) * VECTOR_FLOATS
            partial[part] = vector_fma_lanes(partial[part], vector_load(a + offset), vector_load(b + offset))
    total = sum_partials(partial)
    for j in range(num_blocks * LANES, n):
        total += a[j] * b[j]
    return total


# LayerNorm over one row in place, population variance, eps = 1e-5;
# gamma/beta may be NULL (no affine part). The row's sum is passed in.
cdef inline void layer_norm_row(float *row, float row_sum, const float *gamma, const float *beta,
                         Py_ssize_t n) noexcept nogil:
    cdef float mean = row_sum / n
    cdef float variance = squared_deviation_sum(row, mean, n) / n
    cdef float inverse_std = <float>1.0 / sqrtf(variance + <float>1e-5)
    cdef Py_ssize_t j
    if gamma == NULL:
        for j in range(n):
            row[j] = (row[j] - mean) * inverse_std
    else:
        for j in range(n):
            row[j] = (row[j] - mean) * inverse_std * gamma[j] + beta[j]


# out[j] += row[j].
cdef inline void add_row(float *out, const float *row, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(n):
        out[j] += row[j]


# Whether all n values are finite: sums (v - v), which is 0 for finite v and
# NaN for NaN or +-inf, in any order (zeros sum to zero, a NaN stays NaN):
# four independent chains of whole vectors, so that it reads at memory speed.
# (Through partial[vector % PARTIAL_VECTORS] it ran at 12 GB/s on one Zen 3
# core with the values in cache.)
cdef inline bint all_finite(const float *values, Py_ssize_t n) noexcept nogil:
    cdef lemur_vector first = vector_zero(), second = vector_zero(), third = vector_zero()
    cdef lemur_vector fourth = vector_zero(), value
    cdef Py_ssize_t block, offset, j, whole = n - n % (4 * VECTOR_FLOATS)
    cdef float lanes[VECTOR_FLOATS]
    cdef float total = 0
    for block in range(whole // (4 * VECTOR_FLOATS)):
        offset = block * 4 * VECTOR_FLOATS
        value = vector_load(values + offset)
        first = vector_add(first, vector_subtract(value, value))
        value = vector_load(values + offset + VECTOR_FLOATS)
        second = vector_add(second, vector_subtract(value, value))
        value = vector_load(values + offset + 2 * VECTOR_FLOATS)
        third = vector_add(third, vector_subtract(value, value))
        value = vector_load(values + offset + 3 * VECTOR_FLOATS)
        fourth = vector_add(fourth, vector_subtract(value, value))
    vector_store(lanes, vector_add(vector_add(first, second), vector_add(third, fourth)))
    for j in range(VECTOR_FLOATS):
        total += lanes[j]
    for j in range(whole, n):
        total += values[j] - values[j]
    return total == 0
