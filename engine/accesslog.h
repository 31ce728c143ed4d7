/* Access log: one line per request from a template compiled at start-up; lines are
 * gathered per worker and handed to the log writer thread (logw.h) when 32 KiB filled or
 * the flush interval passed, so that no write happens on a worker's loop.
 *
 * A line is text (log.format, values escaped as \xXX) or one JSON object (log.json: member
 * names and templates, values escaped per RFC 8259); docs/access-log.md describes both. */
#ifndef LP_ACCESSLOG_H
#define LP_ACCESSLOG_H

#include <stdint.h>
#include "proxy-t.h"

struct lp_logsink_s;

/* How a worker's access log writes (config: log.*). */
typedef struct {
    struct lp_logsink_s *sink; /* borrowed: the log takes a reference of its own */
    int severity;              /* syslog severity of the records */
    uint64_t flush_ms;         /* lines are handed to the writer at least this often */
    uint32_t sample;           /* requests logged per 2^32 (UINT32_MAX: all) */
    int always_status;         /* sampled out, but logged with a status at least this (0: no) */
    uint64_t always_slower_ms; /* ... or when slower than this (0: no rule) */
} lp_accesslog_opts_t;

/* One worker's access log (its lines, its sampling); NULL with *err set on a bad template. */
lp_accesslog_t *lp_accesslog_new(const lp_log_format_t *format, const lp_accesslog_opts_t *o,
                                 char *err, size_t errlen);
/* A file (or "-": stdout) with the defaults; NULL path: no log. Returns NULL with *err set on
 * a bad template or an unopenable file. */
lp_accesslog_t *lp_accesslog_open(const char *path, const lp_log_format_t *format, char *err,
                                  size_t errlen);
/* Hands what is buffered over, then lets go of the output (queued lines still go to it). */
void lp_accesslog_close(lp_accesslog_t *log);
void lp_accesslog_write(lp_accesslog_t *log, const lp_req_t *req);
/* Hands the buffered lines to the writer thread now (logw.h). */
void lp_accesslog_flush(lp_accesslog_t *log);
/* Hands the buffered lines over when they are due (flush interval); returns the ms until
 * they will be, or -1 when nothing waits. */
int64_t lp_accesslog_tick(lp_accesslog_t *log, uint64_t now_ms);
/* Template check for config validation: 0, or LP_ECONFIG with *err naming the key
 * ("log.format: unknown variable $x", "log.json.status: unknown variable $x"). */
int lp_accesslog_check_format(const lp_log_format_t *format, char *err, size_t errlen);

/* Internal, for tests. The escapers write at most 4n (text) or 6n (JSON) bytes into out
 * and return how many they wrote.
 * Text: bytes below 0x20, '"', '\' and 0x7f and above as \xXX (upper-case hex), as
 * nginx's default escaping does.
 * JSON (the inside of a string): '"' '\' and \b \f \n \r \t as two-character escapes,
 * other bytes below 0x20 and 0x7f as \u00xx; well-formed UTF-8 as it is; every byte that
 * is not part of a well-formed UTF-8 character as \u00xx of its value (0xff: \u00ff). */
size_t lp__accesslog_text_escape(char *out, const char *s, size_t n);
size_t lp__accesslog_json_escape(char *out, const char *s, size_t n);

#endif
