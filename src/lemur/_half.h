/* 16-bit floats (declared for Cython in _half.pxd). float16 (IEEE binary16)
 * values widened to float32, exactly: F16C's VCVTPH2PS where the variant has
 * it (x86-64-v3 and up), the hardware conversion on arm64, else integer
 * arithmetic on the bits. Every float16 value, subnormals, infinities and
 * NaNs included, is a float32 value, so all three give the same floats.
 * bfloat16: float32 values rounded as VCVTNE2PS2BF16 and VDPBF16PS/TDPBF16PS
 * read them, and widened back. */
#ifndef LEMUR_HALF_H
#define LEMUR_HALF_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__F16C__)
#include <immintrin.h>
#endif

static inline float lemur_half_value(uint16_t half)
{
    uint32_t sign = (uint32_t)(half & 0x8000u) << 16, exponent = (half >> 10) & 0x1Fu, mantissa = half & 0x3FFu;
    uint32_t bits;
    float value;
    if (exponent == 0x1Fu)
        bits = sign | 0x7F800000u | (mantissa << 13);
    else if (exponent != 0)
        bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
    else {
        value = (float)mantissa * 5.9604644775390625e-08f;  /* mantissa * 2^-24, exact */
        memcpy(&bits, &value, 4);
        bits |= sign;
    }
    memcpy(&value, &bits, 4);
    return value;
}

/* out[i] = in[i] widened, for i < n */
static inline void lemur_half_to_float(const uint16_t *in, float *out, ptrdiff_t n)
{
    ptrdiff_t i = 0;
#if defined(__F16C__)
#if defined(__AVX512F__)
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(out + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(in + i))));
#endif
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(in + i))));
#elif defined(__aarch64__) && (defined(__GNUC__) || defined(__clang__))
    for (; i < n; i++) {
        __fp16 half;
        memcpy(&half, in + i, 2);
        out[i] = (float)half;
    }
#endif
    for (; i < n; i++)
        out[i] = lemur_half_value(in[i]);
}

/* float32 -> bfloat16 bits, rounded to nearest even; magnitudes below 2^-126
 * become zero of their sign (as VDPBF16PS reads them), NaNs stay quiet NaNs */
static inline uint16_t lemur_bfloat16_bits(float value)
{
    uint32_t bits;
    memcpy(&bits, &value, 4);
    if ((bits & 0x7FFFFFFFu) < 0x00800000u)
        return (uint16_t)((bits >> 16) & 0x8000u);
    if ((bits & 0x7FFFFFFFu) > 0x7F800000u)
        return (uint16_t)((bits >> 16) | 0x0040u);
    return (uint16_t)((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

static inline float lemur_bfloat16_value(uint16_t bits)
{
    uint32_t wide = (uint32_t)bits << 16;
    float value;
    memcpy(&value, &wide, 4);
    return value;
}

/* values[i] rounded to bfloat16 and widened back, in place */
static inline void lemur_round_bfloat16(float *values, ptrdiff_t n)
{
    for (ptrdiff_t i = 0; i < n; i++)
        values[i] = lemur_bfloat16_value(lemur_bfloat16_bits(values[i]));
}

#endif
