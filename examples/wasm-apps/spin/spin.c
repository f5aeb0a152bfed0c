// Loops forever on paths under /spin; answers "ok" otherwise.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void) {
    const char *path = getenv("PATH_INFO");
    if (path && strncmp(path, "/spin", 5) == 0) {
        volatile unsigned long counter = 0;
        for (;;) counter++;
    }
    printf("Content-Type: text/plain\n\nok\n");
    return 0;
}
