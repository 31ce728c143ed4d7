/* Error log: leveled lines to stderr, safe from any thread (one write(2) per line). */
#ifndef LP_LOG_H
#define LP_LOG_H

#include <stdatomic.h>

typedef enum { LP_LOG_ERROR, LP_LOG_WARN, LP_LOG_NOTICE, LP_LOG_INFO, LP_LOG_DEBUG } lp_log_level_t;

/* The level in force. Written by the main thread (start-up, and every reload applies the new
 * generation's `log.level`) while workers read it, hence atomic; a plain read of it is an
 * atomic load. */
extern _Atomic lp_log_level_t lp_log_level;

/* Worker number shown in log lines; each worker thread sets its own. */
void lp_log_set_thread_id(int id);
int lp_log_level_parse(const char *name, lp_log_level_t *out);
void lp_log(lp_log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

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
