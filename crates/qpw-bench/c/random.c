/* Random sizes: each thread replaces random slots of its own window of
 * 1,024 pointers with malloc(16..256) / free. Issue 15's reference loop
 * with one thread.
 * Usage: random PAIRS_PER_THREAD THREADS */
#include "common.h"

#define WINDOW 1024

static long long pairs;
static pthread_barrier_t start;

static void *run(void *arg) {
  uint64_t s = rng_seed((uint64_t)(uintptr_t)arg);
  void *win[WINDOW] = {0};
  pthread_barrier_wait(&start);
  for (long long i = 0; i < pairs; i++) {
    uint64_t r = rng_next(&s);
    size_t j = r & (WINDOW - 1);
    free(win[j]);
    win[j] = xmalloc(16 + (size_t)((r >> 32) % 241));
  }
  for (int j = 0; j < WINDOW; j++)
    free(win[j]);
  return NULL;
}

int main(int argc, char **argv) {
  pairs = arg_count(argc, argv, 1, 10000000);
  int threads = (int)arg_count(argc, argv, 2, 1);
  if (threads > 64)
    die("at most 64 threads");
  /* The main thread runs the first window itself: with one thread the
   * program is the plain single-threaded loop. */
  pthread_t t[64];
  pthread_barrier_init(&start, NULL, (unsigned)threads);
  for (int i = 1; i < threads; i++)
    if (pthread_create(&t[i], NULL, run, (void *)(uintptr_t)i))
      die("pthread_create failed");
  uint64_t t0 = now_ns();
  run((void *)(uintptr_t)0);
  for (int i = 1; i < threads; i++)
    pthread_join(t[i], NULL);
  uint64_t ns = now_ns() - t0;
  report((unsigned long long)pairs * threads, ns);
  return 0;
}
