// CGI-style echo: describes the request it was given (method, path, query,
// headers), then copies the request body from stdin back verbatim.
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern char **environ;

struct header {
    char *name;        // lowercased, '_' -> '-'
    const char *value;
};

static int by_name(const void *a, const void *b) {
    const struct header *x = a, *y = b;
    return strcmp(x->name, y->name);
}

static const char *env_or_empty(const char *name) {
    const char *v = getenv(name);
    return v ? v : "";
}

int main(void) {
    fputs("Content-Type: text/plain\n\n", stdout);
    printf("method: %s\n", env_or_empty("REQUEST_METHOD"));
    printf("path: %s\n", env_or_empty("PATH_INFO"));
    printf("query: %s\n", env_or_empty("QUERY_STRING"));

    size_t count = 0;
    for (char **e = environ; *e; e++) count++;
    struct header *headers = calloc(count ? count : 1, sizeof *headers);
    size_t n = 0;
    for (char **e = environ; headers && *e; e++) {
        if (strncmp(*e, "HTTP_", 5) != 0) continue;
        const char *name = *e + 5;
        const char *eq = strchr(name, '=');
        if (!eq) continue;
        size_t len = (size_t)(eq - name);
        char *lower = malloc(len + 1);
        if (!lower) break;
        for (size_t i = 0; i < len; i++)
            lower[i] = name[i] == '_' ? '-' : (char)tolower((unsigned char)name[i]);
        lower[len] = 0;
        headers[n].name = lower;
        headers[n].value = eq + 1;
        n++;
    }
    qsort(headers, n, sizeof *headers, by_name);
    for (size_t i = 0; i < n; i++) printf("header %s: %s\n", headers[i].name, headers[i].value);

    fputs("body:\n", stdout);
    static char buf[64 * 1024];
    size_t got;
    while ((got = fread(buf, 1, sizeof buf, stdin)) > 0) fwrite(buf, 1, got, stdout);
    fflush(stdout);
    return 0;
}
