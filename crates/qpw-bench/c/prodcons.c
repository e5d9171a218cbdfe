/* Producer/consumer: PAIRS producer threads each allocate batches of 64
 * blocks of 16..256 bytes and pass them through a bounded queue (16
 * batches) to their consumer thread, which frees them: every block is
 * freed by a thread that did not allocate it.
 * Usage: prodcons OBJECTS_PER_PAIR PAIRS */
#include "common.h"

#define BATCH 64
#define DEPTH 16

struct queue {
  pthread_mutex_t lock;
  pthread_cond_t not_full, not_empty;
  void **slot[DEPTH];
  int head, count;
  long long objects;
  uint64_t rng;
};

static void *produce(void *arg) {
  struct queue *q = arg;
  for (long long made = 0; made < q->objects; made += BATCH) {
    void **b = xmalloc(BATCH * sizeof *b);
    for (int i = 0; i < BATCH; i++)
      b[i] = xmalloc(rng_size(&q->rng, 16, 256));
    pthread_mutex_lock(&q->lock);
    while (q->count == DEPTH)
      pthread_cond_wait(&q->not_full, &q->lock);
    q->slot[(q->head + q->count++) % DEPTH] = b;
    pthread_cond_signal(&q->not_empty);
    pthread_mutex_unlock(&q->lock);
  }
  return NULL;
}

static void *consume(void *arg) {
  struct queue *q = arg;
  for (long long got = 0; got < q->objects; got += BATCH) {
    pthread_mutex_lock(&q->lock);
    while (q->count == 0)
      pthread_cond_wait(&q->not_empty, &q->lock);
    void **b = q->slot[q->head];
    q->head = (q->head + 1) % DEPTH;
    q->count--;
    pthread_cond_signal(&q->not_full);
    pthread_mutex_unlock(&q->lock);
    for (int i = 0; i < BATCH; i++)
      free(b[i]);
    free(b);
  }
  return NULL;
}

int main(int argc, char **argv) {
  long long objects = arg_count(argc, argv, 1, 4000000);
  int pairs = (int)arg_count(argc, argv, 2, 1);
  if (pairs > 32)
    die("at most 32 pairs");
  objects = (objects + BATCH - 1) / BATCH * BATCH;
  struct queue q[32];
  pthread_t t[64];
  for (int i = 0; i < pairs; i++) {
    memset(&q[i], 0, sizeof q[i]);
    pthread_mutex_init(&q[i].lock, NULL);
    pthread_cond_init(&q[i].not_full, NULL);
    pthread_cond_init(&q[i].not_empty, NULL);
    q[i].objects = objects;
    q[i].rng = rng_seed((uint64_t)i);
  }
  uint64_t t0 = now_ns();
  for (int i = 0; i < pairs; i++)
    if (pthread_create(&t[2 * i], NULL, produce, &q[i]) ||
        pthread_create(&t[2 * i + 1], NULL, consume, &q[i]))
      die("pthread_create failed");
  for (int i = 0; i < 2 * pairs; i++)
    pthread_join(t[i], NULL);
  uint64_t ns = now_ns() - t0;
  report((unsigned long long)objects * pairs, ns);
  return 0;
}
