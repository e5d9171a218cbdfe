/* The reference loop for the C fast path (issue 15, item 1):
 * single-threaded, random slots of a 1,024-pointer window, each replaced by
 * malloc(16..256) after freeing the old one; PAIRS malloc/free pairs.
 * Prints ns per pair (a figure for a quiet machine only) and a checksum
 * (so the work is not optimised away).
 *
 * usage: random_window [pairs]      (default 10,000,000)
 * build: cc -O2 -o random_window random_window.c
 * run:   LD_PRELOAD=<allocator.so> ./random_window */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

enum { WINDOW = 1024 };

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static inline uint64_t next(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

int main(int argc, char **argv) {
    long pairs = argc > 1 ? atol(argv[1]) : 10000000L;
    static unsigned char *slot[WINDOW];
    uint64_t sum = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < pairs; i++) {
        uint64_t r = next();
        unsigned s = r % WINDOW;
        size_t n = 16 + (r >> 32) % 241;
        free(slot[s]);
        unsigned char *p = malloc(n);
        if (!p) return 2;
        p[0] = (unsigned char)i;
        sum += p[0];
        slot[s] = p;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    for (int s = 0; s < WINDOW; s++) free(slot[s]);
    double ns = (t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec);
    printf("%ld pairs, %.1f ns per pair (checksum %llu)\n", pairs, ns / pairs,
           (unsigned long long)sum);
    return 0;
}
