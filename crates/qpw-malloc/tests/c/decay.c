/* Memory goes back to the OS by itself (qpw-mm's decay), as
 * QPW_MALLOC_DECAY_MS sets it. Allocates about 48 MB in 100-byte objects,
 * frees them all, then watches the resident set without calling anything
 * of the allocator.
 *
 * usage: decay back <limit-ms>   exit 0 once RSS fell below a quarter of
 *                                the peak's growth, 1 if not within the limit
 *        decay kept <wait-ms>    exit 0 if RSS is still above half of it
 *                                after the wait (decay off), 1 if it fell */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static long rss_kb(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    long size = 0, res = 0;
    if (!f || fscanf(f, "%ld %ld", &size, &res) != 2) {
        fprintf(stderr, "cannot read /proc/self/statm\n");
        exit(2);
    }
    fclose(f);
    return res * (sysconf(_SC_PAGESIZE) / 1024);
}

static long now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: decay back|kept <ms>\n");
        return 2;
    }
    int back = strcmp(argv[1], "back") == 0;
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
