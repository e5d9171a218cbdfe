/* Several threads fork at the same time while two others allocate and
 * free: `forkers THREADS FORKS` (each of THREADS threads forks FORKS times;
 * each child allocates, frees and _exits; its parent thread reaps it).
 * Prints "forkers: T x F forks, H hung, C crashed" and exits 0 when every
 * child exited 0 within 5 s. A deadlock in the parent (the fork handlers of
 * two forking threads waiting on each other) shows as the program never
 * finishing: the test's own time limit reports it. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int forks_per_thread;
static volatile int stop;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int hung, crashed;

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec * 1e-9;
}

static void *churn(void *a)
{
	unsigned s = (unsigned)(long)a;
	void *keep[256] = { 0 };
	while (!stop) {
		for (int i = 0; i < 256; i++) {
			s = s * 1103515245 + 12345;
			free(keep[i]);
			keep[i] = malloc(16 + (s >> 8) % 2000);
			((char *)keep[i])[0] = 1;
		}
	}
	for (int i = 0; i < 256; i++)
		free(keep[i]);
	return 0;
}

static void child(void)
{
	void *p[64];
	for (int i = 0; i < 64; i++) {
		p[i] = malloc(16 + i * 97);
		memset(p[i], i, 16 + i * 97);
	}
	for (int i = 0; i < 64; i++)
		free(p[i]);
	_exit(0);
}

static void *forker(void *a)
{
	unsigned s = (unsigned)(long)a;
	for (int k = 0; k < forks_per_thread; k++) {
		void *w = malloc(100 + s++ % 3000);
		pid_t pid = fork();
		if (pid == 0)
			child();
		free(w);
		if (pid < 0) {
			perror("fork");
			continue;
		}
		double t0 = now();
		int st;
		for (;;) {
			pid_t r = waitpid(pid, &st, WNOHANG);
			if (r == pid) {
				if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
					pthread_mutex_lock(&mu);
					crashed++;
					pthread_mutex_unlock(&mu);
				}
				break;
			}
			if (now() - t0 > 5) {
				pthread_mutex_lock(&mu);
				hung++;
				pthread_mutex_unlock(&mu);
				kill(pid, SIGKILL);
				waitpid(pid, &st, 0);
				break;
			}
			usleep(100);
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	int threads = argc > 1 ? atoi(argv[1]) : 4;
	forks_per_thread = argc > 2 ? atoi(argv[2]) : 100;
	if (threads < 1 || threads > 16 || forks_per_thread < 1) {
		fprintf(stderr, "usage: forkers THREADS(1-16) FORKS\n");
		return 2;
	}
	pthread_t c[2], f[16];
	for (int i = 0; i < 2; i++)
		pthread_create(&c[i], 0, churn, (void *)(long)(i + 1));
	for (int i = 0; i < threads; i++)
		pthread_create(&f[i], 0, forker, (void *)(long)(i + 100));
	for (int i = 0; i < threads; i++)
		pthread_join(f[i], 0);
	stop = 1;
	for (int i = 0; i < 2; i++)
		pthread_join(c[i], 0);
	printf("forkers: %d x %d forks, %d hung, %d crashed\n", threads,
	       forks_per_thread, hung, crashed);
	return hung || crashed;
}
