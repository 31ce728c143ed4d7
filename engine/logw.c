#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <uv.h>
#include "common.h"
#include "logw.h"

/* A writer waiting for an output to take bytes polls this often, to notice a stop. */
#define POLL_MS 100
/* A write made by the calling thread (no writer running) gives up after this long on an
 * output that does not take bytes: start-up must not hang on a FIFO nobody reads. */
#define SYNC_WAIT_MS 1000

struct lp_logsink_s {
    _Atomic unsigned refs;
    lp_logout_kind_t kind;
    int fd;
    int owns_fd;  /* 0 for stdout and stderr */
    int nonblock; /* fd is O_NONBLOCK (FIFOs, sockets): the writer polls instead of blocking */
    int facility, severity;
    long pid;
    char *path; /* owned: the unix socket path, to reconnect after the receiver restarts */
    char host[256], app[49], msgid[33];
};

/* The writer, one per process. `lock` guards the queue and the flags; it is never held
 * across a system call, so a worker that submits waits at most for a pointer push. */
static struct {
    uv_mutex_t lock;
    uv_cond_t cond;         /* the writer waits for work; lp_logw_stop waits for `done` */
    lp_logchunk_t *head;    /* owned: chunks to write, oldest first */
    lp_logchunk_t *tail;    /* borrowed: the last of them */
    size_t queued;          /* bytes handed over and not yet written */
    size_t max_queued;      /* the bound: beyond it chunks are dropped */
    int running;            /* the thread runs: submissions queue */
    int stop;               /* asked to write what is queued and end */
    int done;               /* the thread ended its loop */
    int abandoned;          /* it did not end in time (stuck on an output): later lines drop */
    uint64_t stop_deadline; /* uv_hrtime ns: past it, an output that does not take bytes is
                               given up */
    uv_thread_t thread;
} W;

static _Atomic uint64_t dropped;

uint64_t lp_logw_lines_dropped(void)
{
    return atomic_load_explicit(&dropped, memory_order_relaxed);
}

void lp_logw_count_dropped(uint64_t n)
{
    atomic_fetch_add_explicit(&dropped, n, memory_order_relaxed);
}

/* ---------------------------------------------------------------------------- syslog */

/* Copies s as an RFC 5424 header field: PRINTUSASCII only, at most max bytes, "-" when
 * empty. */
static size_t field(char *out, const char *s, size_t max)
{
    size_t n = 0;
    for (; s && s[n] && n < max; n++) {
        unsigned char c = (unsigned char)s[n];
        out[n] = c >= 33 && c <= 126 ? (char)c : '_';
    }
    if (!n)
        out[n++] = '-';
    return n;
}

size_t lp__syslog_header(char *out, int pri, const struct timespec *ts, const char *host,
                         const char *app, long pid, const char *msgid)
{
    struct tm tm;
    gmtime_r(&ts->tv_sec, &tm);
    int n = snprintf(out, 64, "<%d>1 %04d-%02d-%02dT%02d:%02d:%02d.%03ldZ ", pri, tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts->tv_nsec / 1000000);
    size_t o = n > 0 ? (size_t)n : 0;
    o += field(out + o, host, 255);
    out[o++] = ' ';
    o += field(out + o, app, 48);
    out[o++] = ' ';
    char procid[24];
    snprintf(procid, sizeof(procid), "%ld", pid);
    o += field(out + o, procid, 128);
    out[o++] = ' ';
    o += field(out + o, msgid, 32);
    memcpy(out + o, " - ", 3); /* no structured data, then the message */
    return o + 3;
}

size_t lp_logsink_syslog_header(const lp_logsink_t *s, int severity, char *out)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return lp__syslog_header(out, s->facility * 8 + severity, &ts, s->host, s->app, s->pid,
                             s->msgid);
}

int lp_logsink_is_syslog(const lp_logsink_t *s)
{
    return s->kind == LP_LOGOUT_SYSLOG_UDP || s->kind == LP_LOGOUT_SYSLOG_UNIX;
}

/* ---------------------------------------------------------------------------- opening */

static int open_udp(lp_logsink_t *s, const char *target, char *err, size_t errlen)
{
    /* "host:port" or "[v6]:port" */
    char host[256];
    const char *colon = strrchr(target, ':');
    const char *h = target;
    size_t hlen = colon ? (size_t)(colon - target) : 0;
    if (hlen && h[0] == '[' && h[hlen - 1] == ']') {
        h++;
        hlen -= 2;
    }
    if (!colon || !hlen || hlen >= sizeof(host) || !colon[1]) {
        snprintf(err, errlen, "syslog %s: expected host:port", target);
        return LP_ECONFIG;
    }
    memcpy(host, h, hlen);
    host[hlen] = 0;
    struct addrinfo hints = {.ai_socktype = SOCK_DGRAM}, *ai = NULL;
    int rc = getaddrinfo(host, colon + 1, &hints, &ai);
    if (rc || !ai) {
        snprintf(err, errlen, "syslog %s: %s", target, gai_strerror(rc));
        return LP_ECONFIG;
    }
    s->fd = socket(ai->ai_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->fd < 0 || connect(s->fd, ai->ai_addr, ai->ai_addrlen) < 0) {
        snprintf(err, errlen, "syslog %s: %s", target, strerror(errno));
        freeaddrinfo(ai);
        return LP_EIO;
    }
    freeaddrinfo(ai);
    return 0;
}

static int connect_unix(lp_logsink_t *s)
{
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    if (strlen(s->path) >= sizeof(sun.sun_path)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    strcpy(sun.sun_path, s->path);
    return connect(s->fd, (struct sockaddr *)&sun, sizeof(sun));
}

lp_logsink_t *lp_logsink_open(const lp_log_output_t *o, const char *msgid, char *err, size_t errlen)
{
    lp_logsink_t *s = calloc(1, sizeof(*s));
    if (!s) {
        snprintf(err, errlen, "log: out of memory");
        return NULL;
    }
    atomic_init(&s->refs, 1);
    s->kind = o->kind;
    s->fd = -1;
    s->owns_fd = 1;
    s->facility = o->facility;
    s->severity = o->severity;
    s->pid = (long)getpid();
    if (o->hostname)
        snprintf(s->host, sizeof(s->host), "%s", o->hostname);
    else if (gethostname(s->host, sizeof(s->host) - 1) < 0)
        s->host[0] = 0;
    snprintf(s->app, sizeof(s->app), "%s", o->app_name ? o->app_name : "luaproxy");
    snprintf(s->msgid, sizeof(s->msgid), "%s", msgid ? msgid : "");
    int rc = 0;
    switch (o->kind) {
    case LP_LOGOUT_STDOUT:
    case LP_LOGOUT_STDERR:
        s->fd = o->kind == LP_LOGOUT_STDOUT ? STDOUT_FILENO : STDERR_FILENO;
        s->owns_fd = 0; /* shared with the shell: its blocking mode is not ours to change */
        break;
    case LP_LOGOUT_FILE: {
        /* O_NONBLOCK: a FIFO (or a character device) must not block the writer for good;
         * for a regular file it changes nothing. A FIFO nobody opened for reading fails
         * with ENXIO rather than blocking the start. */
        s->fd = open(o->target, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NONBLOCK, 0644);
        if (s->fd < 0) {
            snprintf(err, errlen, "%s: %s", o->target,
                     errno == ENXIO ? "a FIFO with no reader" : strerror(errno));
            rc = LP_EIO;
            break;
        }
        struct stat st;
        s->nonblock = fstat(s->fd, &st) == 0 && !S_ISREG(st.st_mode);
        break;
    }
    case LP_LOGOUT_SYSLOG_UDP:
        s->nonblock = 1;
        rc = open_udp(s, o->target, err, errlen);
        break;
    case LP_LOGOUT_SYSLOG_UNIX:
        s->nonblock = 1;
        s->path = strdup(o->target);
        s->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (!s->path || s->fd < 0 || connect_unix(s) < 0) {
            snprintf(err, errlen, "syslog %s: %s", o->target, strerror(errno));
            rc = LP_EIO;
        }
        break;
    }
    if (rc) {
        lp_logsink_unref(s);
        return NULL;
    }
    return s;
}

lp_logsink_t *lp_logsink_ref(lp_logsink_t *s)
{
    if (s)
        atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
    return s;
}

void lp_logsink_unref(lp_logsink_t *s)
{
    if (!s || atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1)
        return;
    if (s->owns_fd && s->fd >= 0)
        close(s->fd);
    free(s->path);
    free(s);
}

/* ---------------------------------------------------------------------------- chunks */

/* Chunks of the usual size (LP_LOGCHUNK_SIZE) the writer wrote, kept for the next ones: a
 * worker would otherwise get fresh pages (page faults) for most chunks, as each is freed on
 * another thread. Guarded by W.lock. */
#define FREE_CHUNKS_MAX 64
static lp_logchunk_t *free_chunks; /* owned list (next) */
static unsigned nfree_chunks;

static void init_lock(void);
static uv_once_t init_once = UV_ONCE_INIT;

lp_logchunk_t *lp_logchunk_new(lp_logsink_t *sink, size_t cap)
{
    lp_logchunk_t *c = NULL;
    if (cap == LP_LOGCHUNK_SIZE) {
        uv_once(&init_once, init_lock);
        uv_mutex_lock(&W.lock);
        if ((c = free_chunks)) {
            free_chunks = c->next;
            nfree_chunks--;
        }
        uv_mutex_unlock(&W.lock);
    }
    if (!c && !(c = malloc(sizeof(*c) + cap)))
        return NULL;
    c->next = NULL;
    c->sink = lp_logsink_ref(sink);
    c->len = 0;
    c->cap = cap;
    c->nlines = 0;
    c->born_ms = 0;
    return c;
}

void lp_logchunk_free(lp_logchunk_t *c)
{
    if (!c)
        return;
    lp_logsink_unref(c->sink);
    c->sink = NULL;
    if (c->cap == LP_LOGCHUNK_SIZE) {
        uv_once(&init_once, init_lock);
        uv_mutex_lock(&W.lock);
        if (nfree_chunks < FREE_CHUNKS_MAX) {
            c->next = free_chunks;
            free_chunks = c;
            nfree_chunks++;
            c = NULL;
        }
        uv_mutex_unlock(&W.lock);
    }
    free(c);
}

/* ---------------------------------------------------------------------------- writing */

/* Waits until fd takes bytes. 0, or -1 when it is time to give up: the writer is stopping
 * and its deadline passed, or (sync) the caller waited SYNC_WAIT_MS. */
static int wait_writable(int fd, int sync)
{
    uint64_t start = uv_hrtime();
    for (;;) {
        /* Checked before waiting too: once given up, the rest of the queue goes at once. */
        uv_mutex_lock(&W.lock);
        int gave_up = W.stop && uv_hrtime() > W.stop_deadline;
        uv_mutex_unlock(&W.lock);
        if (gave_up)
            return -1;
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        int r = poll(&p, 1, POLL_MS);
        if (r > 0)
            return (p.revents & (POLLERR | POLLNVAL)) && !(p.revents & POLLOUT) ? -1 : 0;
        if (r < 0 && errno != EINTR)
            return -1;
        uint64_t now = uv_hrtime();
        if (sync && now - start > (uint64_t)SYNC_WAIT_MS * 1000000u)
            return -1;
        uv_mutex_lock(&W.lock);
        int give_up = W.stop && now > W.stop_deadline;
        uv_mutex_unlock(&W.lock);
        if (give_up)
            return -1;
    }
}

static uint32_t count_lines(const char *p, size_t n, char sep)
{
    uint32_t k = 0;
    const char *end = p + n;
    while (p < end && (p = memchr(p, sep, (size_t)(end - p)))) {
        k++;
        p++;
    }
    return k;
}

/* Lines of a file or stream: written whole; what an output refuses is counted dropped. */
static void write_stream(lp_logsink_t *s, const char *data, size_t len, int sync)
{
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(s->fd, data + off, len - off);
        if (w > 0) {
            off += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN && s->nonblock && wait_writable(s->fd, sync) == 0)
            continue;
        break; /* a log that cannot be written must not stop the proxy */
    }
    if (off < len) {
        /* A line cut by the failure is lost too: count from the start of that line. */
        lp_logw_count_dropped(count_lines(data + off, len - off, '\n'));
    }
}

/* Records of a syslog output, NUL-terminated: one datagram each. */
static void write_dgrams(lp_logsink_t *s, const char *data, size_t len, int sync)
{
    const char *p = data, *end = data + len;
    while (p < end) {
        const char *nul = memchr(p, 0, (size_t)(end - p));
        size_t n = nul ? (size_t)(nul - p) : (size_t)(end - p);
        int ok = 0;
        for (int attempt = 0; attempt < 3 && !ok; attempt++) {
            if (send(s->fd, p, n, MSG_NOSIGNAL) >= 0) {
                ok = 1;
            } else if (errno == EINTR) {
                attempt--;
            } else if (errno == EAGAIN) {
                if (wait_writable(s->fd, sync))
                    break;
                attempt--;
            } else if (errno == ECONNREFUSED || errno == ENOTCONN) {
                /* UDP: an earlier datagram's ICMP error, reported now; unix: the receiver
                 * restarted (syslogd rotating /dev/log): connect again and retry. */
                if (s->kind == LP_LOGOUT_SYSLOG_UNIX)
                    connect_unix(s);
            } else {
                break; /* EMSGSIZE and the like: this record cannot go */
            }
        }
        if (!ok)
            lp_logw_count_dropped(1);
        p += n + 1;
    }
}

static void write_chunk(lp_logchunk_t *c, int sync)
{
    if (!c->len)
        return;
    if (lp_logsink_is_syslog(c->sink))
        write_dgrams(c->sink, c->data, c->len, sync);
    else
        write_stream(c->sink, c->data, c->len, sync);
}

static void writer_main(void *arg)
{
    (void)arg;
    prctl(PR_SET_NAME, "lp-logwriter", 0, 0, 0);
    uv_mutex_lock(&W.lock);
    for (;;) {
        while (!W.head && !W.stop)
            uv_cond_wait(&W.cond, &W.lock);
        if (!W.head)
            break;
        lp_logchunk_t *list = W.head;
        W.head = W.tail = NULL;
        uv_mutex_unlock(&W.lock);
        while (list) {
            lp_logchunk_t *c = list;
            list = c->next;
            size_t len = c->len;
            write_chunk(c, 0);
            lp_logchunk_free(c);
            uv_mutex_lock(&W.lock);
            W.queued -= len;
            uv_mutex_unlock(&W.lock);
        }
        uv_mutex_lock(&W.lock);
    }
    W.done = 1;
    uv_cond_broadcast(&W.cond);
    uv_mutex_unlock(&W.lock);
}

static void init_lock(void)
{
    uv_mutex_init(&W.lock);
    uv_cond_init(&W.cond);
}

void lp_logw_write_now(lp_logchunk_t *c)
{
    uv_once(&init_once, init_lock);
    write_chunk(c, 1);
    lp_logchunk_free(c);
}

int lp_logw_submit(lp_logchunk_t *c)
{
    uv_once(&init_once, init_lock);
    uv_mutex_lock(&W.lock);
    if (!W.running) {
        int abandoned = W.abandoned;
        uv_mutex_unlock(&W.lock);
        if (abandoned) {
            lp_logw_count_dropped(c->nlines);
            return LP_EIO;
        }
        write_chunk(c, 1);
        lp_logchunk_free(c);
        return 0;
    }
    if (W.queued + c->len > W.max_queued) {
        uv_mutex_unlock(&W.lock);
        lp_logw_count_dropped(c->nlines);
        return LP_ELIMIT;
    }
    c->next = NULL;
    if (W.tail)
        W.tail->next = c;
    else
        W.head = c;
    W.tail = c;
    W.queued += c->len;
    uv_cond_signal(&W.cond);
    uv_mutex_unlock(&W.lock);
    return 0;
}

int lp_logw_start(size_t max_bytes)
{
    uv_once(&init_once, init_lock);
    uv_mutex_lock(&W.lock);
    int rc = 0;
    if (!W.running) {
        W.max_queued = max_bytes;
        W.stop = W.done = W.abandoned = 0;
        if (uv_thread_create(&W.thread, writer_main, NULL))
            rc = LP_EIO;
        else
            W.running = 1;
    }
    uv_mutex_unlock(&W.lock);
    return rc;
}

void lp_logw_set_limit(size_t max_bytes)
{
    uv_once(&init_once, init_lock);
    uv_mutex_lock(&W.lock);
    W.max_queued = max_bytes;
    uv_mutex_unlock(&W.lock);
}

int lp_logw_running(void)
{
    uv_once(&init_once, init_lock);
    uv_mutex_lock(&W.lock);
    int r = W.running;
    uv_mutex_unlock(&W.lock);
    return r;
}

void lp_logw_stop(unsigned timeout_ms)
{
    uv_once(&init_once, init_lock);
    uv_mutex_lock(&W.lock);
    if (!W.running) {
        uv_mutex_unlock(&W.lock);
        return;
    }
    W.stop = 1;
    W.stop_deadline = uv_hrtime() + (uint64_t)timeout_ms * 1000000u;
    uv_cond_broadcast(&W.cond);
    /* The writer gives up on a stuck output at the deadline (POLL_MS later at most); a
     * blocking write to stdout it cannot interrupt: then it is left behind. */
    uint64_t until = W.stop_deadline + 2ull * POLL_MS * 1000000u;
    while (!W.done) {
        uint64_t now = uv_hrtime();
        if (now >= until || uv_cond_timedwait(&W.cond, &W.lock, until - now) == UV_ETIMEDOUT)
            break;
    }
    int done = W.done;
    W.running = 0;
    W.abandoned = !done;
    uv_mutex_unlock(&W.lock);
    if (done)
        uv_thread_join(&W.thread);
}
