/* The command the bundle tests run in images without a shell: prints its PID, its parent's PID and
 * every environment entry, one per line. Built static (scratch, distroless/static) and against
 * musl's loader (the Alpine stand-in), so it runs on whatever C library its image has. */
#include <stdio.h>
#include <unistd.h>

extern char **environ;

int main(void)
{
    printf("pid=%d\nppid=%d\n", (int)getpid(), (int)getppid());
    for (char **entry = environ; *entry != NULL; entry++) {
        printf("%s\n", *entry);
    }
    return 0;
}
