/* Memory goes back to the OS by itself (qpw-mm's decay), as
 * QPW_MALLOC_DECAY_MS sets it. Allocates about 48 MB in 100-byte objects,
 * frees them all, then watches the resident set (read with open/read: no
 * allocation) without calling malloc_trim or anything else of the
 * allocator beyond malloc/free.
 *
 * usage: decay back <limit-ms>   the program goes on working (a batch of
 *                                small mallocs and frees between looks):
 *                                exit 0 once RSS fell below a quarter of
 *                                the peak's growth, 1 if not within the limit
 *        decay idle <limit-ms>   the same, but the program calls no
 *                                allocator function at all while it waits
 *                                (memory goes back only from the decay
 *                                thread, on by default)
 *        decay kept <wait-ms>    working as in `back`: exit 0 if RSS is
 *                                still above half of it after the wait
 *                                (decay off or long), 1 if it fell */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

static long rss_kb(void) {
    char buf[128];
    int fd = open("/proc/self/statm", O_RDONLY);
    long size = 0, res = 0;
    ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof buf - 1);
    if (fd >= 0) close(fd);
    if (n <= 0) {
        fprintf(stderr, "cannot read /proc/self/statm\n");
        exit(2);
    }
    buf[n] = 0;
    if (sscanf(buf, "%ld %ld", &size, &res) != 2) {
        fprintf(stderr, "cannot parse /proc/self/statm\n");
        exit(2);
    }
    return res * (sysconf(_SC_PAGESIZE) / 1024);
}

/* A program at work: a batch of small objects, allocated and freed (more
 * than a thread's cache holds, so it goes through the slow paths). */
static void work(void) {
    enum { B = 2048 };
    static void *w[B];
    for (int i = 0; i < B; i++) {
        w[i] = malloc(48);
        if (!w[i]) exit(2);
    }
    for (int i = 0; i < B; i++) free(w[i]);
}

static long now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: decay back|idle|kept <ms>\n");
        return 2;
    }
    int idle = strcmp(argv[1], "idle") == 0;
    int back = idle || strcmp(argv[1], "back") == 0;
    long limit = atol(argv[2]);
    enum { N = 400000 };
    static void *v[N];
    long base = rss_kb();
    for (int i = 0; i < N; i++) {
        v[i] = malloc(100);
        if (!v[i]) return 2;
        memset(v[i], 1, 100);
    }
    long peak = rss_kb();
    for (int i = 0; i < N; i++) free(v[i]);
    long grown = peak - base, start = now_ms(), r = peak;
    printf("base %ld KB, peak %ld KB\n", base, peak);
    while (now_ms() - start < limit) {
        usleep(20000);
        if (!idle) work();
        r = rss_kb();
        if (back && r - base < grown / 4) {
            printf("back: %ld KB after %ld ms\n", r, now_ms() - start);
            return 0;
        }
    }
    printf("after %ld ms: %ld KB\n", limit, r);
    if (back) return 1;
    return r - base > grown / 2 ? 0 : 1;
}
