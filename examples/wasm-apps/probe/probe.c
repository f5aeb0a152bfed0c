// Sandbox probe: reports every environment variable it can see (sorted by
// name) and whether it can open a few host files, plus the path given as the
// query string.
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern char **environ;

// Compares "K=V" strings by K, then by V.
static int by_key(const void *a, const void *b) {
    const char *x = *(char *const *)a, *y = *(char *const *)b;
    size_t kx = strcspn(x, "="), ky = strcspn(y, "=");
    size_t k = kx < ky ? kx : ky;
    int c = memcmp(x, y, k);
    if (c) return c;
    if (kx != ky) return kx < ky ? -1 : 1;
    return strcmp(x + kx, y + ky);
}

static void try_file(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) {
        printf("file %s: denied %s\n", path, strerror(errno));
        return;
    }
    char line[512];
    if (!fgets(line, sizeof line, f)) line[0] = 0;
    line[strcspn(line, "\r\n")] = 0;
    printf("file %s: ok %s\n", path, line);
    fclose(f);
}

int main(void) {
    fputs("Content-Type: text/plain\n\n", stdout);
    fputs("env:\n", stdout);
    size_t n = 0;
    for (char **e = environ; *e; e++) n++;
    char **vars = malloc((n ? n : 1) * sizeof *vars);
    if (vars) {
        for (size_t i = 0; i < n; i++) vars[i] = environ[i];
        qsort(vars, n, sizeof *vars, by_key);
        for (size_t i = 0; i < n; i++) printf("%s\n", vars[i]);
    }

    try_file("/etc/passwd");
    try_file("/etc/hostname");
    try_file("./Cargo.toml");
    const char *q = getenv("QUERY_STRING");
    if (q && *q) try_file(q);
    fflush(stdout);
    return 0;
}
