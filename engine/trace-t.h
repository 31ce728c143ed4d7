/* The types of a request's trace context (W3C Trace Context, engine/trace.c), embedded in
 * lp_req_t, and the per-worker export counters. Types only, like proxy-t.h. */
#ifndef LP_TRACE_T_H
#define LP_TRACE_T_H

#include <stdint.h>

/* Child spans recorded per request: one per upstream try; tries past this many are
 * counted (lp_trace_t.tries_lost) but get no span of their own. */
#define LP_TRACE_TRIES 8
/* The longest tracestate passed upstream (the spec's "at least 512 characters"). */
#define LP_TRACESTATE_MAX 512

/* One upstream try as a CLIENT child span. */
typedef struct {
    uint8_t span_id[8];
    uint64_t start, end; /* uv_hrtime() ns; end 0 while the try runs */
    uint16_t status;     /* the upstream's status; 0: no response head */
    uint8_t failed;      /* the try failed (connect, timeout, reset, a retry_on status) */
    uint8_t fail_kind;   /* lp_fail_kind_t, filled once the failure is known */
    char addr[48];       /* the target "ip:port" */
} lp_trace_try_t;

/* A request's trace context. Set when its head parsed (lp_trace_start), then read by the
 * upstream head, Lua, the logs and the exporter. Embedded in lp_req_t. */
typedef struct {
    uint8_t trace_id[16];
    uint8_t span_id[8];      /* the proxy's SERVER span for this request */
    uint8_t parent_id[8];    /* the client's span (accepted traceparent); all 0: none */
    uint8_t on;              /* the ids are set (tracing on and the head parsed) */
    uint8_t sampled;         /* the sampled flag, sent upstream (the parent's, or the ratio's) */
    uint8_t recorded;        /* sampled and export on: spans go to the collector */
    uint8_t ntries;          /* entries of tries in use */
    uint8_t tries_lost;      /* tries beyond LP_TRACE_TRIES (no span) */
    uint8_t cur_try;         /* 1 + the index in tries of the running try's span; 0: none */
    uint16_t tracestate_len; /* bytes of tracestate; 0: none sent upstream */
    char tracestate[LP_TRACESTATE_MAX]; /* the combined, checked tracestate (not NUL-ended) */
    lp_trace_try_t tries[LP_TRACE_TRIES];
} lp_trace_t;

/* A worker's export counters, written by the worker with relaxed atomics and summed by
 * the admin thread (lp_trace_totals). Embedded in lp_worker_t. */
typedef struct {
    uint64_t exported; /* spans the collector accepted (2xx) */
    uint64_t dropped;  /* spans lost: queue full, collector down, slow or refusing */
    uint64_t queued;   /* spans waiting or in flight now */
    uint64_t batches;  /* POSTs answered with 2xx */
    uint64_t failures; /* POSTs that failed (connect, timeout, non-2xx) */
} lp_trace_counts_t;

#endif
