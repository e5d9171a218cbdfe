/* What the host program sees of the allocator's threads (issue 15, item 3):
 * nothing. Each mode allocates enough first to take the allocator's slow
 * paths (where qpw-malloc used to start its decay thread), then checks one
 * promise that a thread of ours would break.
 *
 * usage: host pthread_exit   main ends with pthread_exit after starting an
 *                            allocating thread: the process must exit
 *                            (a thread of ours would keep it alive; the
 *                            test harness bounds the wait)
 *        host signals        main blocks SIGUSR1, sends itself 20, checks
 *                            that the handler ran 0 times before it
 *                            unblocks (a thread of ours with an open mask
 *                            would take them), prints "taken N of 20"
 *        host fork_thread    a non-main thread forks; the child starts 4
 *                            allocating threads, joins them, and its
 *                            forking thread returns (pthread_exit): the
 *                            child must exit 0 within 60 s
 *        host dlopen <lib>   (not preloaded) a thread started before the
 *                            library is dlopen()ed and one started after
 *                            allocate and free through its malloc/free,
 *                            freeing each other's objects too: the
 *                            library's initial-exec TLS slot must be there
 *                            and zero in threads that existed before it;
 *                            prints "dlopen: ok"
 * Exit 0 when the promise held, 1 when it did not, 2 on a setup error. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Allocates and frees enough of several sizes to go through every slow
 * path: sheaf refills from the depot and flushes back to it. */
static void churn(int rounds) {
    enum { N = 4096 };
    static __thread void *v[N];
    for (int r = 0; r < rounds; r++) {
        for (int i = 0; i < N; i++) {
            v[i] = malloc(16 + (i % 13) * 24);
            if (!v[i]) {
                fprintf(stderr, "malloc failed\n");
                exit(2);
            }
            memset(v[i], r, 16);
        }
        for (int i = 0; i < N; i++) free(v[i]);
    }
}

static void *churner(void *arg) {
    (void)arg;
    churn(20);
    return NULL;
}

static void sleep_ms(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&t, &t) != 0 && errno == EINTR) {
    }
}

static int pthread_exit_main(void) {
    churn(20);
    pthread_t t;
    if (pthread_create(&t, NULL, churner, NULL) != 0) return 2;
    printf("main: pthread_exit\n");
    fflush(stdout);
    pthread_exit(NULL);
}

static volatile sig_atomic_t taken;
static void on_usr1(int sig) {
    (void)sig;
    taken++;
}

static int signals(void) {
    /* The allocator's start-up and slow paths happen with every signal
     * open, as in a program that blocks signals only later. */
    churn(20);
    pthread_t t;
    if (pthread_create(&t, NULL, churner, NULL) != 0) return 2;
    pthread_join(t, NULL);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGUSR1, &sa, NULL) != 0) return 2;
    sigset_t set, pending;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    if (pthread_sigmask(SIG_BLOCK, &set, NULL) != 0) return 2;
    int sent = 0;
    for (int i = 0; i < 20; i++) {
        if (kill(getpid(), SIGUSR1) != 0) return 2;
        sent++;
        churn(1);
        sleep_ms(10);
    }
    int seen = taken;
    sigpending(&pending);
    int still = sigismember(&pending, SIGUSR1);
    printf("taken %d of %d, pending %d\n", seen, sent, still);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
    return seen == 0 && still == 1 ? 0 : 1;
}

static void *forker(void *arg) {
    (void)arg;
    churn(5);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        exit(2);
    }
    if (pid == 0) {
        /* The child: this thread is its only one. */
        pthread_t t[4];
        for (int i = 0; i < 4; i++)
            if (pthread_create(&t[i], NULL, churner, NULL) != 0) _exit(2);
        for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
        printf("child: joined 4 threads\n");
        fflush(stdout);
        /* Returning ends this thread, the child's last: it exits 0. */
        return NULL;
    }
    for (int i = 0; i < 6000; i++) {
        int st;
        pid_t w = waitpid(pid, &st, WNOHANG);
        if (w == pid) {
            int ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;
            printf("child: %s (status %d)\n", ok ? "exited" : "failed", st);
            return (void *)(long)(ok ? 0 : 1);
        }
        sleep_ms(10);
    }
    printf("child: hung (still running after 60 s)\n");
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return (void *)1L;
}

static int fork_thread(void) {
    churn(5);
    pthread_t t;
    void *r;
    if (pthread_create(&t, NULL, forker, NULL) != 0) return 2;
    pthread_join(t, &r);
    return (int)(long)r;
}

static void *(*lib_malloc)(size_t);
static void (*lib_free)(void *);
static pthread_barrier_t loaded;
enum { DL_N = 20000 };
static void *handed[DL_N];

/* Allocates DL_N objects with the library, writes them, frees half and
 * hands the other half to the caller through `handed` (to free them). */
static int dl_work(void) {
    static __thread void *mine[DL_N];
    for (int i = 0; i < DL_N; i++) {
        mine[i] = lib_malloc(8 + (i % 50) * 8);
        if (!mine[i]) return 1;
        memset(mine[i], i, 8);
    }
    for (int i = 0; i < DL_N; i++) {
        if (*(unsigned char *)mine[i] != (unsigned char)i) return 1;
        if (i % 2) lib_free(mine[i]);
        else handed[i] = mine[i];
    }
    return 0;
}

static void *dl_before(void *arg) {
    (void)arg;
    churn(2); /* glibc's malloc: this thread exists before the dlopen */
    pthread_barrier_wait(&loaded);
    return (void *)(long)dl_work();
}

static void *dl_after(void *arg) {
    (void)arg;
    return (void *)(long)dl_work();
}

static int dlopen_lib(const char *path) {
    pthread_t before, after;
    void *r1, *r2;
    pthread_barrier_init(&loaded, NULL, 2);
    if (pthread_create(&before, NULL, dl_before, NULL) != 0) return 2;
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "dlopen: %s\n", dlerror());
        return 1;
    }
    lib_malloc = (void *(*)(size_t))dlsym(h, "malloc");
    lib_free = (void (*)(void *))dlsym(h, "free");
    if (!lib_malloc || !lib_free) return 2;
    pthread_barrier_wait(&loaded);
    pthread_join(before, &r1);
    /* Main frees what the first thread kept, then works itself. */
    for (int i = 0; i < DL_N; i += 2) lib_free(handed[i]);
    if (dl_work() != 0) return 1;
    for (int i = 0; i < DL_N; i += 2) lib_free(handed[i]);
    if (pthread_create(&after, NULL, dl_after, NULL) != 0) return 2;
    pthread_join(after, &r2);
    for (int i = 0; i < DL_N; i += 2) lib_free(handed[i]);
    if (r1 || r2) return 1;
    printf("dlopen: ok\n");
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: host pthread_exit|signals|fork_thread|dlopen <lib>\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (strcmp(argv[1], "pthread_exit") == 0) return pthread_exit_main();
    if (strcmp(argv[1], "signals") == 0) return signals();
    if (strcmp(argv[1], "fork_thread") == 0) return fork_thread();
    if (strcmp(argv[1], "dlopen") == 0 && argc > 2) return dlopen_lib(argv[2]);
    fprintf(stderr, "unknown mode %s\n", argv[1]);
    return 2;
}
