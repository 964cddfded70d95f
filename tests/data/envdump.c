/* The command the bundle tests run in images without a shell: prints its PID, its parent's PID and
 * every environment entry, one per line. Built static (scratch, distroless/static) and against
 * musl's loader (the Alpine stand-in), so it runs on whatever C library its image has.
 *
 * With --get-credentials it is also a static client of imds-shim --serve: it then asks
 * AWS_CONTAINER_CREDENTIALS_FULL_URI (http://127.0.0.1:PORT/PATH) with the token and prints the
 * answer's status line and body as "answer=..." lines. */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

extern char **environ;

static int get_credentials(void)
{
    const char *uri = getenv("AWS_CONTAINER_CREDENTIALS_FULL_URI");
    const char *token = getenv("AWS_CONTAINER_AUTHORIZATION_TOKEN");
    int port = 0, length = 0;
    char path[256], request[1024], answer[8192];
    if (uri == NULL || token == NULL || sscanf(uri, "http://127.0.0.1:%d%255s", &port, path) != 2) {
        printf("answer=no endpoint\n");
        return 1;
    }
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int sock = socket(AF_INET, SOCK_STREAM, 0);
    if (sock < 0 || connect(sock, (struct sockaddr *)&address, sizeof address) != 0) {
        printf("answer=cannot connect\n");
        return 1;
    }
    length = snprintf(request, sizeof request,
                      "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: %s\r\nConnection: close\r\n\r\n",
                      path, token);
    if (write(sock, request, (size_t)length) != length) {
        return 1;
    }
    length = 0;
    for (ssize_t got; length < (int)sizeof answer - 1
                      && (got = read(sock, answer + length, sizeof answer - 1 - (size_t)length)) > 0;) {
        length += (int)got;
    }
    answer[length] = '\0';
    char *body = strstr(answer, "\r\n\r\n");
    printf("answer=%.*s\nanswer=%s\n", (int)strcspn(answer, "\r"), answer, body ? body + 4 : "");
    return 0;
}

int main(int argc, char **argv)
{
    printf("pid=%d\nppid=%d\n", (int)getpid(), (int)getppid());
    for (char **entry = environ; *entry != NULL; entry++) {
        printf("%s\n", *entry);
    }
    if (argc > 1 && strcmp(argv[1], "--get-credentials") == 0) {
        return get_credentials();
    }
    return 0;
}
