/* Bad frees the allocator must catch on the free path (issue 15, item 4),
 * as glibc does: each mode makes one mistake, and the process must abort
 * (SIGABRT) with a message naming the call and the reason. If it goes on,
 * it prints what the mistake led to and exits 1.
 *
 * usage: badfree double        free(p) twice, p = malloc(32)
 *        badfree interior      free(p + 8), p = malloc(64)
 *        badfree realloc-interior   realloc(p + 16, 100), p = malloc(64)
 *        badfree realloc-freed realloc(p, 40) after free(p), p = malloc(32) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Offsets the compiler cannot see (it warns on a constant one). */
static volatile long eight = 8, sixteen = 16;

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: badfree double|interior|realloc-interior|realloc-freed\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IONBF, 0);
    const char *m = argv[1];
    if (strcmp(m, "double") == 0) {
        char *volatile p = malloc(32);
        free(p);
        free(p);
        char *a = malloc(32), *b = malloc(32);
        printf("double free not detected; the next two malloc(32) %s\n",
               a == b ? "returned the same pointer" : "differ");
        return 1;
    }
    if (strcmp(m, "interior") == 0) {
        char *volatile p = malloc(64);
        free(p + eight);
        char *q = malloc(64);
        printf("free(p + 8) not detected; malloc(64) returned p%+td\n", q - p);
        return 1;
    }
    if (strcmp(m, "realloc-interior") == 0) {
        char *volatile p = malloc(64);
        char *q = realloc(p + sixteen, 100);
        printf("realloc(p + 16) not detected; it returned p%+td\n", q - p);
        return 1;
    }
    if (strcmp(m, "realloc-freed") == 0) {
        char *volatile p = malloc(32);
        free(p);
        char *q = realloc(p, 40);
        printf("realloc of a freed pointer not detected; it returned %s\n",
               q == p ? "the same pointer" : "another pointer");
        return 1;
    }
    fprintf(stderr, "unknown mode %s\n", m);
    return 2;
}
