// Traps (wasm `unreachable`) on paths under /crash; answers "ok" otherwise.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void) {
    const char *path = getenv("PATH_INFO");
    if (path && strncmp(path, "/crash", 6) == 0) __builtin_trap();
    printf("Content-Type: text/plain\n\nok\n");
    return 0;
}
