/* Every entry point of qpw-malloc, its alignment and overflow edges, and
 * realloc's semantics, checked from C. Run preloaded or linked with the
 * static library; prints "entry points: ok" and exits 0, or names the first
 * failed check and exits 1.
 *
 * argv[1] (optional): "trim" also checks that malloc_trim returns memory;
 * "doublefree" / "doublefree-large" free an object twice (must abort). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Declared by hand: glibc's headers drop some of these. */
void *__libc_malloc(size_t n);
void *__libc_calloc(size_t n, size_t m);
void *__libc_realloc(void *p, size_t n);
void __libc_free(void *p);
void *__libc_memalign(size_t a, size_t n);
void *__libc_valloc(size_t n);
void *__libc_pvalloc(size_t n);

static int checks;

#define CHECK(cond, ...)                                                      \
    do {                                                                      \
        checks++;                                                             \
        if (!(cond)) {                                                        \
            fprintf(stderr, "FAILED %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                     \
            fprintf(stderr, "\n");                                            \
            exit(1);                                                          \
        }                                                                     \
    } while (0)

/* Compiled with -fno-builtin, but keep the compiler from reasoning about
 * these calls anyway (it may fold malloc(SIZE_MAX) to NULL). */
static volatile size_t V_SIZE_MAX = SIZE_MAX;
static volatile size_t V_PTRDIFF_MAX = PTRDIFF_MAX;

static void fill(unsigned char *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(i * 31 + seed);
}

static int same(const unsigned char *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != (unsigned char)(i * 31 + seed)) return 0;
    return 1;
}

static const size_t SIZES[] = {0,     1,     7,      8,      9,       15,      16,
                               17,    24,    100,    192,    193,     255,     256,
                               257,   1000,  4095,   4096,   4097,    8191,    8192,
                               8193,  12345, 16384,  65536,  100000,  262144,  262145,
                               1 << 20, (1 << 20) + 1, 3 << 20, (3 << 20) + 5};
#define NSIZES (sizeof SIZES / sizeof SIZES[0])

/* Before main (and before the allocator's first use by this program): the
 * dynamic loader's own calls, dlerror's buffer (malloc'd inside libdl),
 * strdup. */
static char *early_copy;
static void *early_next;
__attribute__((constructor)) static void early(void) {
    early_next = dlsym(RTLD_NEXT, "malloc");
    if (dlsym(RTLD_DEFAULT, "qpw_no_such_symbol") == NULL) {
        const char *e = dlerror();
        early_copy = strdup(e ? e : "no dlerror");
    }
    void *p = calloc(3, 100);
    free(realloc(p, 5000));
}

static void check_early(void) {
    CHECK(early_next != NULL, "dlsym(RTLD_NEXT, malloc) before main");
    CHECK(early_copy && strstr(early_copy, "qpw_no_such_symbol"), "dlerror before main: %s",
          early_copy ? early_copy : "(null)");
    free(early_copy);
}

static void check_ours(void) {
    /* Every entry point resolves to one object, and it is not libc. */
    Dl_info a, b;
    void *fns[] = {(void *)malloc, (void *)free, (void *)calloc, (void *)realloc,
                   (void *)posix_memalign, (void *)aligned_alloc, (void *)memalign,
                   (void *)valloc, (void *)pvalloc, (void *)malloc_usable_size,
                   (void *)reallocarray, (void *)malloc_trim, (void *)mallopt,
                   (void *)malloc_stats};
    void *m = dlsym(RTLD_DEFAULT, "malloc");
    CHECK(m != NULL, "dlsym(malloc)");
    CHECK(dladdr(m, &a) != 0, "dladdr(malloc)");
    CHECK(strstr(a.dli_fname, "libc.so") == NULL, "malloc comes from %s", a.dli_fname);
    for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {
        CHECK(dladdr(fns[i], &b) != 0, "dladdr(fn %zu)", i);
        CHECK(strcmp(a.dli_fname, b.dli_fname) == 0, "fn %zu from %s, malloc from %s", i,
              b.dli_fname, a.dli_fname);
    }
    printf("malloc from %s\n", a.dli_fname);
}

static void check_malloc(void) {
    void *zero1 = malloc(0), *zero2 = malloc(0);
    CHECK(zero1 && zero2 && zero1 != zero2, "malloc(0) gives distinct pointers");
    free(zero1);
    free(zero2);
    for (size_t i = 0; i < NSIZES; i++) {
        size_t n = SIZES[i];
        unsigned char *p = malloc(n);
        CHECK(p != NULL, "malloc(%zu)", n);
        size_t want = n <= 8 ? 8 : 16;
        CHECK((uintptr_t)p % want == 0, "malloc(%zu) = %p not %zu-aligned", n, (void *)p, want);
        size_t u = malloc_usable_size(p);
        CHECK(u >= n, "usable %zu < %zu", u, n);
        fill(p, u, 7); /* every usable byte is writable */
        CHECK(same(p, u, 7), "contents of malloc(%zu)", n);
        errno = 1234;
        free(p);
        CHECK(errno == 1234, "free changed errno to %d (POSIX.1-2024: it must not)", errno);
    }
    CHECK(malloc_usable_size(NULL) == 0, "malloc_usable_size(NULL)");
    free(NULL);

    errno = 0;
    CHECK(malloc(V_SIZE_MAX) == NULL && errno == ENOMEM, "malloc(SIZE_MAX): errno %d", errno);
    errno = 0;
    CHECK(malloc(V_PTRDIFF_MAX) == NULL && errno == ENOMEM, "malloc(PTRDIFF_MAX): errno %d",
          errno);
    errno = 0;
    CHECK(malloc(V_SIZE_MAX - 4096) == NULL && errno == ENOMEM, "malloc(SIZE_MAX-4096)");
}

static void check_calloc(void) {
    errno = 0;
    CHECK(calloc(V_SIZE_MAX, 2) == NULL && errno == ENOMEM, "calloc(SIZE_MAX, 2): errno %d",
          errno);
    errno = 0;
    CHECK(calloc(2, V_SIZE_MAX / 2 + 1) == NULL && errno == ENOMEM, "calloc overflow");
    errno = 0;
    volatile size_t b33 = (size_t)1 << 33;
    CHECK(calloc(b33, b33) == NULL && errno == ENOMEM,
          "calloc(2^33, 2^33)");
    void *z = calloc(0, 0);
    CHECK(z != NULL, "calloc(0, 0) gives a pointer");
    free(z);
    /* Recycled objects are cleared: dirty an object, free it, calloc the
     * same size (the thread's cache hands the same object back first). */
    for (int round = 0; round < 3; round++) {
        for (size_t i = 0; i < NSIZES; i++) {
            size_t n = SIZES[i];
            unsigned char *p = malloc(n);
            CHECK(p != NULL, "malloc(%zu)", n);
            memset(p, 0xAB, malloc_usable_size(p));
            free(p);
            unsigned char *q = calloc(1, n);
            CHECK(q != NULL, "calloc(1, %zu)", n);
            for (size_t k = 0; k < n; k++)
                CHECK(q[k] == 0, "calloc(1, %zu) byte %zu = %#x (recycled %d)", n, k, q[k],
                      p == q);
            unsigned char *r = calloc(n ? 3 : 0, n / 3 + 1);
            CHECK(r != NULL, "calloc(3, %zu)", n / 3 + 1);
            for (size_t k = 0; k < (n ? 3 : 0) * (n / 3 + 1); k++)
                CHECK(r[k] == 0, "calloc(3, %zu) byte %zu", n / 3 + 1, k);
            free(q);
            free(r);
        }
    }
}

static void check_realloc(void) {
    /* realloc(NULL, n) is malloc(n). */
    unsigned char *p = realloc(NULL, 100);
    CHECK(p != NULL && malloc_usable_size(p) >= 100, "realloc(NULL, 100)");
    free(p);
    p = realloc(NULL, 0);
    CHECK(p != NULL, "realloc(NULL, 0) is malloc(0)");
    free(p);

    /* realloc(p, 0) frees p and returns NULL (glibc), errno untouched. */
    p = malloc(100);
    errno = 1234;
    CHECK(realloc(p, 0) == NULL, "realloc(p, 0) returns NULL");
    CHECK(errno == 1234, "realloc(p, 0) changed errno to %d", errno);

    /* Grow through every class boundary, then shrink back, keeping the
     * contents up to the smaller size each time. */
    size_t cur = 1;
    p = malloc(cur);
    fill(p, cur, 3);
    for (size_t i = 1; i < NSIZES; i++) {
        size_t n = SIZES[i];
        unsigned char *q = realloc(p, n);
        CHECK(q != NULL, "realloc(%zu -> %zu)", cur, n);
        CHECK(same(q, cur < n ? cur : n, 3), "realloc(%zu -> %zu) lost contents", cur, n);
        CHECK(malloc_usable_size(q) >= n, "realloc(%zu) usable %zu", n, malloc_usable_size(q));
        CHECK((uintptr_t)q % 16 == 0 || n <= 8, "realloc(%zu) alignment", n);
        fill(q, n, 3);
        p = q;
        cur = n;
    }
    for (size_t i = NSIZES - 1; i-- > 1;) {
        size_t n = SIZES[i];
        unsigned char *q = realloc(p, n);
        CHECK(q != NULL, "shrink realloc(%zu -> %zu)", cur, n);
        CHECK(same(q, n, 3), "shrink realloc(%zu -> %zu) lost contents", cur, n);
        p = q;
        cur = n;
    }
    free(p);

    /* Objects from the aligned entry points resize like any other. */
    size_t aligns[] = {64, 4096, 65536, 1 << 20};
    size_t targets[] = {10, 5000, 100000, 3 << 20};
    for (size_t a = 0; a < 4; a++) {
        for (size_t t = 0; t < 4; t++) {
            size_t n = 3000;
            unsigned char *m = memalign(aligns[a], n);
            CHECK(m && (uintptr_t)m % aligns[a] == 0, "memalign(%zu)", aligns[a]);
            fill(m, n, 11);
            unsigned char *q2 = realloc(m, targets[t]);
            size_t keep = n < targets[t] ? n : targets[t];
            CHECK(q2 && same(q2, keep, 11), "realloc(memalign(%zu), %zu)", aligns[a], targets[t]);
            CHECK(malloc_usable_size(q2) >= targets[t], "usable after realloc(memalign)");
            free(q2);
        }
    }

    /* Within one class: kept in place. */
    p = malloc(100);
    fill(p, 100, 9);
    unsigned char *q = realloc(p, 110);
    CHECK(q == p && same(q, 100, 9), "realloc within a class moves (%p -> %p)", (void *)p,
          (void *)q);
    free(q);

    /* Failure leaves the original allocated and intact. */
    size_t fails[] = {SIZE_MAX, SIZE_MAX - 4096, PTRDIFF_MAX, (size_t)PTRDIFF_MAX + 1};
    for (size_t f = 0; f < 4; f++) {
        for (size_t i = 0; i < NSIZES; i++) {
            size_t n = SIZES[i] ? SIZES[i] : 1;
            p = malloc(n);
            fill(p, n, 5);
            errno = 0;
            volatile size_t huge = fails[f];
            q = realloc(p, huge);
            CHECK(q == NULL && errno == ENOMEM, "realloc(%zu, %zu) = %p errno %d", n, fails[f],
                  (void *)q, errno);
            CHECK(same(p, n, 5), "failed realloc damaged the original (%zu)", n);
            CHECK(malloc_usable_size(p) >= n, "failed realloc: original usable");
            q = realloc(p, n + 1); /* still a live, reallocatable object */
            CHECK(q && same(q, n, 5), "realloc after a failed realloc");
            free(q);
        }
    }

    /* reallocarray: overflow -> NULL + ENOMEM, p intact; else realloc. */
    p = reallocarray(NULL, 10, 10);
    CHECK(p != NULL && malloc_usable_size(p) >= 100, "reallocarray(NULL, 10, 10)");
    fill(p, 100, 1);
    errno = 0;
    CHECK(reallocarray(p, V_SIZE_MAX, 2) == NULL && errno == ENOMEM, "reallocarray overflow");
    CHECK(same(p, 100, 1), "reallocarray overflow damaged p");
    q = reallocarray(p, 1000, 10);
    CHECK(q && same(q, 100, 1) && malloc_usable_size(q) >= 10000, "reallocarray grow");
    free(q);
}

static void check_posix_memalign(void) {
    void *sentinel = (void *)0x1234, *p = sentinel;
    size_t bad[] = {0, 1, 2, 3, 4, 12, 24, 48, 100, 4097, SIZE_MAX};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        errno = 4321;
        p = sentinel;
        int r = posix_memalign(&p, bad[i], 16);
        CHECK(r == EINVAL, "posix_memalign(align %zu) = %d, want EINVAL", bad[i], r);
        CHECK(errno == 4321, "posix_memalign(align %zu) set errno to %d", bad[i], errno);
        CHECK(p == sentinel, "posix_memalign(align %zu) wrote *out on failure", bad[i]);
    }
    for (size_t a = sizeof(void *); a <= (1 << 22); a <<= 1) {
        for (size_t i = 0; i < NSIZES; i++) {
            size_t n = SIZES[i];
            errno = 4321;
            int r = posix_memalign(&p, a, n);
            CHECK(r == 0, "posix_memalign(%zu, %zu) = %d", a, n, r);
            CHECK(errno == 4321, "posix_memalign success changed errno");
            CHECK((uintptr_t)p % a == 0, "posix_memalign(%zu, %zu) = %p", a, n, p);
            CHECK(malloc_usable_size(p) >= n, "posix_memalign usable");
            memset(p, 0x5A, n);
            free(p);
        }
    }
    /* Out of memory: returned, errno kept, *out untouched. */
    size_t huge[][2] = {{16, SIZE_MAX / 2},
                        {4096, SIZE_MAX - 8192},
                        {(size_t)1 << 62, 1},
                        {(size_t)1 << 63, 1},
                        {(size_t)1 << 46, (size_t)1 << 46}};
    for (size_t i = 0; i < sizeof huge / sizeof huge[0]; i++) {
        errno = 4321;
        p = sentinel;
        int r = posix_memalign(&p, huge[i][0], huge[i][1]);
        CHECK(r == ENOMEM, "posix_memalign(%zu, %zu) = %d, want ENOMEM", huge[i][0], huge[i][1],
              r);
        CHECK(errno == 4321, "posix_memalign(huge) set errno to %d", errno);
        CHECK(p == sentinel, "posix_memalign(huge) wrote *out");
    }
}

static void check_aligned_alloc(void) {
    size_t bad[] = {0, 3, 12, 24, 100, 4097, SIZE_MAX};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        errno = 0;
        CHECK(aligned_alloc(bad[i], 64) == NULL && errno == EINVAL,
              "aligned_alloc(%zu, 64): errno %d", bad[i], errno);
    }
    for (size_t a = 1; a <= (1 << 21); a <<= 1) {
        size_t sizes[] = {1, a, 3 * a, 100, 5000};
        for (size_t i = 0; i < 5; i++) {
            void *p = aligned_alloc(a, sizes[i]);
            CHECK(p && (uintptr_t)p % a == 0, "aligned_alloc(%zu, %zu) = %p", a, sizes[i], p);
            CHECK((uintptr_t)p % 8 == 0, "aligned_alloc below malloc's alignment");
            CHECK(malloc_usable_size(p) >= sizes[i], "aligned_alloc usable");
            memset(p, 1, sizes[i]);
            free(p);
        }
    }
    errno = 0;
    CHECK(aligned_alloc(64, V_SIZE_MAX) == NULL && errno == ENOMEM, "aligned_alloc(huge)");
    errno = 0;
    CHECK(aligned_alloc((size_t)1 << 62, 1) == NULL && errno == ENOMEM,
          "aligned_alloc(2^62, 1)");
}

static void check_memalign(void) {
    for (size_t a = 4096; a <= (1 << 20); a <<= 1) {
        size_t sizes[] = {0, 1, 100, a - 1, a, a + 1, 3 * a};
        for (size_t i = 0; i < 7; i++) {
            void *p = memalign(a, sizes[i]);
            CHECK(p && (uintptr_t)p % a == 0, "memalign(%zu, %zu) = %p", a, sizes[i], p);
            CHECK(malloc_usable_size(p) >= sizes[i], "memalign usable");
            memset(p, 2, sizes[i]);
            free(p);
        }
    }
    /* Small and odd alignments: glibc's rules. */
    size_t odd[][2] = {{0, 8}, {1, 8}, {3, 4}, {3, 16}, {16, 16}, {24, 32},
                       {33, 64}, {100, 128}, {5000, 8192}};
    for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++) {
        void *p = memalign(odd[i][0], 20);
        CHECK(p && (uintptr_t)p % odd[i][1] == 0, "memalign(%zu, 20) = %p not %zu-aligned",
              odd[i][0], p, odd[i][1]);
        free(p);
    }
    errno = 0;
    CHECK(memalign(V_SIZE_MAX / 2 + 2, 1) == NULL && errno == EINVAL, "memalign(huge align)");
    errno = 0;
    CHECK(memalign((size_t)1 << 62, 1) == NULL && errno == ENOMEM, "memalign(2^62, 1)");
    errno = 0;
    CHECK(memalign(64, V_SIZE_MAX) == NULL && errno == ENOMEM, "memalign(64, SIZE_MAX)");
}

static void check_valloc_pvalloc(void) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t sizes[] = {0, 1, 100, page - 1, page, page + 1, 5 * page + 3, 1 << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = sizes[i];
        void *p = valloc(n);
        CHECK(p && (uintptr_t)p % page == 0, "valloc(%zu) = %p", n, p);
        CHECK(malloc_usable_size(p) >= n, "valloc usable");
        memset(p, 3, n);
        free(p);
        unsigned char *q = pvalloc(n);
        size_t rounded = n == 0 ? page : (n + page - 1) / page * page;
        CHECK(q && (uintptr_t)q % page == 0, "pvalloc(%zu) = %p", n, (void *)q);
        CHECK(malloc_usable_size(q) >= rounded, "pvalloc(%zu): usable %zu < %zu", n,
              malloc_usable_size(q), rounded);
        memset(q, 4, rounded); /* the whole rounded size is ours */
        free(q);
    }
    errno = 0;
    CHECK(pvalloc(V_SIZE_MAX) == NULL && errno == ENOMEM, "pvalloc(SIZE_MAX)");
    errno = 0;
    CHECK(valloc(V_SIZE_MAX) == NULL && errno == ENOMEM, "valloc(SIZE_MAX)");
}

static void check_others(int want_trim) {
    /* cfree and glibc's internal names. */
    /* cfree only as a versioned compat symbol in glibc: look it up. */
    void (*cf)(void *) = (void (*)(void *))dlsym(RTLD_DEFAULT, "cfree");
    CHECK(cf != NULL, "dlsym(cfree)");
    Dl_info a, b;
    CHECK(dladdr((void *)cf, &a) && dladdr((void *)malloc, &b) && !strcmp(a.dli_fname, b.dli_fname),
          "cfree from %s", a.dli_fname);
    void *p = malloc(10);
    cf(p);
    cf(NULL);
    p = __libc_malloc(50);
    CHECK(p && malloc_usable_size(p) >= 50, "__libc_malloc");
    p = __libc_realloc(p, 5000);
    CHECK(p && malloc_usable_size(p) >= 5000, "__libc_realloc");
    __libc_free(p);
    unsigned char *c = __libc_calloc(10, 10);
    CHECK(c && c[0] == 0 && c[99] == 0, "__libc_calloc");
    free(c);
    p = __libc_memalign(256, 10);
    CHECK(p && (uintptr_t)p % 256 == 0, "__libc_memalign");
    free(p);
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    p = __libc_valloc(10);
    CHECK(p && (uintptr_t)p % page == 0, "__libc_valloc");
    free(p);
    p = __libc_pvalloc(10);
    CHECK(p && malloc_usable_size(p) >= page, "__libc_pvalloc");
    free(p);

    /* mallopt: glibc's tuning knobs accepted, unsupported behaviours not. */
    CHECK(mallopt(M_MMAP_THRESHOLD, 1 << 20) == 1, "mallopt(M_MMAP_THRESHOLD)");
    CHECK(mallopt(M_TRIM_THRESHOLD, 1 << 20) == 1, "mallopt(M_TRIM_THRESHOLD)");
    CHECK(mallopt(M_ARENA_MAX, 2) == 1, "mallopt(M_ARENA_MAX)");
    CHECK(mallopt(M_PERTURB, 0) == 1, "mallopt(M_PERTURB, 0)");
    CHECK(mallopt(M_PERTURB, 0x55) == 0, "mallopt(M_PERTURB, 0x55)");
    CHECK(mallopt(M_CHECK_ACTION, 3) == 0, "mallopt(M_CHECK_ACTION)");
    CHECK(mallopt(12345, 1) == 0, "mallopt(unknown)");

    /* malloc_trim: 0 or 1; after freeing many small objects, memory goes
     * back (1) unless something returned it already. */
    enum { N = 100000 };
    void **v = malloc(N * sizeof *v);
    CHECK(v != NULL, "malloc(array)");
    for (int i = 0; i < N; i++) {
        v[i] = malloc(64);
        CHECK(v[i] != NULL, "malloc(64) #%d", i);
    }
    for (int i = 0; i < N; i++) free(v[i]);
    free(v);
    int t = malloc_trim(0);
    CHECK(t == 0 || t == 1, "malloc_trim = %d", t);
    if (want_trim) CHECK(t == 1, "malloc_trim returned nothing after 6.4 MB were freed");
    CHECK(malloc_trim(0) == 0, "a second malloc_trim found memory to return");
    malloc_stats();
}

int main(int argc, char **argv) {
    if (argc > 1 && strncmp(argv[1], "doublefree", 10) == 0) {
        /* The allocator must detect this (debug builds) and abort. */
        void *volatile p = malloc(strcmp(argv[1], "doublefree") == 0 ? 100 : 100000);
        free(p);
        free(p);
        printf("double free not detected\n");
        return 0;
    }
    if (argc > 2 && strcmp(argv[1], "closefds") == 0) {
        /* A daemon's start: close every descriptor above stderr, then open
         * a file that lands where the library keeps its copy of stderr. */
        for (int fd = 3; fd < 1024; fd++) close(fd);
        int f = open(argv[2], O_CREAT | O_TRUNC | O_WRONLY, 0600);
        if (f < 0) return 2;
        for (int fd = 64; fd < 80; fd++) dup2(f, fd);
        if (write(f, "data\n", 5) != 5) return 2;
        printf("closefds: ok\n");
        return 0;
    }
    int want_trim = argc > 1 && strcmp(argv[1], "trim") == 0;
    check_ours();
    check_early();
    check_malloc();
    check_calloc();
    check_realloc();
    check_posix_memalign();
    check_aligned_alloc();
    check_memalign();
    check_valloc_pvalloc();
    check_others(want_trim);
    printf("entry points: ok (%d checks)\n", checks);
    return 0;
}
