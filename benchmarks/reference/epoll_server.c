/* epoll-reference: a measuring stick, not a server to deploy.
 *
 * The same architecture as simple-tftpd's workers, in C: N forked workers share the port
 * with SO_REUSEPORT, each runs one epoll loop over many transfers, every transfer gets its
 * own unconnected UDP socket on an ephemeral port, lockstep reads of one block per ACK
 * (pread, no cache). It leaves out everything a real server needs (retransmit timers,
 * windowsize, writes, access control, limits, metrics, logging), so its CPU per block is a
 * floor: the gap between it and simple-tftpd is what the Python layer costs, and the gap
 * between it and tftpd-hpa is what the event-loop architecture itself gives or takes.
 *
 *   epoll_server PORT ROOT WORKERS        (listens on 127.0.0.1 only)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

enum { RRQ = 1, DATA = 3, ACK = 4, ERROR = 5, OACK = 6 };
enum { MAX_BLKSIZE = 65464, EVENTS = 64 };

struct transfer {
    int sock, fd, blksize;
    struct sockaddr_in peer;
    unsigned long sent, last; /* blocks from 1 (0: the OACK); last is the short final one */
};

static const char *root;
static unsigned char out[4 + MAX_BLKSIZE];

static int udp_socket(int port, int reuse_port) {
    int sock = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    if (sock < 0 || (reuse_port && setsockopt(sock, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one))
        || bind(sock, (struct sockaddr *)&addr, sizeof addr)) {
        perror("socket");
        if (sock >= 0) close(sock);
        return -1;
    }
    return sock;
}

static void send_to(int sock, const void *buf, size_t len, const struct sockaddr_in *peer) {
    sendto(sock, buf, len, 0, (const struct sockaddr *)peer, sizeof *peer);
}

static void send_block(struct transfer *t, unsigned long block) {
    ssize_t got = pread(t->fd, out + 4, t->blksize, (off_t)(block - 1) * t->blksize);
    out[0] = 0;
    out[1] = DATA;
    out[2] = (block >> 8) & 0xff;
    out[3] = block & 0xff;
    send_to(t->sock, out, 4 + (got > 0 ? got : 0), &t->peer);
}

static void send_error(int sock, const struct sockaddr_in *peer, int code, const char *text) {
    size_t len = strlen(text);
    unsigned char buf[4 + 128] = {0, ERROR, 0, (unsigned char)code};
    memcpy(buf + 4, text, len + 1);
    send_to(sock, buf, 4 + len + 1, peer);
}

/* A request on the shared port: open the file, make the transfer's socket, answer. */
static void start(int epoll, int listener, char *request, ssize_t size,
                  const struct sockaddr_in *peer) {
    char *end = request + size, *name = request + 2, path[4096];
    if (size < 4 || request[0] != 0 || request[1] != RRQ || end[-1] != 0) return;
    char *mode = name + strlen(name) + 1;
    if (mode >= end || strstr(name, "..")) {
        send_error(listener, peer, 2, "Access violation");
        return;
    }
    int blksize = 512, negotiated = 0;
    for (char *opt = mode + strlen(mode) + 1; opt < end;) {
        char *value = opt + strlen(opt) + 1;
        if (value >= end) break;
        if (!strcasecmp(opt, "blksize")) {
            int asked = atoi(value);
            if (asked >= 8) blksize = asked < MAX_BLKSIZE ? asked : MAX_BLKSIZE, negotiated = 1;
        }
        opt = value + strlen(value) + 1;
    }
    snprintf(path, sizeof path, "%s/%s", root, name);
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st)) {
        if (fd >= 0) close(fd);
        send_error(listener, peer, 1, "File not found");
        return;
    }
    struct transfer *t = calloc(1, sizeof *t);
    if (!t || (t->sock = udp_socket(0, 0)) < 0) {
        free(t);
        close(fd);
        return;
    }
    t->fd = fd;
    t->blksize = blksize;
    t->peer = *peer;
    t->last = (unsigned long)st.st_size / blksize + 1;
    struct epoll_event event = {.events = EPOLLIN, .data.ptr = t};
    epoll_ctl(epoll, EPOLL_CTL_ADD, t->sock, &event);
    if (negotiated) { /* OACK; the client's ACK 0 starts the data */
        int len = 2 + sprintf((char *)out + 2, "blksize") + 1;
        out[0] = 0;
        out[1] = OACK;
        len += sprintf((char *)out + len, "%d", blksize) + 1;
        send_to(t->sock, out, len, peer);
    } else {
        send_block(t, t->sent = 1);
    }
}

static void finish(int epoll, struct transfer *t) {
    epoll_ctl(epoll, EPOLL_CTL_DEL, t->sock, NULL);
    close(t->sock);
    close(t->fd);
    free(t);
}

/* The per-block path: one ACK in, the next block out. */
static void on_ack(int epoll, struct transfer *t) {
    unsigned char buf[512];
    struct sockaddr_in from;
    socklen_t from_len = sizeof from;
    ssize_t got = recvfrom(t->sock, buf, sizeof buf, 0, (struct sockaddr *)&from, &from_len);
    if (got < 4 || buf[1] != ACK || from.sin_port != t->peer.sin_port
        || from.sin_addr.s_addr != t->peer.sin_addr.s_addr)
        return;
    unsigned wire = (buf[2] << 8) | buf[3];
    if (wire != (t->sent & 0xffff)) return; /* stale or duplicate: never resend on it */
    if (t->sent == t->last) {
        finish(epoll, t);
        return;
    }
    send_block(t, ++t->sent);
}

static void serve(int listener) {
    int epoll = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event event = {.events = EPOLLIN, .data.ptr = NULL}, ready[EVENTS];
    epoll_ctl(epoll, EPOLL_CTL_ADD, listener, &event);
    for (;;) {
        int count = epoll_wait(epoll, ready, EVENTS, -1);
        for (int i = 0; i < count; i++) {
            if (ready[i].data.ptr) {
                on_ack(epoll, ready[i].data.ptr);
                continue;
            }
            char request[1024];
            struct sockaddr_in peer;
            for (;;) {
                socklen_t peer_len = sizeof peer;
                ssize_t got = recvfrom(listener, request, sizeof request - 1, 0,
                                       (struct sockaddr *)&peer, &peer_len);
                if (got < 0) break;
                request[got] = 0;
                start(epoll, listener, request, got, &peer);
            }
        }
    }
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s PORT ROOT WORKERS\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]), workers = atoi(argv[3]);
    root = argv[2];
    for (int w = 0; w < workers; w++) {
        int listener = udp_socket(port, 1);
        if (listener < 0) return 1;
        pid_t pid = fork();
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL); /* stopping the parent stops every worker */
            serve(listener);
            _exit(0);
        }
        close(listener);
    }
    while (wait(NULL) > 0) {
    }
    return 0;
}
