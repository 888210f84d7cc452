/* The io_uring counterpart of the harness's relay target (harness/relay.rs), kept as the record
 * of one experiment (docs/benchmarks.md, "The floor: a relay that knows no HTTP"): would
 * batching every socket's reads and writes into one io_uring_enter per loop take a proxy's
 * h1 cost below epoll's? On this machine's kernel (6.18) it did not: with a recv per message it
 * cost 1.08-1.12x the epoll relay's CPU per request, with multishot recv 1.02x (interleaved
 * runs). Not part of the harness or of the tests.
 *
 *   apt-get install liburing-dev
 *   gcc -O2 -o /tmp/uring_relay benches/harness/experiments/uring_relay.c -luring
 *   taskset -c 0 /tmp/uring_relay LISTEN_PORT UPSTREAM_PORT [SETUP_FLAGS [multishot]]
 *
 * SETUP_FLAGS defaults to SINGLE_ISSUER|DEFER_TASKRUN (0x3000), the cheapest here; 0x1100 is
 * SINGLE_ISSUER|COOP_TASKRUN, 0 the default ring (dearer still: about 1.45x the epoll relay, in
 * one run). `multishot` arms one multishot recv per socket, reading into a ring of provided
 * buffers, instead of a recv per message.
 *
 * One thread, one ring; each accepted client gets its own upstream connection. Without
 * `multishot`, a recv completion submits a send to the peer linked to the next recv on the
 * same socket; with it, a send whose completion gives the buffer back. Either way one
 * io_uring_enter carries a whole batch. Small messages only: a short send ends the pair. */
#define _GNU_SOURCE
#include <errno.h>
#include <liburing.h>
#include <string.h>
#include <unistd.h>

#include "relay_common.h"

#ifndef IORING_SETUP_SINGLE_ISSUER
#define IORING_SETUP_SINGLE_ISSUER (1U << 12)
#endif
#ifndef IORING_SETUP_DEFER_TASKRUN
#define IORING_SETUP_DEFER_TASKRUN (1U << 13)
#endif

#define MAXFD 4096
#define BUFSZ 16384
#define NBUFS 1024 /* the provided-buffer ring of the multishot mode */
enum { OP_ACCEPT = 1, OP_RECV = 2, OP_SEND = 3, OP_MRECV = 4, OP_MSEND = 5 };
static int multishot;
static struct io_uring_buf_ring *br;
static char *pool;
static int peer[MAXFD];
static char *bufs[MAXFD];
static struct io_uring ring;

static struct io_uring_sqe *sqe(void) {
    struct io_uring_sqe *s = io_uring_get_sqe(&ring);
    if (!s) { io_uring_submit(&ring); s = io_uring_get_sqe(&ring); }
    return s;
}
static void arm_recv(int fd) {
    struct io_uring_sqe *s = sqe();
    if (multishot) {
        /* one request reads the socket for as long as it lives, into buffers from the ring */
        io_uring_prep_recv_multishot(s, fd, NULL, 0, 0);
        s->flags |= IOSQE_BUFFER_SELECT;
        s->buf_group = 0;
        io_uring_sqe_set_data64(s, ((__u64)OP_MRECV << 32) | fd);
        return;
    }
    io_uring_prep_recv(s, fd, bufs[fd], BUFSZ, 0);
    io_uring_sqe_set_data64(s, ((__u64)OP_RECV << 32) | fd);
}
static void give_back(int bid) {
    io_uring_buf_ring_add(br, pool + (size_t)bid * BUFSZ, BUFSZ, bid, io_uring_buf_ring_mask(NBUFS), 0);
    io_uring_buf_ring_advance(br, 1);
}
static void arm_accept(int ls) {
    struct io_uring_sqe *s = sqe();
    io_uring_prep_accept(s, ls, NULL, NULL, 0);
    io_uring_sqe_set_data64(s, ((__u64)OP_ACCEPT << 32) | ls);
}
int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s LISTEN_PORT UPSTREAM_PORT [SETUP_FLAGS [multishot]]\n", argv[0]);
        return 2;
    }
    int lport = atoi(argv[1]), uport = atoi(argv[2]), one = 1;
    unsigned flags = argc > 3 ? strtoul(argv[3], NULL, 0)
                              : IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
    int ls = listen_on(lport, 0);
    int e = io_uring_queue_init(4096, &ring, flags);
    if (e < 0) { fprintf(stderr, "io_uring_queue_init: %s\n", strerror(-e)); return 1; }
    multishot = argc > 4 && strcmp(argv[4], "multishot") == 0;
    if (multishot) {
        if (posix_memalign((void **)&br, 4096, NBUFS * sizeof(struct io_uring_buf))) return 1;
        io_uring_buf_ring_init(br);
        struct io_uring_buf_reg reg = {.ring_addr = (unsigned long)br, .ring_entries = NBUFS, .bgid = 0};
        if ((e = io_uring_register_buf_ring(&ring, &reg, 0)) < 0) {
            fprintf(stderr, "io_uring_register_buf_ring: %s\n", strerror(-e)); return 1;
        }
        pool = malloc((size_t)NBUFS * BUFSZ);
        for (int i = 0; i < NBUFS; i++) give_back(i);
    }
    arm_accept(ls);
    for (;;) {
        io_uring_submit_and_wait(&ring, 1);
        struct io_uring_cqe *cqe;
        unsigned head, seen = 0;
        io_uring_for_each_cqe(&ring, head, cqe) {
            seen++;
            int op = cqe->user_data >> 32, fd = (int)(cqe->user_data & 0xffffffff), res = cqe->res;
            if (op == OP_ACCEPT) {
                if (res >= 0 && res < MAXFD) {
                    setsockopt(res, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    int u = tcp_to(uport);
                    peer[res] = u; peer[u] = res;
                    if (!bufs[res]) bufs[res] = malloc(BUFSZ);
                    if (!bufs[u]) bufs[u] = malloc(BUFSZ);
                    arm_recv(res); arm_recv(u);
                }
                arm_accept(ls);
            } else if (op == OP_RECV) {
                if (res <= 0) { close(fd); close(peer[fd]); continue; }
                /* send to the peer, then (linked) read this socket again into the same buffer */
                struct io_uring_sqe *s = sqe();
                io_uring_prep_send(s, peer[fd], bufs[fd], res, MSG_NOSIGNAL);
                io_uring_sqe_set_data64(s, ((__u64)OP_SEND << 32) | fd);
                s->flags |= IOSQE_IO_LINK | IOSQE_CQE_SKIP_SUCCESS;
                arm_recv(fd);
            } else if (op == OP_MRECV) {
                if (res <= 0) {
                    if (res == -ENOBUFS) { arm_recv(fd); continue; }
                    close(fd); close(peer[fd]); continue;
                }
                int bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
                struct io_uring_sqe *s = sqe();
                io_uring_prep_send(s, peer[fd], pool + (size_t)bid * BUFSZ, res, MSG_NOSIGNAL);
                io_uring_sqe_set_data64(s, ((__u64)OP_MSEND << 32) | bid);
                if (!(cqe->flags & IORING_CQE_F_MORE)) arm_recv(fd);
            } else if (op == OP_MSEND) {
                give_back(fd); /* here the low half is the buffer's id */
            } else if (op == OP_SEND) {
                /* only failures post (CQE_SKIP_SUCCESS); the linked recv is cancelled */
                if (res < 0 && res != -ECANCELED) { close(fd); close(peer[fd]); }
            }
        }
        io_uring_cq_advance(&ring, seen);
    }
}
