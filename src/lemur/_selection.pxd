# cython: language_level=3
"""Keeping the k best (score, index) pairs, for the top-k and rerank kernels.

A k-best list is a binary heap held in two arrays (scores, indices) whose root
is the worst pair kept, so a new pair is compared with the root alone. "Better"
is the order lemur uses everywhere: a higher score, or an equal score and a
smaller index.
"""

from libc.stdint cimport int64_t


cdef inline bint is_better(float score, int64_t index, float other_score,
                           int64_t other_index) noexcept nogil:
    return score > other_score or (score == other_score and index < other_index)


cdef inline void swap_pairs(float *scores, int64_t *indices, Py_ssize_t a,
                            Py_ssize_t b) noexcept nogil:
    cdef float score = scores[a]
    cdef int64_t index = indices[a]
    scores[a] = scores[b]
    indices[a] = indices[b]
    scores[b] = score
    indices[b] = index


# Moves the pair at `position` down until neither child is worse than it.
cdef inline void sift_down(float *scores, int64_t *indices, Py_ssize_t size,
                           Py_ssize_t position) noexcept nogil:
    cdef Py_ssize_t child
    while True:
        child = 2 * position + 1
        if child >= size:
            return
        if child + 1 < size and is_better(scores[child], indices[child],
                                          scores[child + 1], indices[child + 1]):
            child += 1  # the worse of the two children
        if not is_better(scores[position], indices[position], scores[child], indices[child]):
            return
        swap_pairs(scores, indices, position, child)
        position = child


# Adds (score, index) to a k-best list of `size` pairs and room for `capacity`;
# returns its new size. When full, the pair replaces the root if it is better.
cdef inline Py_ssize_t push_pair(float *scores, int64_t *indices, Py_ssize_t size,
                                 Py_ssize_t capacity, float score,
                                 int64_t index) noexcept nogil:
    cdef Py_ssize_t position, parent
    if size < capacity:
        position = size
        scores[position] = score
        indices[position] = index
        while position > 0:
            parent = (position - 1) // 2
            if not is_better(scores[parent], indices[parent], scores[position], indices[position]):
                break
            swap_pairs(scores, indices, parent, position)
            position = parent
        return size + 1
    if is_better(score, index, scores[0], indices[0]):
        scores[0] = score
        indices[0] = index
        sift_down(scores, indices, size, 0)
    return size


# Sorts a k-best list in place, best first (heapsort: the root, the worst pair,
# goes to the back each round).
cdef inline void sort_best_first(float *scores, int64_t *indices, Py_ssize_t size) noexcept nogil:
    cdef Py_ssize_t end
    for end in range(size - 1, 0, -1):
        swap_pairs(scores, indices, 0, end)
        sift_down(scores, indices, end, 0)
