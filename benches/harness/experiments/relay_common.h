/* What the two experiment relays (epoll_relay.c, uring_relay.c) share: their sockets. */
#ifndef RELAY_COMMON_H
#define RELAY_COMMON_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>

static void loopback(struct sockaddr_in *a, int port) {
    *a = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &a->sin_addr);
}

/* A blocking connection to 127.0.0.1:port with TCP_NODELAY; exits if it fails. */
static int tcp_to(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a;
    loopback(&a, port);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) { perror("connect"); exit(1); }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

/* A listener on 127.0.0.1:port (type_flags: e.g. SOCK_NONBLOCK); exits if it fails. */
static int listen_on(int port, int type_flags) {
    int ls = socket(AF_INET, SOCK_STREAM | type_flags, 0), one = 1;
    struct sockaddr_in a;
    loopback(&a, port);
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 1024)) { perror("listen"); exit(1); }
    return ls;
}

#endif
