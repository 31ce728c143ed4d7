/* Access log: one line per request from a template compiled at start-up; lines are
 * buffered per worker and written once per loop iteration (before the loop sleeps).
 *
 * A line is text (log.format, values escaped as \xXX) or one JSON object (log.json: member
 * names and templates, values escaped per RFC 8259); docs/access-log.md describes both. */
#ifndef LP_ACCESSLOG_H
#define LP_ACCESSLOG_H

#include "proxy-t.h"

/* NULL path: no log. Returns NULL with *err set on a bad template or an unopenable file. */
lp_accesslog_t *lp_accesslog_open(const char *path, const lp_log_format_t *format, char *err,
                                  size_t errlen);
void lp_accesslog_close(lp_accesslog_t *log);
void lp_accesslog_write(lp_accesslog_t *log, const lp_req_t *req);
void lp_accesslog_flush(lp_accesslog_t *log);
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
