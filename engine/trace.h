/* W3C Trace Context (level 1) for proxied requests, and the spans they make.
 *
 * A request gets its trace context when its head parsed (lp_trace_start): a valid incoming
 * `traceparent` (and its `tracestate`) continues the client's trace when tracing.accept is
 * set; otherwise, or when it is absent or invalid, a new trace starts. The proxy's own
 * SERVER span id is per request; each upstream try is a CLIENT child span when spans are
 * exported (and the request sampled), and the `traceparent` sent upstream names the try's
 * span as parent (the server span when nothing is recorded: no id the collector never
 * sees). Ids come from a per-thread xoshiro256** generator seeded by getrandom(2), so a
 * request costs a few ns for them, and never rand(). Export: engine/trace_export.c. */
#ifndef LP_TRACE_H
#define LP_TRACE_H

#include <stddef.h>
#include <stdint.h>
#include "proxy-t.h"

/* ---- the wire formats (pure functions; tests/unit/test_trace.c) ---- */

/* Length of a version-00 traceparent value. */
#define LP_TRACEPARENT_LEN 55

/* Parses one traceparent value (surrounding spaces and tabs ignored), version 00 or a
 * future version as the spec says to (at least 55 characters, a '-' or the end after the
 * flags). 0 with the ids and flags set, -1 when invalid: version ff, upper-case or non-hex
 * digits, all-zero ids, wrong length or separators. */
int lp_traceparent_parse(const char *s, size_t n, uint8_t trace_id[16], uint8_t parent_id[8],
                         uint8_t *flags);
/* "00-<trace>-<span>-<flags>", LP_TRACEPARENT_LEN bytes, not NUL-ended. */
void lp_traceparent_format(char *out, const uint8_t trace_id[16], const uint8_t span_id[8],
                           uint8_t flags);
/* Combines the tracestate header values (in order, as one list), checks every member (key
 * and value grammar, no duplicate key, at most 32 members) and writes them to out joined
 * by ',' without spaces. Longer than cap: members over 128 characters go first, then
 * members from the end. Returns the length (0: empty), or -1 when the header is invalid
 * (to be dropped whole). */
int lp_tracestate_combine(const lp_str_t *values, size_t nvalues, char *out, size_t cap);
/* Lower-case hex of n bytes into out (2n characters, not NUL-ended). */
void lp_trace_hex(char *out, const uint8_t *id, size_t n);

/* ---- ids ---- */

/* n random bytes from the calling thread's generator, never all zero. */
void lp_trace_random_id(uint8_t *out, size_t n);
/* A uniform double in [0, 1) from the same generator. */
double lp_trace_random_unit(void);

/* ---- a request's trace ---- */

/* Sets the request's trace context from its head (see above); nothing when tracing is off. */
void lp_trace_start(lp_req_t *req);
/* An upstream try began (its target picked) / ended: its child span. */
void lp_trace_try_begin(lp_req_t *req);
void lp_trace_try_end(lp_req_t *req, int failed);
/* The request ended: its spans go to the worker's exporter when recorded. */
void lp_trace_finish(lp_req_t *req);
/* The current upstream try's traceparent value (LP_TRACEPARENT_LEN bytes into
 * traceparent) and its tracestate (borrowed from req; len 0: none). Tracing on only. */
lp_str_t lp_trace_upstream_fields(const lp_req_t *req, char *traceparent);
/* Whether a request header is one the proxy replaces when tracing is on. */
int lp_trace_is_header(const lp_req_t *req, lp_str_t name);
/* " trace_id=<32 hex>" for an error-log line about the request, "" without a trace. Valid
 * until the next call on this thread. */
const char *lp_trace_tag(const lp_req_t *req);

/* ---- export (engine/trace_export.c) ---- */

/* The worker's exporter: created at worker start, configured by every generation switch,
 * closed when the worker stops (what is queued then is counted as dropped). */
int lp_trace_export_init(lp_worker_t *w);
void lp_trace_export_config(lp_worker_t *w, const lp_config_t *cfg);
void lp_trace_export_close(lp_worker_t *w);
void lp_trace_export_free(lp_worker_t *w);
/* Appends a finished request's spans (the server span and one per try). */
void lp_trace_export_request(lp_worker_t *w, const lp_req_t *req);
/* ---- OTLP/HTTP JSON (engine/trace_otlp.c) ---- */

/* The POST body is the prefix (resource with service.name, scope), the span objects joined
 * by ',', then this. */
#define LP_TRACE_OTLP_SUFFIX "]}]}]}"
/* The prefix for service name svc (owned by the caller; NULL when out of memory). */
char *lp_trace_otlp_prefix(const char *svc, size_t *len);
/* Bytes lp_trace_otlp_spans may write for req, at most. */
size_t lp_trace_otlp_bound(const lp_req_t *req);
/* The request's SERVER span and one CLIENT span per recorded try, joined by ',', into out;
 * times are uv_hrtime() ns plus clock_off (the wall clock's offset), now ends what is still
 * open. Returns the length. */
size_t lp_trace_otlp_spans(char *out, const lp_req_t *req, uint64_t clock_off, uint64_t now);

/* The worker counters summed over workers (relaxed reads: any thread). For GET /status and
 * metrics. */
void lp_trace_totals(const lp_worker_t *ws, unsigned n, lp_trace_counts_t *out);

#endif
