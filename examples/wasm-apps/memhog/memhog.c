// On paths under /hog, grows linear memory 1 MiB at a time, touching each
// new page, until the host refuses; then reports and traps.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void) {
    const char *path = getenv("PATH_INFO");
    if (path && strncmp(path, "/hog", 4) == 0) {
        unsigned long mib = 0;
        for (;;) {
            size_t old_pages = __builtin_wasm_memory_grow(0, 16);
            if (old_pages == (size_t)-1) break;
            volatile char *page = (volatile char *)(old_pages * 65536);
            for (int i = 0; i < 16; i++) page[i * 65536] = 1;
            mib++;
        }
        fprintf(stderr, "memhog: memory.grow refused after %lu MiB\n", mib);
        __builtin_trap();
    }
    printf("Content-Type: text/plain\n\nok\n");
    return 0;
}
