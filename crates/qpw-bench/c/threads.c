/* Many live threads: THREADS threads (64 KiB stacks) each allocate
 * OBJECTS blocks of 16..256 bytes, wait until every thread holds its
 * blocks, then free them and exit. Measures what each thread's first
 * allocations and its exit cost, and the peak RSS of many thread caches.
 * Usage: threads THREADS OBJECTS */
#include "common.h"

static long long objects;
static pthread_barrier_t all_live;

static void *run(void *arg) {
  uint64_t s = rng_seed((uint64_t)(uintptr_t)arg);
  void **held = xmalloc((size_t)objects * sizeof *held);
  for (long long i = 0; i < objects; i++)
    held[i] = xmalloc(rng_size(&s, 16, 256));
  pthread_barrier_wait(&all_live);
  for (long long i = 0; i < objects; i++)
    free(held[i]);
  free(held);
  return NULL;
}

int main(int argc, char **argv) {
  int threads = (int)arg_count(argc, argv, 1, 1000);
  objects = arg_count(argc, argv, 2, 100);
  if (threads > 10000)
    die("at most 10000 threads");
  pthread_t *t = calloc((size_t)threads, sizeof *t);
  if (!t)
    die("out of memory");
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 64 * 1024);
  pthread_barrier_init(&all_live, NULL, (unsigned)threads);
  uint64_t t0 = now_ns();
  for (int i = 0; i < threads; i++)
    if (pthread_create(&t[i], &attr, run, (void *)(uintptr_t)i))
      die("pthread_create failed");
  for (int i = 0; i < threads; i++)
    pthread_join(t[i], NULL);
  uint64_t ns = now_ns() - t0;
  free(t);
  report((unsigned long long)threads * (unsigned long long)objects, ns);
  return 0;
}
