/* Larson-style server simulation: each of THREADS chains owns a window of
 * 1,000 blocks of 16..512 bytes and replaces random ones; after ROUNDS
 * replacements a chain's thread starts its successor, hands it the window
 * and exits, so the successor frees blocks another thread allocated.
 * Usage: larson TOTAL_REPLACEMENTS_PER_CHAIN THREADS ROUNDS */
#include "common.h"

#define WINDOW 1000

struct chain {
  void *win[WINDOW];
  uint64_t rng;
  long long left;
  long long rounds;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t done_cv = PTHREAD_COND_INITIALIZER;
static int running;
static pthread_attr_t attr;

static void *run(void *arg) {
  struct chain *c = arg;
  long long n = c->left < c->rounds ? c->left : c->rounds;
  for (long long i = 0; i < n; i++) {
    uint64_t r = rng_next(&c->rng);
    size_t j = (size_t)(r % WINDOW);
    free(c->win[j]);
    c->win[j] = xmalloc(16 + (size_t)((r >> 32) % 497));
  }
  c->left -= n;
  pthread_t next;
  if (c->left > 0 && pthread_create(&next, &attr, run, c) == 0)
    return NULL;
  if (c->left > 0)
    die("pthread_create failed");
  pthread_mutex_lock(&lock);
  if (--running == 0)
    pthread_cond_signal(&done_cv);
  pthread_mutex_unlock(&lock);
  return NULL;
}

int main(int argc, char **argv) {
  long long total = arg_count(argc, argv, 1, 2000000);
  int threads = (int)arg_count(argc, argv, 2, 2);
  long long rounds = arg_count(argc, argv, 3, 10000);
  if (threads > 64)
    die("at most 64 threads");
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  struct chain *chains = calloc((size_t)threads, sizeof *chains);
  if (!chains)
    die("out of memory");
  for (int i = 0; i < threads; i++) {
    chains[i].rng = rng_seed((uint64_t)i);
    for (int j = 0; j < WINDOW; j++)
      chains[i].win[j] = xmalloc(rng_size(&chains[i].rng, 16, 512));
    chains[i].left = total;
    chains[i].rounds = rounds;
  }
  running = threads;
  uint64_t t0 = now_ns();
  for (int i = 0; i < threads; i++) {
    pthread_t t;
    if (pthread_create(&t, &attr, run, &chains[i]))
      die("pthread_create failed");
  }
  pthread_mutex_lock(&lock);
  while (running > 0)
    pthread_cond_wait(&done_cv, &lock);
  pthread_mutex_unlock(&lock);
  uint64_t ns = now_ns() - t0;
  for (int i = 0; i < threads; i++)
    for (int j = 0; j < WINDOW; j++)
      free(chains[i].win[j]);
  free(chains);
  report((unsigned long long)total * threads, ns);
  return 0;
}
