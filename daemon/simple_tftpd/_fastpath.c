/* The compiled per-block path of a read transfer (optional: simple_tftpd.server falls back to
 * the pure-Python path when this module is not built).
 *
 * A ReadPump is the reader callback of one lockstep read transfer's socket. For every ACK
 * that moves the transfer on it sends the next DATA block straight from the content (memory,
 * or a pread read-ahead chunk) and returns without entering Python. Everything else goes to
 * the Python fallback with the datagram in the server's receive buffer: the final ACK,
 * errors, requests, garbage, strangers, and a read that fails. The pure state machine
 * (protocol/transfer.py ReadTransfer) stays the specification: the server pulls the pump's
 * position into it (ReadTransfer.resume) before it decides anything, and pushes it back after.
 *
 * The rules are ReadTransfer.on_ack's: a 16-bit ACK is mapped onto (acked, sent]; a stale or
 * duplicate ACK is ignored (never resend on one: Sorcerer's Apprentice); a send that would
 * block is dropped and the retransmit timer, kept in Python, covers it. The pump records
 * when it last made progress (CLOCK_MONOTONIC, the clock of the event loop) so the timer
 * knows the transfer's deadline.
 *
 * In single-port mode every transfer's ACKs arrive on the listening socket: a Listener reads
 * it, hands each ACK to the pump of its sender, and the rest to Python.
 *
 * Written against the Limited API of Python 3.11 (one abi3 build serves later versions).
 */
#define Py_LIMITED_API 0x030B0000
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* Datagrams handled per readiness callback, as in server.py (RECV_BATCH). */
#define RECV_BATCH 64
/* A file source is read this much at a time (at least one block), as READ_AHEAD_BYTES. */
#define READ_AHEAD_BYTES 8192
#define OP_DATA 3
#define OP_ACK 4

typedef struct {
    PyObject_HEAD
    int sock;      /* the transfer's socket (owned by Python) */
    int file;      /* file source read with pread, or -1: the content is in `content` */
    Py_buffer content;
    Py_buffer recv; /* the server's receive buffer: the fallback reads datagrams there */
    long long size, blksize, last_block;
    long long acked, sent;
    double progressed_at; /* CLOCK_MONOTONIC seconds of the last ACK that moved the transfer on */
    struct sockaddr_storage peer;
    socklen_t peer_len;
    PyObject *fallback; /* fallback(size, stranger) -> bool; NULL once closed */
    unsigned char *chunk;
    long long chunk_blocks, chunk_first, chunk_end, chunk_len;
} ReadPump;

static void pump_release(ReadPump *self)
{
    if (self->content.obj != NULL)
        PyBuffer_Release(&self->content);
    if (self->recv.obj != NULL)
        PyBuffer_Release(&self->recv);
    free(self->chunk);
    self->chunk = NULL;
    self->sock = -1;
    self->file = -1;
}

static int pump_clear(ReadPump *self)
{
    Py_CLEAR(self->fallback);
    return 0;
}

static int pump_traverse(ReadPump *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE((PyObject *)self));
    Py_VISIT(self->fallback);
    return 0;
}

static void pump_dealloc(ReadPump *self)
{
    PyTypeObject *type = Py_TYPE((PyObject *)self);
    PyObject_GC_UnTrack((PyObject *)self);
    pump_clear(self);
    pump_release(self);
    freefunc tp_free = (freefunc)PyType_GetSlot(type, Py_tp_free);
    tp_free(self);
    Py_DECREF(type);
}

static int peer_from(struct sockaddr_storage *out, socklen_t *len, int family, const char *host,
                     int port, unsigned int flowinfo, unsigned int scope_id)
{
    memset(out, 0, sizeof(*out));
    if (port < 0 || port > 65535)
        return -1;
    if (family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)out;
        in->sin_family = AF_INET;
        in->sin_port = htons((unsigned short)port);
        *len = sizeof(*in);
        return inet_pton(AF_INET, host, &in->sin_addr) == 1 ? 0 : -1;
    }
    if (family == AF_INET6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)out;
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((unsigned short)port);
        in6->sin6_flowinfo = htonl(flowinfo);
        in6->sin6_scope_id = scope_id;
        *len = sizeof(*in6);
        return inet_pton(AF_INET6, host, &in6->sin6_addr) == 1 ? 0 : -1;
    }
    return -1;
}

/* Whether a datagram came from the transfer's peer: the fields Python's address tuples hold
 * (host, port; for IPv6 also flowinfo and scope_id), so both paths agree on who is a stranger. */
static int is_peer(const ReadPump *self, const struct sockaddr_storage *from)
{
    if (from->ss_family != self->peer.ss_family)
        return 0;
    if (from->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)from;
        const struct sockaddr_in *b = (const struct sockaddr_in *)&self->peer;
        return a->sin_port == b->sin_port && a->sin_addr.s_addr == b->sin_addr.s_addr;
    }
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)from;
    const struct sockaddr_in6 *b = (const struct sockaddr_in6 *)&self->peer;
    return a->sin6_port == b->sin6_port && a->sin6_flowinfo == b->sin6_flowinfo &&
           a->sin6_scope_id == b->sin6_scope_id &&
           memcmp(&a->sin6_addr, &b->sin6_addr, sizeof(a->sin6_addr)) == 0;
}

/* The address tuple Python's socket module makes for a sockaddr (socketmodule.c makesockaddr). */
static PyObject *address_tuple(const struct sockaddr_storage *from)
{
    char host[INET6_ADDRSTRLEN];
    if (from->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)from;
        if (inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host)) == NULL)
            return PyErr_SetFromErrno(PyExc_OSError);
        return Py_BuildValue("(si)", host, (int)ntohs(a->sin_port));
    }
    if (from->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)from;
        if (inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host)) == NULL)
            return PyErr_SetFromErrno(PyExc_OSError);
        return Py_BuildValue("(siII)", host, (int)ntohs(a->sin6_port),
                             (unsigned int)ntohl(a->sin6_flowinfo),
                             (unsigned int)a->sin6_scope_id);
    }
    Py_RETURN_NONE;
}

static int pump_init(ReadPump *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"sock",      "family", "host",       "port",  "flowinfo",
                               "scope_id",  "content", "file",      "size",  "blksize",
                               "last_block", "acked", "sent",       "recv_buffer",
                               "fallback",  NULL};
    int sock, family, port, file;
    unsigned int flowinfo, scope_id;
    const char *host;
    PyObject *content, *recv_buffer, *fallback;
    long long size, blksize, last_block, acked, sent;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "$iisiIIOiLLLLLOO", keywords, &sock, &family,
                                     &host, &port, &flowinfo, &scope_id, &content, &file, &size,
                                     &blksize, &last_block, &acked, &sent, &recv_buffer,
                                     &fallback))
        return -1;
    if (self->fallback != NULL || self->recv.obj != NULL) {
        PyErr_SetString(PyExc_TypeError, "ReadPump is initialised once");
        return -1;
    }
    if (blksize < 8 || blksize > 65464 || size < 0 || last_block < 1 || acked < -1 ||
        sent < 0 || sent > last_block || acked > sent || sock < 0) {
        PyErr_SetString(PyExc_ValueError, "ReadPump: transfer state out of range");
        return -1;
    }
    if (!PyCallable_Check(fallback)) {
        PyErr_SetString(PyExc_TypeError, "ReadPump: fallback must be callable");
        return -1;
    }
    if (peer_from(&self->peer, &self->peer_len, family, host, port, flowinfo, scope_id) < 0) {
        PyErr_SetString(PyExc_ValueError, "ReadPump: not an IPv4/IPv6 peer address");
        return -1;
    }
    if (PyObject_GetBuffer(recv_buffer, &self->recv, PyBUF_WRITABLE) < 0)
        return -1;
    if (self->recv.len < 65536) {
        PyBuffer_Release(&self->recv);
        PyErr_SetString(PyExc_ValueError, "ReadPump: receive buffer below 64 KiB");
        return -1;
    }
    if (file < 0) {
        if (PyObject_GetBuffer(content, &self->content, PyBUF_SIMPLE) < 0)
            return -1;
        if (self->content.len < size) {
            PyErr_SetString(PyExc_ValueError, "ReadPump: content shorter than size");
            return -1;
        }
    } else {
        self->chunk_blocks = READ_AHEAD_BYTES / blksize > 0 ? READ_AHEAD_BYTES / blksize : 1;
        self->chunk = malloc((size_t)(self->chunk_blocks * blksize));
        if (self->chunk == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    self->sock = sock;
    self->file = file;
    self->size = size;
    self->blksize = blksize;
    self->last_block = last_block;
    self->acked = acked;
    self->sent = sent;
    self->chunk_first = self->chunk_end = 0;
    Py_INCREF(fallback);
    self->fallback = fallback;
    return 0;
}

/* Where block `number`'s payload is; -1 if the read-ahead read failed (errno set). */
static int block_payload(ReadPump *self, long long number, const unsigned char **payload,
                         size_t *length)
{
    long long blksize = self->blksize, available;
    if (self->file < 0) {
        long long offset = (number - 1) * blksize;
        available = self->size - offset;
        *payload = (const unsigned char *)self->content.buf + (available > 0 ? offset : 0);
    } else {
        if (!(self->chunk_first <= number && number < self->chunk_end)) {
            ssize_t got;
            do
                got = pread(self->file, self->chunk, (size_t)(self->chunk_blocks * blksize),
                            (off_t)((number - 1) * blksize));
            while (got < 0 && errno == EINTR);
            if (got < 0)
                return -1;
            self->chunk_first = number;
            self->chunk_end = number + self->chunk_blocks;
            self->chunk_len = got;
        }
        long long start = (number - self->chunk_first) * blksize;
        available = self->chunk_len - start;
        *payload = self->chunk + (available > 0 ? start : 0);
    }
    /* Past the end of the content the block is short or empty: the final block. */
    *length = (size_t)(available < 0 ? 0 : available > blksize ? blksize : available);
    return 0;
}

static void send_block(ReadPump *self, long long number, const unsigned char *payload,
                       size_t length)
{
    unsigned char header[4] = {0, OP_DATA, (unsigned char)((number >> 8) & 0xFF),
                               (unsigned char)(number & 0xFF)};
    struct iovec iov[2] = {{header, sizeof(header)}, {(void *)payload, length}};
    struct msghdr msg;
    memset(&msg, 0, sizeof(msg));
    msg.msg_name = &self->peer;
    msg.msg_namelen = self->peer_len;
    msg.msg_iov = iov;
    msg.msg_iovlen = length ? 2 : 1;
    ssize_t done;
    do
        done = sendmsg(self->sock, &msg, MSG_DONTWAIT);
    while (done < 0 && errno == EINTR);
    /* A send that fails (would block, or ICMP reported) is a lost datagram: the timer resends. */
}

static double monotonic_now(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + (double)now.tv_nsec * 1e-9;
}

/* Hand one datagram (in the receive buffer) to Python: 1 = stop reading, 0 = go on, -1 = error. */
/* fallback(size, address): 1 if it says stop reading, 0 if not, -1 if it raised. */
static int ask_python(PyObject *fallback, ssize_t size, PyObject *address)
{
    Py_INCREF(fallback); /* the call may drop its owner's reference */
    PyObject *stop = PyObject_CallFunction(fallback, "nO", (Py_ssize_t)size, address);
    Py_DECREF(fallback);
    if (stop == NULL)
        return -1;
    int truth = PyObject_IsTrue(stop);
    Py_DECREF(stop);
    return truth;
}

static int call_fallback(ReadPump *self, ssize_t size, const struct sockaddr_storage *from)
{
    PyObject *stranger;
    if (from == NULL) {
        stranger = Py_None;
        Py_INCREF(stranger);
    } else if ((stranger = address_tuple(from)) == NULL) {
        return -1;
    }
    int stop = ask_python(self->fallback, size, stranger);
    Py_DECREF(stranger);
    if (stop < 0)
        return -1;
    /* The fallback may have closed the transfer: then nothing more is read here. */
    return stop || self->fallback == NULL || self->sock < 0 ? 1 : 0;
}

enum { PYTHONS = -1, IGNORED = 0, ANSWERED = 1 };

/* A datagram from the peer: serve it if it is an ACK that moves the transfer on. PYTHONS:
 * not an ACK, the final ACK, or the next block could not be read. */
static int pump_serve(ReadPump *self, const unsigned char *datagram, ssize_t size)
{
    if (size < 4 || datagram[0] != 0 || datagram[1] != OP_ACK || self->fallback == NULL)
        return PYTHONS;
    long long wire = ((long long)datagram[2] << 8) | datagram[3];
    long long block = self->acked + ((wire - self->acked) & 0xFFFF);
    if (block > self->sent || block == self->acked)
        return IGNORED; /* stale or duplicate: the timer covers genuine loss */
    const unsigned char *payload;
    size_t length;
    if (block == self->last_block || block_payload(self, block + 1, &payload, &length) < 0)
        return PYTHONS;
    self->acked = block;
    self->sent = block + 1;
    self->progressed_at = monotonic_now();
    send_block(self, block + 1, payload, length);
    return ANSWERED;
}

/* Receive one datagram into `buffer`: its size, or -1 when nothing is queued. */
static ssize_t receive(int sock, Py_buffer *buffer, struct sockaddr_storage *from, int *again)
{
    socklen_t from_len = sizeof(*from);
    ssize_t size = recvfrom(sock, buffer->buf, (size_t)buffer->len, MSG_DONTWAIT,
                            (struct sockaddr *)from, &from_len);
    *again = size < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
    return size; /* other errors: EINTR, or an ICMP error reported on the socket */
}

/* The transfer's socket is readable: serve ACKs until one is answered or nothing is queued. */
static PyObject *pump_call(ReadPump *self, PyObject *args, PyObject *kwargs)
{
    PyObject *result = NULL;
    /* The fallback may drop the last other reference to this pump (closing the transfer). */
    Py_INCREF((PyObject *)self);
    for (int i = 0; i < RECV_BATCH && self->fallback != NULL && self->sock >= 0; i++) {
        struct sockaddr_storage from;
        int again;
        ssize_t size = receive(self->sock, &self->recv, &from, &again);
        if (size < 0) {
            if (again)
                break;
            continue;
        }
        int outcome;
        if (!is_peer(self, &from)) {
            outcome = call_fallback(self, size, &from);
        } else {
            int served = pump_serve(self, self->recv.buf, size);
            if (served == ANSWERED)
                break; /* the peer's next ACK cannot be here yet */
            if (served == IGNORED)
                continue;
            outcome = call_fallback(self, size, NULL);
        }
        if (outcome < 0)
            goto done;
        if (outcome > 0)
            break;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    Py_DECREF((PyObject *)self);
    return result;
}

static PyObject *pump_close(ReadPump *self, PyObject *unused)
{
    pump_clear(self);
    pump_release(self);
    Py_RETURN_NONE;
}

static PyObject *pump_get_closed(ReadPump *self, void *unused)
{
    return PyBool_FromLong(self->fallback == NULL);
}

static PyMethodDef pump_methods[] = {
    {"close", (PyCFunction)pump_close, METH_NOARGS,
     "Stop serving: drop the fallback and the buffers (the socket and file stay Python's)."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef pump_members[] = {
    {"acked", T_LONGLONG, offsetof(ReadPump, acked), 0, "highest block acknowledged (unwrapped)"},
    {"sent", T_LONGLONG, offsetof(ReadPump, sent), 0, "highest block sent (unwrapped)"},
    {"progressed_at", T_DOUBLE, offsetof(ReadPump, progressed_at), READONLY,
     "CLOCK_MONOTONIC time of the last ACK that moved the transfer on"},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef pump_getset[] = {
    {"closed", (getter)pump_get_closed, NULL, "True after close()", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot pump_slots[] = {
    {Py_tp_doc, "ReadPump(*, sock, family, host, port, flowinfo, scope_id, content, file, size, "
                "blksize, last_block, acked, sent, recv_buffer, fallback): the reader callback "
                "of a lockstep read transfer's socket."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, pump_init},
    {Py_tp_call, pump_call},
    {Py_tp_dealloc, pump_dealloc},
    {Py_tp_traverse, pump_traverse},
    {Py_tp_clear, pump_clear},
    {Py_tp_methods, pump_methods},
    {Py_tp_members, pump_members},
    {Py_tp_getset, pump_getset},
    {0, NULL},
};

static PyType_Spec pump_spec = {
    .name = "simple_tftpd._fastpath.ReadPump",
    .basicsize = sizeof(ReadPump),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = pump_slots,
};

/* The ReadPump type, for checking what the pumps dict holds before serving from it. */
static PyObject *pump_type;

/* The listening socket's reader in single-port mode: every transfer's ACKs arrive there, so
 * it finds the pump by the sender's address (the same tuple Python's recvfrom would give, so
 * one dict serves both) and leaves everything else to Python. */
typedef struct {
    PyObject_HEAD
    int sock;
    Py_buffer recv;
    PyObject *pumps;    /* dict: peer address tuple -> ReadPump */
    PyObject *sessions; /* dict: peer address tuple -> session; a lone one ends a batch early */
    PyObject *fallback; /* fallback(size, peer) -> bool: True stops reading; None once closed */
} Listener;

static int listener_clear(Listener *self)
{
    Py_CLEAR(self->pumps);
    Py_CLEAR(self->sessions);
    Py_CLEAR(self->fallback);
    return 0;
}

static int listener_traverse(Listener *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE((PyObject *)self));
    Py_VISIT(self->pumps);
    Py_VISIT(self->sessions);
    Py_VISIT(self->fallback);
    return 0;
}

static void listener_release(Listener *self)
{
    if (self->recv.obj != NULL)
        PyBuffer_Release(&self->recv);
    self->sock = -1;
}

static void listener_dealloc(Listener *self)
{
    PyTypeObject *type = Py_TYPE((PyObject *)self);
    PyObject_GC_UnTrack((PyObject *)self);
    listener_clear(self);
    listener_release(self);
    freefunc tp_free = (freefunc)PyType_GetSlot(type, Py_tp_free);
    tp_free(self);
    Py_DECREF(type);
}

static int listener_init(Listener *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"sock", "recv_buffer", "pumps", "sessions", "fallback", NULL};
    int sock;
    PyObject *recv_buffer, *pumps, *sessions, *fallback;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "$iOO!O!O", keywords, &sock, &recv_buffer,
                                     &PyDict_Type, &pumps, &PyDict_Type, &sessions, &fallback))
        return -1;
    if (self->fallback != NULL || self->recv.obj != NULL) {
        PyErr_SetString(PyExc_TypeError, "Listener is initialised once");
        return -1;
    }
    if (sock < 0 || !PyCallable_Check(fallback)) {
        PyErr_SetString(PyExc_ValueError, "Listener: needs a socket and a callable fallback");
        return -1;
    }
    if (PyObject_GetBuffer(recv_buffer, &self->recv, PyBUF_WRITABLE) < 0)
        return -1;
    if (self->recv.len < 65536) {
        PyBuffer_Release(&self->recv);
        PyErr_SetString(PyExc_ValueError, "Listener: receive buffer below 64 KiB");
        return -1;
    }
    self->sock = sock;
    Py_INCREF(pumps);
    self->pumps = pumps;
    Py_INCREF(sessions);
    self->sessions = sessions;
    Py_INCREF(fallback);
    self->fallback = fallback;
    return 0;
}

static PyObject *listener_call(Listener *self, PyObject *args, PyObject *kwargs)
{
    unsigned char *buffer = self->recv.buf;
    PyObject *result = NULL;
    Py_INCREF((PyObject *)self); /* as in pump_call */
    for (int i = 0; i < RECV_BATCH && self->fallback != NULL; i++) {
        struct sockaddr_storage from;
        int again;
        ssize_t size = receive(self->sock, &self->recv, &from, &again);
        if (size < 0) {
            if (again)
                break;
            continue;
        }
        PyObject *peer = address_tuple(&from);
        if (peer == NULL)
            goto done;
        if (size >= 4 && buffer[0] == 0 && buffer[1] == OP_ACK) {
            PyObject *pump = PyDict_GetItemWithError(self->pumps, peer); /* borrowed */
            if (pump == NULL && PyErr_Occurred()) {
                Py_DECREF(peer);
                goto done;
            }
            if (pump != NULL && Py_TYPE(pump) == (PyTypeObject *)pump_type) {
                int served = pump_serve((ReadPump *)pump, buffer, size);
                if (served != PYTHONS) {
                    Py_DECREF(peer);
                    if (served == ANSWERED && PyDict_Size(self->sessions) == 1)
                        break; /* the only peer was just answered: nothing else is queued */
                    continue;
                }
            }
        }
        int stop = ask_python(self->fallback, size, peer);
        Py_DECREF(peer);
        if (stop < 0)
            goto done;
        if (stop)
            break;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    Py_DECREF((PyObject *)self);
    return result;
}

static PyObject *listener_close(Listener *self, PyObject *unused)
{
    listener_clear(self);
    listener_release(self);
    Py_RETURN_NONE;
}

static PyMethodDef listener_methods[] = {
    {"close", (PyCFunction)listener_close, METH_NOARGS,
     "Stop serving: drop the dicts, the fallback and the buffer (the socket stays Python's)."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot listener_slots[] = {
    {Py_tp_doc, "Listener(*, sock, recv_buffer, pumps, sessions, fallback): the reader "
                "callback of the listening socket in single-port mode."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, listener_init},
    {Py_tp_call, listener_call},
    {Py_tp_dealloc, listener_dealloc},
    {Py_tp_traverse, listener_traverse},
    {Py_tp_clear, listener_clear},
    {Py_tp_methods, listener_methods},
    {0, NULL},
};

static PyType_Spec listener_spec = {
    .name = "simple_tftpd._fastpath.Listener",
    .basicsize = sizeof(Listener),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = listener_slots,
};

static int fastpath_exec(PyObject *module)
{
    if (pump_type == NULL && (pump_type = PyType_FromSpec(&pump_spec)) == NULL)
        return -1; /* kept for the life of the process: the Listener checks against it */
    if (PyModule_AddObjectRef(module, "ReadPump", pump_type) < 0)
        return -1;
    PyObject *listener = PyType_FromSpec(&listener_spec);
    if (listener == NULL)
        return -1;
    int failed = PyModule_AddObjectRef(module, "Listener", listener);
    Py_DECREF(listener);
    return failed;
}

static PyModuleDef_Slot fastpath_slots[] = {
    {Py_mod_exec, fastpath_exec},
    {0, NULL},
};

static struct PyModuleDef fastpath_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "simple_tftpd._fastpath",
    .m_doc = "The compiled per-block path of lockstep read transfers (see ReadPump).",
    .m_size = 0,
    .m_slots = fastpath_slots,
};

PyMODINIT_FUNC PyInit__fastpath(void)
{
    return PyModuleDef_Init(&fastpath_module);
}
