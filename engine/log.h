/* Error log: leveled lines, safe from any thread (one write(2) per line, or one record handed
 * to the log writer thread). */
#ifndef LP_LOG_H
#define LP_LOG_H

#include <stdatomic.h>
#include <stddef.h>
#include <time.h>

typedef enum { LP_LOG_ERROR, LP_LOG_WARN, LP_LOG_NOTICE, LP_LOG_INFO, LP_LOG_DEBUG } lp_log_level_t;

/* The level in force. Written by the main thread (start-up, and every reload applies the new
 * generation's `log.level`) while workers read it, hence atomic; a plain read of it is an
 * atomic load. */
extern _Atomic lp_log_level_t lp_log_level;

/* Worker number shown in log lines; each worker thread sets its own. */
void lp_log_set_thread_id(int id);
int lp_log_level_parse(const char *name, lp_log_level_t *out);
void lp_log(lp_log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- outputs and JSON lines (log.error, log.error_format; docs/access-log.md) ----
 * By default lines go to stderr as text. lp_log_configure (main thread: start, reload,
 * SIGUSR1) sends them to another output (logw.h) or makes them JSON objects; lines made on
 * a worker thread then go through the log writer thread, so a slow output never blocks a
 * worker's loop; the main thread's are written at once. */
struct lp_log_output_s;
/* 0, or LP_EIO with *err set (the output could not be opened; the old one stays). */
int lp_log_configure(const void *output /* lp_log_output_t */, int json, char *err, size_t errlen);
/* Back to stderr text (at exit). */
void lp_log_reset(void);
/* Request fields of JSON lines made on this thread (NULL: none): the callback appends
 * members (`,"client":"..."`) to out and returns their length. swap sets the pair (req,
 * fn) and hands back the previous pair, which the caller restores with a second swap (so
 * that a nested Lua resume gives the outer request its context back). */
typedef size_t (*lp_log_req_fn)(const void *req, char *out, size_t room);
void lp_log_swap_request(const void **req, lp_log_req_fn *fn);
/* Internal, for tests: one JSON error line (newline included) into out; returns its length. */
size_t lp__log_json_line(char *out, size_t cap, const struct timespec *ts, lp_log_level_t level,
                         long pid, int worker, const char *msg, size_t mlen,
                         const char *req_members, size_t rlen);

#define LP_LOG(level, ...)                                                                         \
    do {                                                                                           \
        if ((level) <= atomic_load_explicit(&lp_log_level, memory_order_relaxed))                  \
            lp_log((level), __VA_ARGS__);                                                          \
    } while (0)
#define lp_log_error(...)  LP_LOG(LP_LOG_ERROR, __VA_ARGS__)
#define lp_log_warn(...)   LP_LOG(LP_LOG_WARN, __VA_ARGS__)
#define lp_log_notice(...) LP_LOG(LP_LOG_NOTICE, __VA_ARGS__)
#define lp_log_info(...)   LP_LOG(LP_LOG_INFO, __VA_ARGS__)
#define lp_log_debug(...)  LP_LOG(LP_LOG_DEBUG, __VA_ARGS__)

#endif
