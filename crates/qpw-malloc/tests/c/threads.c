/* Threads created by C code allocating and freeing across each other, with
 * realloc and calloc checked; short-lived threads (binding and exit); and
 * fork, with each child allocating and exiting. Every wait is bounded: a
 * child that does not finish within its limit is killed and counted as hung.
 *
 * usage: threads <mode> [forks]
 *   cross   threads pass objects to each other through a locked ring
 *   churn   thousands of short threads, each allocating a little
 *   fork    the main thread forks while no other thread allocates
 *   forkbusy  the main thread forks while two threads allocate
 * Prints "<mode>: ok ..." and exits 0, or names the failure and exits 1. */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define FAIL(...)                                                  \
    do {                                                           \
        fprintf(stderr, "FAILED %s:%d: ", __FILE__, __LINE__);     \
        fprintf(stderr, __VA_ARGS__);                              \
        fprintf(stderr, "\n");                                     \
        exit(1);                                                   \
    } while (0)

static uint64_t rnd(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* A size from 8 B to 64 KiB, small ones most often. */
static size_t rsize(uint64_t *s) {
    uint64_t r = rnd(s);
    switch (r % 8) {
    case 0: return 8 + (r >> 8) % 65536;
    case 1: case 2: return 8 + (r >> 8) % 4096;
    default: return 8 + (r >> 8) % 256;
    }
}

/* An object stamped with its size and a tag, checked by whoever frees it. */
static unsigned char *make(size_t n, unsigned tag) {
    unsigned char *p = malloc(n);
    if (!p) FAIL("malloc(%zu)", n);
    memset(p, (int)(tag & 0xff), n);
    memcpy(p, &n, sizeof n);
    return p;
}

static void check_and_free(unsigned char *p, unsigned tag) {
    size_t n;
    memcpy(&n, p, sizeof n);
    if (malloc_usable_size(p) < n) FAIL("usable %zu < %zu", malloc_usable_size(p), n);
    for (size_t i = sizeof n; i < n; i += 61)
        if (p[i] != (unsigned char)(tag & 0xff)) FAIL("object of %zu bytes damaged at %zu", n, i);
    free(p);
}

/* ---- cross: a ring of objects handed between threads ---- */

#define RING 4096
static struct {
    pthread_mutex_t lock;
    unsigned char *slot[RING];
    unsigned tag[RING];
    size_t head, tail;
} ring = {.lock = PTHREAD_MUTEX_INITIALIZER};

static int ring_put(unsigned char *p, unsigned tag) {
    pthread_mutex_lock(&ring.lock);
    int ok = ring.head - ring.tail < RING;
    if (ok) {
        ring.slot[ring.head % RING] = p;
        ring.tag[ring.head % RING] = tag;
        ring.head++;
    }
    pthread_mutex_unlock(&ring.lock);
    return ok;
}

static unsigned char *ring_take(unsigned *tag) {
    unsigned char *p = NULL;
    pthread_mutex_lock(&ring.lock);
    if (ring.head != ring.tail) {
        p = ring.slot[ring.tail % RING];
        *tag = ring.tag[ring.tail % RING];
        ring.tail++;
    }
    pthread_mutex_unlock(&ring.lock);
    return p;
}

static void *cross_worker(void *arg) {
    uint64_t s = 0x9e3779b97f4a7c15ull * ((uintptr_t)arg + 1);
    unsigned tag = (unsigned)(uintptr_t)arg + 1;
    unsigned char *mine[64] = {0};
    for (int it = 0; it < 8000; it++) {
        int k = (int)(rnd(&s) % 64);
        if (mine[k]) {
            if (rnd(&s) % 2 && ring_put(mine[k], tag)) {
                /* handed to another thread, which frees it */
            } else {
                check_and_free(mine[k], tag);
            }
            mine[k] = NULL;
        }
        mine[k] = make(rsize(&s), tag);
        /* Free something another thread allocated. */
        unsigned t;
        unsigned char *o = ring_take(&t);
        if (o) check_and_free(o, t);
        if (it % 500 == 0) {
            /* realloc chains across classes, contents kept. */
            size_t n = 1;
            unsigned char *r = malloc(n);
            if (!r) FAIL("malloc(1)");
            r[0] = 0x42;
            for (int g = 0; g < 14; g++) {
                size_t m = n * 3 + (rnd(&s) % 7);
                unsigned char *q = realloc(r, m);
                if (!q) FAIL("realloc(%zu)", m);
                for (size_t i = 0; i < n; i++)
                    if (q[i] != (unsigned char)(0x42 + i)) FAIL("realloc lost byte %zu of %zu", i, n);
                for (size_t i = n; i < m; i++) q[i] = (unsigned char)(0x42 + i);
                r = q;
                n = m;
            }
            free(r);
            unsigned char *z = calloc(1000, 3);
            if (!z) FAIL("calloc");
            for (int i = 0; i < 3000; i++)
                if (z[i]) FAIL("calloc byte %d = %d", i, z[i]);
            free(z);
        }
    }
    for (int k = 0; k < 64; k++)
        if (mine[k]) check_and_free(mine[k], tag);
    return NULL;
}

static void run_cross(void) {
    enum { T = 8 };
    pthread_t th[T];
    for (uintptr_t i = 0; i < T; i++)
        if (pthread_create(&th[i], NULL, cross_worker, (void *)i)) FAIL("pthread_create");
    for (int i = 0; i < T; i++) pthread_join(th[i], NULL);
    unsigned t;
    unsigned char *o;
    int left = 0;
    while ((o = ring_take(&t))) {
        check_and_free(o, t);
        left++;
    }
    printf("cross: ok (%d objects left in the ring, freed by main)\n", left);
}

/* ---- churn: many short threads ---- */

static void *short_worker(void *arg) {
    uint64_t s = (uintptr_t)arg * 7919 + 1;
    unsigned char *v[32];
    for (int i = 0; i < 32; i++) v[i] = make(rsize(&s), 7);
    for (int i = 0; i < 32; i++) check_and_free(v[i], 7);
    /* Leave one object for the main thread: freed after this thread exited. */
    return make(100, 9);
}

static void run_churn(void) {
    int n = 0;
    for (int wave = 0; wave < 300; wave++) {
        pthread_t th[8];
        for (uintptr_t i = 0; i < 8; i++)
            if (pthread_create(&th[i], NULL, short_worker, (void *)(wave * 8 + i)))
                FAIL("pthread_create");
        for (int i = 0; i < 8; i++) {
            void *left;
            pthread_join(th[i], &left);
            check_and_free(left, 9);
            n++;
        }
    }
    /* Detached threads exit with nobody waiting. */
    for (int i = 0; i < 64; i++) {
        pthread_t t;
        pthread_attr_t a;
        pthread_attr_init(&a);
        pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&t, &a, short_worker, (void *)(uintptr_t)i)) FAIL("pthread_create");
        pthread_attr_destroy(&a);
    }
    printf("churn: ok (%d joined threads)\n", n);
}

/* ---- fork ---- */

static volatile int stop;

static void *busy_worker(void *arg) {
    uint64_t s = (uintptr_t)arg + 12345;
    unsigned char *v[256] = {0};
    while (!stop) {
        int k = (int)(rnd(&s) % 256);
        if (v[k]) check_and_free(v[k], 3);
        v[k] = make(rsize(&s), 3);
    }
    for (int k = 0; k < 256; k++)
        if (v[k]) check_and_free(v[k], 3);
    return NULL;
}

/* The child: a few MB in objects of every kind, checked, then exit. */
static void child_work(int i) {
    uint64_t s = (uint64_t)i * 31 + 7;
    unsigned char *v[512];
    for (int k = 0; k < 512; k++) v[k] = make(rsize(&s), 5);
    unsigned char *big = make(3 << 20, 6);
    void *r = realloc(v[0], 200000);
    if (!r) FAIL("child realloc");
    v[0] = r;
    for (int k = 1; k < 512; k++) check_and_free(v[k], 5);
    check_and_free(big, 6);
    free(v[0]);
    /* exit, not _exit: atexit handlers and libc teardown run, allocating. */
    exit(0);
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void run_fork(int forks, int busy) {
    pthread_t th[2];
    if (busy)
        for (uintptr_t i = 0; i < 2; i++)
            if (pthread_create(&th[i], NULL, busy_worker, (void *)i)) FAIL("pthread_create");
    int hung = 0, crashed = 0;
    for (int i = 0; i < forks; i++) {
        /* The parent keeps allocating around the fork too. */
        unsigned char *mine = make(1000 + i, 4);
        pid_t pid = fork();
        if (pid < 0) FAIL("fork: %s", strerror(errno));
        if (pid == 0) child_work(i);
        check_and_free(mine, 4);
        int st = 0;
        double deadline = now() + 10.0;
        pid_t w;
        while ((w = waitpid(pid, &st, WNOHANG)) == 0 && now() < deadline) usleep(1000);
        if (w == 0) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            hung++;
            fprintf(stderr, "fork %d: child %d hung (killed after 10 s)\n", i, pid);
        } else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            crashed++;
            fprintf(stderr, "fork %d: child %d ended with status %#x\n", i, pid, st);
        }
    }
    stop = 1;
    if (busy)
        for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
    printf("%s: %d forks, %d hung, %d crashed\n", busy ? "forkbusy" : "fork", forks, hung,
           crashed);
    if (hung || crashed) exit(1);
    printf("%s: ok\n", busy ? "forkbusy" : "fork");
}

int main(int argc, char **argv) {
    if (argc < 2) FAIL("usage: threads cross|churn|fork|forkbusy [forks]");
    int forks = argc > 2 ? atoi(argv[2]) : 200;
    if (!strcmp(argv[1], "cross")) run_cross();
    else if (!strcmp(argv[1], "churn")) run_churn();
    else if (!strcmp(argv[1], "fork")) run_fork(forks, 0);
    else if (!strcmp(argv[1], "forkbusy")) run_fork(forks, 1);
    else FAIL("unknown mode %s", argv[1]);
    return 0;
}
