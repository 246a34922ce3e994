"""Which instruction-set level the running CPU (and its OS) supports.

Compiled without any -march flag, so it imports on every CPU; lemur._dispatch
asks it before importing a kernel module built for a higher level.
"""

cdef extern from *:
    """
    #if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
    /* __builtin_cpu_supports also checks (through XGETBV) that the OS saves
       the AVX and AVX-512 register state. */
    static int lemur_x86_64_level(void)
    {
        __builtin_cpu_init();
        if (!(__builtin_cpu_supports("sse4.2") && __builtin_cpu_supports("ssse3")
              && __builtin_cpu_supports("popcnt")))
            return 1;
        if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
              && __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2")))
            return 2;
        if (!(__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
              && __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq")
              && __builtin_cpu_supports("avx512vl")))
            return 3;
        return 4;
    }
    #elif defined(_MSC_VER) && defined(_M_X64)
    #include <windows.h>
    /* older Windows SDKs lack the names, not the feature ids */
    #ifndef PF_SSE4_2_INSTRUCTIONS_AVAILABLE
    #define PF_SSE4_2_INSTRUCTIONS_AVAILABLE 38
    #endif
    #ifndef PF_AVX2_INSTRUCTIONS_AVAILABLE
    #define PF_AVX2_INSTRUCTIONS_AVAILABLE 40
    #endif
    #ifndef PF_AVX512F_INSTRUCTIONS_AVAILABLE
    #define PF_AVX512F_INSTRUCTIONS_AVAILABLE 41
    #endif
    static int lemur_x86_64_level(void)
    {
        if (!IsProcessorFeaturePresent(PF_SSE4_2_INSTRUCTIONS_AVAILABLE))
            return 1;
        if (!IsProcessorFeaturePresent(PF_AVX2_INSTRUCTIONS_AVAILABLE))
            return 2;
        if (!IsProcessorFeaturePresent(PF_AVX512F_INSTRUCTIONS_AVAILABLE))
            return 3;
        return 4;
    }
    #else
    static int lemur_x86_64_level(void) { return 0; }
    #endif
    """
    int lemur_x86_64_level() nogil


def x86_64_level():
    """Return the x86-64 micro-architecture level (1 to 4) this CPU supports.

    Returns 0 on other architectures.
    """
    return lemur_x86_64_level()
