/* Connects to an abstract unix socket as fast as it can, closing each connection at once, until
 * stdin reads end-of-file or 60 s pass: the flood a process of another user in the same network
 * namespace can send a supervisor's status socket (tests/test_status.py). Usage:
 * connect_flood NAME (the name without its leading NUL). */
#include <fcntl.h>
#include <poll.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    size_t length = strlen(argv[1]);
    if (length + 1 > sizeof(address.sun_path)) return 2;
    memcpy(address.sun_path + 1, argv[1], length);
    socklen_t size = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + length);
    fcntl(0, F_SETFL, O_NONBLOCK);
    time_t ends = time(NULL) + 60;
    for (unsigned long round = 0;; round++) {
        if (round % 1024 == 0) {
            char byte;
            struct pollfd input = {.fd = 0, .events = POLLIN};
            if (poll(&input, 1, 0) > 0 && read(0, &byte, 1) <= 0) return 0;
            if (time(NULL) > ends) return 0;
        }
        int client = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (client < 0) continue;
        connect(client, (struct sockaddr *)&address, size);
        close(client);
    }
}
