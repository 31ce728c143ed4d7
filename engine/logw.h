/* Log outputs and the log writer.
 *
 * An output (a "sink") is a file, stdout, stderr, or syslog (RFC 5424 datagrams over UDP to
 * host:port, or to a unix datagram socket such as /dev/log). Lines are gathered in chunks by
 * whoever makes them (a worker's access log, the error log) and handed to one writer thread
 * per process, which does the write(2)/send(2) calls. The hand-over is a pointer pushed on a
 * queue under a mutex that is never held across a system call, so a worker's loop never
 * waits on a slow disk, a full pipe or a stalled syslog receiver. The queue is bounded in
 * bytes: a chunk that would pass the bound is dropped and its lines counted
 * (lp_logw_lines_dropped), never waited for.
 *
 * Why one thread per process rather than one per worker or libuv's threadpool: a single
 * writer makes every write to a sink come from one thread, so lines from different workers
 * never interleave even through a pipe (where the kernel keeps writes whole only up to
 * PIPE_BUF); it costs one thread whatever the worker count; and libuv's threadpool is
 * shared with DNS lookups and file work, where a stalled log write would hold a pool thread
 * (four by default) and delay name resolution for every worker. */
#ifndef LP_LOGW_H
#define LP_LOGW_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

typedef enum {
    LP_LOGOUT_FILE = 0,
    LP_LOGOUT_STDOUT,
    LP_LOGOUT_STDERR,
    LP_LOGOUT_SYSLOG_UDP,  /* RFC 5424 over UDP (RFC 5426): one line per datagram */
    LP_LOGOUT_SYSLOG_UNIX, /* RFC 5424 to a unix datagram socket (/dev/log) */
} lp_logout_kind_t;

/* Where a log goes (config: log.access, log.error; docs/access-log.md). */
typedef struct {
    lp_logout_kind_t kind;
    char *target;   /* owned: the file path, the socket path, or "host:port"; NULL: std streams */
    int facility;   /* syslog facility, 0-23 (local0 = 16) */
    int severity;   /* syslog severity of access lines, 0-7 (the error log's follows the level) */
    char *app_name; /* owned; NULL: "luaproxy" */
    char *hostname; /* owned; NULL: the machine's name (gethostname) */
} lp_log_output_t;

/* An open output, shared by reference: the workers' access logs and every chunk queued for
 * it hold one. Closed (its descriptor) when the last reference goes, on whichever thread
 * that is; that is why a reopen (SIGUSR1) lets lines made before it go to the old file. */
typedef struct lp_logsink_s lp_logsink_t;

/* Room for a syslog header (PRI, version, timestamp, host, app, procid, msgid, SD). */
#define LP_SYSLOG_HEADER_MAX 512

lp_logsink_t *lp_logsink_open(const lp_log_output_t *o, const char *msgid, char *err,
                              size_t errlen);
lp_logsink_t *lp_logsink_ref(lp_logsink_t *s);
void lp_logsink_unref(lp_logsink_t *s);
/* Syslog sinks take records (a header, then the message, NUL-terminated) instead of lines. */
int lp_logsink_is_syslog(const lp_logsink_t *s);
/* The RFC 5424 header of a record made now, with the sink's names; returns its length. */
size_t lp_logsink_syslog_header(const lp_logsink_t *s, int severity, char *out);

/* Lines (or records) for one sink, made by one thread, then handed over. */
typedef struct lp_logchunk_s {
    struct lp_logchunk_s *next; /* the writer's queue */
    lp_logsink_t *sink;         /* reference */
    size_t len, cap;
    uint32_t nlines;
    uint64_t born_ms; /* uv_now of the first line (the maker's flush interval) */
    char data[];
} lp_logchunk_t;

/* The usual chunk size: such chunks are recycled once written. */
#define LP_LOGCHUNK_SIZE (32 * 1024)
lp_logchunk_t *lp_logchunk_new(lp_logsink_t *sink, size_t cap);
void lp_logchunk_free(lp_logchunk_t *c);

/* Hands c over: 0 when queued (the writer owns it now), or a negative LP_E* code when it was
 * dropped (the queue is full: its lines are counted as dropped; c stays the caller's, who may
 * empty and reuse it). While the writer does not run (start-up, `-t`, unit tests) the lines
 * are written at once by the calling thread and 0 is returned. */
int lp_logw_submit(lp_logchunk_t *c);

/* Writes c at once on the calling thread (giving up after a second on an output that does
 * not take it) and frees it: the main thread's error lines. */
void lp_logw_write_now(lp_logchunk_t *c);

/* Starts the writer thread with a bound of max_bytes queued. */
int lp_logw_start(size_t max_bytes);
/* A reload may change the bound. */
void lp_logw_set_limit(size_t max_bytes);
/* Writes what is queued (giving up after timeout_ms on an output that does not take it,
 * whose lines are then dropped), then ends the thread. */
void lp_logw_stop(unsigned timeout_ms);
int lp_logw_running(void);
/* Lines dropped since start: queue full, or an output error (summed over all workers and
 * both logs). */
uint64_t lp_logw_lines_dropped(void);
/* Counts n more dropped lines (a maker that could not even build its chunk). */
void lp_logw_count_dropped(uint64_t n);

/* Internal, for tests: the RFC 5424 header for priority `pri` at ts (UTC, milliseconds),
 * with `-` for empty fields and every byte outside 33-126 replaced by '_' (PRINTUSASCII),
 * names cut to RFC 5424's lengths (host 255, app 48, procid 128, msgid 32). Ends with the
 * structured data "-" and a space, ready for the message. */
size_t lp__syslog_header(char *out, int pri, const struct timespec *ts, const char *host,
                         const char *app, long pid, const char *msgid);

#endif
