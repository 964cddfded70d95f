/* The imds-shim executable of the self-contained bundle.
 *
 * It starts the frozen Python program (imds-shim-python, PyInstaller's bootloader) through the
 * bundle's own dynamic loader and C library, in lib/, so that the image needs nothing but a
 * Linux kernel: FROM scratch, distroless/static, Alpine (musl), busybox and any glibc all work.
 * The command imds-shim execs still runs with the image's own C library, because the library
 * path is given to the loader on its command line, not in LD_LIBRARY_PATH.
 *
 * Static, so that it needs no loader itself. The folder is found through /proc/self/exe, so the
 * bundle can live anywhere (but not under a path with ':', which the loader's --library-path
 * cannot hold). Without this, PyInstaller's bootloader would set LD_LIBRARY_PATH and exec itself
 * once more; the two _PYI_ variables tell it that this has been done (the loader already knows
 * where the libraries are).
 *
 * The caller's own loader and packager variables (LD_*, PYINSTALLER_*, _PYI_*) are meant for the
 * image's programs: the bundle's loader would load an LD_PRELOAD built for the image's newer
 * glibc into the bundle's older one, and the bootloader obeys PYINSTALLER_RESET_ENVIRONMENT. So
 * each is handed over renamed, behind SAVED_PREFIX, and imds-shim (shim/runtime.py) gives them
 * back their names, and removes what this launcher set, before it runs anything. This launcher
 * also tells which of the signals CPython ignores at start-up it inherited as ignored already
 * (IGNORED_VARIABLE), so that those stay ignored for the command.
 */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef LOADER
#error "build with -DLOADER='\"ld-linux-x86-64.so.2\"' (the loader's name in lib/, ld-linux-aarch64.so.1 on arm64)"
#endif
#define PROGRAM "imds-shim-python"
/* A copy of shim/command_line/exit_codes.py's SHIM_FAILED, the status of the shim's own failures;
 * tests/test_bundle.py checks that the two agree. */
#define FAILED 125
/* Copies of the names in shim/runtime.py, which reads them. */
#define SAVED_PREFIX "_IMDS_SHIM_CALLER_"
#define IGNORED_VARIABLE "_IMDS_SHIM_INHERITED_SIG_IGN="

extern char **environ;

static int fail(const char *what)
{
    fprintf(stderr, "imds-shim: error: %s: %s\n", what, strerror(errno));
    return FAILED;
}

static int is_callers(const char *entry)
{
    return strncmp(entry, "LD_", 3) == 0 || strncmp(entry, "PYINSTALLER_", 12) == 0
        || strncmp(entry, "_PYI_", 5) == 0;
}

/* The environment for the bundled runtime: the caller's, with its loader and packager variables
 * renamed, the bootloader's three, and the inherited ignored signals. NULL when out of memory. */
static char **runtime_environment(const char *program)
{
    static char archive[PATH_MAX + 128], ignored[64] = IGNORED_VARIABLE;
    size_t count = 0;
    while (environ[count] != NULL) {
        count++;
    }
    char **entries = calloc(count + 5, sizeof *entries);
    if (entries == NULL) {
        return NULL;
    }
    size_t next = 0;
    for (size_t index = 0; index < count; index++) {
        const char *entry = environ[index];
        if (is_callers(entry)) {
            size_t size = sizeof SAVED_PREFIX + strlen(entry);
            char *saved = malloc(size);
            if (saved == NULL) {
                return NULL;
            }
            snprintf(saved, size, "%s%s", SAVED_PREFIX, entry);
            entry = saved;
        }
        entries[next++] = (char *)entry;
    }
    snprintf(archive, sizeof archive, "_PYI_ARCHIVE_FILE=%s", program);
    entries[next++] = archive;
    entries[next++] = "_PYI_PARENT_PROCESS_LEVEL=0";
    entries[next++] = "_PYI_LINUX_PROCESS_NAME=imds-shim";
    const int python_ignores[] = {SIGPIPE, SIGXFSZ};
    for (size_t index = 0; index < sizeof python_ignores / sizeof *python_ignores; index++) {
        struct sigaction action;
        if (sigaction(python_ignores[index], NULL, &action) == 0 && action.sa_handler == SIG_IGN) {
            size_t used = strlen(ignored);
            const char *comma = used > sizeof IGNORED_VARIABLE - 1 ? "," : "";
            snprintf(ignored + used, sizeof ignored - used, "%s%d", comma, python_ignores[index]);
        }
    }
    entries[next++] = ignored;
    return entries;
}

int main(int argc, char **argv)
{
    char folder[PATH_MAX], loader[PATH_MAX + 64], program[PATH_MAX + 64];
    char library_path[2 * PATH_MAX + 64];
    ssize_t length = readlink("/proc/self/exe", folder, sizeof folder - 1);
    /* argc is 0 when started with an empty argv (kernels before 5.18 allow it). */
    const char *name = argc > 0 && argv[0] != NULL ? argv[0] : "";

    if (length > 0) {
        folder[length] = '\0';
    } else if (strchr(name, '/') == NULL || realpath(name, folder) == NULL) {
        return fail("cannot tell where the imds-shim folder is (no /proc, no path in argv[0])");
    }
    *strrchr(folder, '/') = '\0';
    if (strchr(folder, ':') != NULL) {
        fprintf(stderr, "imds-shim: error: the bundle's folder %s has a ':' in its path, which the "
                        "bundled loader cannot take: move it\n", folder);
        return FAILED;
    }
    snprintf(loader, sizeof loader, "%s/lib/%s", folder, LOADER);
    snprintf(program, sizeof program, "%s/%s", folder, PROGRAM);
    snprintf(library_path, sizeof library_path, "%s/lib:%s/_internal", folder, folder);
    char **environment = runtime_environment(program);
    /* The loader, its two options, the program, the caller's arguments, and the final NULL. */
    char **arguments = calloc((size_t)(argc > 1 ? argc : 1) + 4, sizeof *arguments);
    if (environment == NULL || arguments == NULL) {
        return fail("out of memory");
    }
    arguments[0] = loader;
    arguments[1] = "--library-path";
    arguments[2] = library_path;
    arguments[3] = program;
    for (int index = 1; index < argc; index++) {
        arguments[index + 3] = argv[index];
    }
    execve(loader, arguments, environment);
    return fail("cannot start the bundled runtime");
}
