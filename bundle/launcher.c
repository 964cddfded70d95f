/* The imds-shim executable of the self-contained bundle.
 *
 * It starts the frozen Python program (imds-shim-python, PyInstaller's bootloader) through the
 * bundle's own dynamic loader and C library, in lib/, so that the image needs nothing but a
 * Linux kernel: FROM scratch, distroless/static, Alpine (musl), busybox and any glibc all work.
 * The command imds-shim execs still runs with the image's own C library, because the library
 * path is given to the loader on its command line, not in LD_LIBRARY_PATH.
 *
 * Static, so that it needs no loader itself. The folder is found through /proc/self/exe, so the
 * bundle can live anywhere. Without this, PyInstaller's bootloader would set LD_LIBRARY_PATH and
 * exec itself once more; the two _PYI_ variables tell it that this has been done (the loader
 * already knows where the libraries are). imds-shim removes them again before it runs anything.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef LOADER
#error "build with -DLOADER='\"ld-linux-x86-64.so.2\"' (the loader's name in lib/, ld-linux-aarch64.so.1 on arm64)"
#endif
#define PROGRAM "imds-shim-python"
#define FAILED 125 /* the shim's own failure, as documented */

static int fail(const char *what)
{
    fprintf(stderr, "imds-shim: error: %s: %s\n", what, strerror(errno));
    return FAILED;
}

int main(int argc, char **argv)
{
    char folder[PATH_MAX], loader[PATH_MAX + 64], program[PATH_MAX + 64];
    char library_path[2 * PATH_MAX + 64];
    ssize_t length = readlink("/proc/self/exe", folder, sizeof folder - 1);

    if (length > 0) {
        folder[length] = '\0';
    } else if (strchr(argv[0], '/') == NULL || realpath(argv[0], folder) == NULL) {
        return fail("cannot tell where the imds-shim folder is (no /proc, no path in argv[0])");
    }
    *strrchr(folder, '/') = '\0';
    snprintf(loader, sizeof loader, "%s/lib/%s", folder, LOADER);
    snprintf(program, sizeof program, "%s/%s", folder, PROGRAM);
    snprintf(library_path, sizeof library_path, "%s/lib:%s/_internal", folder, folder);
    if (setenv("_PYI_ARCHIVE_FILE", program, 1) || setenv("_PYI_PARENT_PROCESS_LEVEL", "0", 1)
        || setenv("_PYI_LINUX_PROCESS_NAME", "imds-shim", 1)) {
        return fail("cannot set the environment");
    }

    char **arguments = calloc((size_t)argc + 4, sizeof *arguments);
    if (arguments == NULL) {
        return fail("out of memory");
    }
    arguments[0] = loader;
    arguments[1] = "--library-path";
    arguments[2] = library_path;
    arguments[3] = program;
    for (int index = 1; index < argc; index++) {
        arguments[index + 3] = argv[index];
    }
    execv(loader, arguments);
    return fail("cannot start the bundled runtime");
}
