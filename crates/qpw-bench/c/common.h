/* What the realprog C workloads share: a clock, a seeded random
 * generator, argument parsing, and the one line each prints at its end.
 * The programs are plain C with nothing but libc and pthreads: they call
 * malloc and free, and the allocator under test is whatever LD_PRELOAD
 * names. */
#ifndef QPW_REALPROG_COMMON_H
#define QPW_REALPROG_COMMON_H

#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static inline uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* xorshift64*: a cheap, branch-free generator; state must not be 0. */
static inline uint64_t rng_next(uint64_t *s) {
  uint64_t x = *s;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  *s = x;
  return x * 2685821657736338717ull;
}

static inline uint64_t rng_seed(uint64_t n) { return 0x9E3779B97F4A7C15ull * (n + 1) | 1; }

/* A size in [lo, hi]. */
static inline size_t rng_size(uint64_t *s, size_t lo, size_t hi) {
  return lo + (size_t)((rng_next(s) >> 11) % (hi - lo + 1));
}

static void die(const char *what) {
  fprintf(stderr, "%s\n", what);
  exit(3);
}

static inline void *xmalloc(size_t n) {
  void *p = malloc(n);
  if (!p)
    die("out of memory");
  /* Touch the block, as a program would. */
  *(volatile char *)p = (char)n;
  return p;
}

/* Argument i as a count in [1, 10^12], or the default if absent. */
static long long arg_count(int argc, char **argv, int i, long long def) {
  if (argc <= i)
    return def;
  char *end = NULL;
  long long v = strtoll(argv[i], &end, 10);
  if (!end || *end || v < 1 || v > 1000000000000ll) {
    fprintf(stderr, "argument %d: `%s` is not a count from 1 to 10^12\n", i, argv[i]);
    exit(2);
  }
  return v;
}

/* A field of /proc/self/status in KiB (-1: unknown), read without
 * allocating. */
static long status_kib(const char *key) {
  char buf[8192];
  int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return -1;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0)
    return -1;
  buf[n] = 0;
  size_t k = strlen(key);
  for (char *l = buf; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
    if (!strncmp(l, key, k) && l[k] == ':')
      return strtol(l + k + 1, NULL, 10);
  return -1;
}

/* The one line the benchmark reads: operations, nanoseconds of the
 * measured part, peak RSS, and RSS once everything is freed (the caller
 * frees first). */
static void report(unsigned long long ops, uint64_t ns) {
  printf("ops=%llu ns=%llu hwm_kib=%ld rss_after_kib=%ld\n", ops, (unsigned long long)ns,
         status_kib("VmHWM"), status_kib("VmRSS"));
  fflush(stdout);
}

#endif
