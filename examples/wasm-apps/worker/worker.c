// A long-running worker: prints "tick N" every TICK_MS milliseconds (default
// 200). With EXIT_AFTER=K it exits after tick K with status EXIT_CODE
// (default 1).
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static long env_long(const char *name, long fallback) {
    const char *v = getenv(name);
    return (v && *v) ? strtol(v, NULL, 10) : fallback;
}

int main(void) {
    fprintf(stderr, "worker started\n");
    long tick_ms = env_long("TICK_MS", 200);
    long exit_after = env_long("EXIT_AFTER", 0);
    int code = (int)env_long("EXIT_CODE", 1);
    for (long n = 1;; n++) {
        usleep((useconds_t)(tick_ms * 1000));
        printf("tick %ld\n", n);
        fflush(stdout);
        if (exit_after > 0 && n >= exit_after) exit(code);
    }
}
