/* The allocator's own memory: what a process holds beyond its objects.
 *
 * usage: footprint idle          one small allocation
 *        footprint churn <n>     <n> short threads, 2 at a time, each
 *                                allocating 16 small strings and 1 KiB
 * Prints "anon_kb <RssAnon> hwm_kb <VmHWM>" from /proc/self/status at the end. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static long status_kb(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    size_t k = strlen(key);
    if (!f) {
        fprintf(stderr, "cannot open /proc/self/status\n");
        exit(2);
    }
    while (fgets(line, sizeof line, f))
        if (strncmp(line, key, k) == 0 && line[k] == ':')
            v = strtol(line + k + 1, NULL, 10);
    fclose(f);
    if (v < 0) {
        fprintf(stderr, "no %s in /proc/self/status\n", key);
        exit(2);
    }
    return v;
}

static void *worker(void *arg) {
    char *s[16];
    for (int i = 0; i < 16; i++) {
        s[i] = malloc(24 + i * 8);
        if (!s[i]) exit(3);
        memset(s[i], 'a' + i, 24 + i * 8);
    }
    char *buf = malloc(1024);
    if (!buf) exit(3);
    memset(buf, 1, 1024);
    for (int i = 0; i < 16; i++) free(s[i]);
    free(buf);
    return arg;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "idle") == 0) {
        volatile char *p = malloc(100);
        if (!p) return 3;
        p[0] = 1;
        free((void *)p);
    } else if (argc >= 3 && strcmp(argv[1], "churn") == 0) {
        long n = strtol(argv[2], NULL, 10);
        for (long i = 0; i < n; i += 2) {
            pthread_t a, b;
            if (pthread_create(&a, NULL, worker, NULL) || pthread_create(&b, NULL, worker, NULL)) {
                fprintf(stderr, "pthread_create failed\n");
                return 2;
            }
            pthread_join(a, NULL);
            pthread_join(b, NULL);
        }
    } else {
        fprintf(stderr, "usage: footprint idle | footprint churn <n>\n");
        return 2;
    }
    printf("anon_kb %ld hwm_kb %ld\n", status_kb("RssAnon"), status_kb("VmHWM"));
    return 0;
}
