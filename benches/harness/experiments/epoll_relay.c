/* The harness's relay target (harness/relay.rs) written in C on bare epoll, kept as the record
 * of one check (docs/benchmarks.md, "The floor: a relay that knows no HTTP"): mio and Rust's
 * std add nothing measurable to the floor. Interleaved with relay.rs it cost 1.01-1.02x its
 * CPU per request. Not part of the harness or of the tests.
 *
 *   gcc -O2 -o /tmp/epoll_relay benches/harness/experiments/epoll_relay.c
 *   taskset -c 0 /tmp/epoll_relay LISTEN_PORT UPSTREAM_PORT
 *
 * One thread, level-triggered epoll; each accepted client gets its own upstream connection;
 * bytes are relayed as they come, no parsing. Small messages only: a full send buffer is
 * retried at once. */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "relay_common.h"

#define MAXFD 65536
static int peer[MAXFD];
static char buf[65536];

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s LISTEN_PORT UPSTREAM_PORT\n", argv[0]);
        return 2;
    }
    int lport = atoi(argv[1]), uport = atoi(argv[2]), one = 1;
    int ls = listen_on(lport, SOCK_NONBLOCK);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls}, evs[512];
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    for (;;) {
        int n = epoll_wait(ep, evs, 512, -1);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == ls) {
                int c;
                while ((c = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    int u = tcp_to(uport);
                    peer[c] = u; peer[u] = c;
                    ev.events = EPOLLIN; ev.data.fd = c; epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
                    ev.data.fd = u; epoll_ctl(ep, EPOLL_CTL_ADD, u, &ev);
                }
                continue;
            }
            ssize_t r = recv(fd, buf, sizeof buf, 0);
            if (r <= 0) {
                if (r < 0 && errno == EAGAIN) continue;
                int p = peer[fd]; close(fd); close(p); continue;
            }
            /* responses and requests are small: a blocking-style send loop is enough here */
            for (ssize_t off = 0; off < r;) {
                ssize_t w = send(peer[fd], buf + off, r - off, MSG_NOSIGNAL);
                if (w < 0) { if (errno == EAGAIN) continue; break; }
                off += w;
            }
        }
    }
}
