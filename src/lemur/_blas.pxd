# Declarations of the BLAS routines lemur calls, from scipy-openblas32's
# cblas.h. Every symbol carries the "scipy_" prefix, so this OpenBLAS never
# clashes with another BLAS loaded in the same process (NumPy's, PyTorch's).
# blasint is a 32-bit int in this build: callers keep M, N, K and the leading
# dimensions below 2**31.
#
# How threads work in lemur (one rule for every kernel):
# * All parallelism is OpenMP's: a call with num_threads=t runs its prange
#   loops on a team of t threads, over units of work that do not depend on t,
#   each output computed by one unit; so results are bitwise the same for any
#   t, and concurrent calls from several Python threads (each with a team of
#   its own) never change each other's results.
# * This OpenBLAS is lemur's private copy and stays single-threaded for good:
#   the kernel module sets it to one thread when it is imported, and the
#   kernels that call it check that before they start (ensure_single_threaded_
#   blas, in case something like threadpoolctl changed it). BLAS is called only
#   from inside units of work, so it never starts threads of its own inside
#   OpenMP's, and no call changes a global setting for its own sake.
# * float32 products of search are lemur's own (_tiles.h), with a fixed order
#   of operations; OpenBLAS does the float64 algebra of fitting W (dgemm per
#   unit of work, LAPACK's dsyevd on the calling thread) and the float32
#   products of training (sgemm per block of output rows).

cdef extern from "cblas.h" nogil:
    enum CBLAS_ORDER:
        CblasRowMajor
    enum CBLAS_TRANSPOSE:
        CblasNoTrans
        CblasTrans
    enum CBLAS_UPLO:
        CblasUpper
    void scipy_cblas_dgemm(
        CBLAS_ORDER order, CBLAS_TRANSPOSE trans_a, CBLAS_TRANSPOSE trans_b,
        int m, int n, int k,
        double alpha, const double *a, int lda, const double *b, int ldb,
        double beta, double *c, int ldc,
    )
    void scipy_cblas_sgemm(
        CBLAS_ORDER order, CBLAS_TRANSPOSE trans_a, CBLAS_TRANSPOSE trans_b,
        int m, int n, int k,
        float alpha, const float *a, int lda, const float *b, int ldb,
        float beta, float *c, int ldc,
    )
    void scipy_cblas_dsyrk(
        CBLAS_ORDER order, CBLAS_UPLO uplo, CBLAS_TRANSPOSE trans,
        int n, int k,
        double alpha, const double *a, int lda,
        double beta, double *c, int ldc,
    )

    void scipy_openblas_set_num_threads(int num_threads)
    int scipy_openblas_get_num_threads()
    char *scipy_openblas_get_corename()
    char *scipy_openblas_get_config()


cdef extern from "lapacke.h" nogil:
    int LAPACK_ROW_MAJOR
    # Eigenvalues (ascending) and, with jobz = 'V', eigenvectors (in the
    # columns of a) of a symmetric matrix, divide and conquer. Returns 0, or
    # the LAPACK error code.
    int scipy_LAPACKE_dsyevd(int matrix_layout, char jobz, char uplo, int n,
                             double *a, int lda, double *w)
