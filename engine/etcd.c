/* Config from etcd (docs/fleet.md). A thread of its own reads and watches the prefix through
 * etcd's v3 JSON gateway (blocking sockets, etcd_http.c) and hands each new document to the
 * main loop; the main loop writes it to a candidate file and reloads through main.c's one
 * reload path (the bootstrap merges the candidate: lua/luaproxy/config_source.lua). A reload
 * that succeeds makes the candidate the last good copy (a rename: atomic); one that fails
 * leaves the running generation and the last good copy alone. Either way the outcome goes
 * back to the thread, which writes it under PREFIX status/INSTANCE.
 *
 * The watch is a change notice only: any event under the prefix (but status/) ends it, and
 * the thread reads the prefix again (a range) and watches from that read's revision + 1.
 * After an outage or a compaction the same happens, so no change is missed, and a document
 * whose mod_revision is the one already delivered is not delivered again. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "etcd.h"
#include "fnv.h"
#include "log.h"
#include "tls.h"
#include "worker.h"

#define ETCD_MAX_EPS 8

struct lp_etcd_s {
    lp_server_t *server; /* borrowed: the process's */
    /* Settings: written before the thread starts, read-only after (both threads read). */
    lp_etcd_ep_t eps[ETCD_MAX_EPS];
    int neps;
    char prefix[256];
    char instance[256];
    char user[256], password[256];
    int has_auth; /* user and password set */
    int timeout_ms;
    lp_tls_client_t *tls;  /* reference: the TLS context of https:// endpoints (the eps borrow
                              it); NULL when every endpoint is http:// */
    char state_path[4096]; /* the last good document */
    char next_path[4200];  /* the candidate a reload is applying */
    char tmp_path[4300];   /* written, then renamed to next_path */
    uv_thread_t thread;
    uv_async_t async; /* thread -> main: a document, or the connection state changed */
    int wake[2];      /* pipe main -> thread: a byte when there is a status to write or a stop */
    int stop_pipe[2]; /* pipe main -> thread: a byte at the stop only, which ends any wait
                         (a resolution, a connect, a request), not only the watch's */
    uv_mutex_t lock;
    /* Guarded by lock. */
    struct routes_req_s *rq_todo; /* owned list: POST /routes changes for the thread */
    struct routes_req_s *rq_done; /* owned list: answered, for the main loop's callbacks */
    char *doc;                    /* owned: the newest document the main loop has not taken */
    char *doc_plugins;            /* owned: with doc, the plugin sources as a JSON object */
    int64_t doc_rev;              /* the highest mod_revision of doc and its plugins */
    uint64_t doc_hash;            /* a hash of their contents */
    int64_t doc_cmod;             /* the mod_revision of PREFIX config itself */
    char *status;                 /* owned: a status document the thread has not written yet */
    int stop;                     /* lp_etcd_stop: the thread returns */
    int connected;                /* the last request to etcd succeeded */
    int64_t seen_rev;             /* etcd's revision at the last read */
    char last_error[256];         /* the last failure talking to etcd ("" when none) */
    uint64_t delivered_hash;      /* doc_hash of the last document handed over (thread) */
    /* Main thread only. */
    int64_t running_rev;    /* revision of the document serving (0: none from etcd) */
    uint64_t running_hash;  /* its hash (0: none) */
    uint64_t applying_hash; /* the hash of the candidate a reload is applying */
    int64_t running_cmod;   /* PREFIX config's mod_revision serving (0: none): POST /routes
                               writes only over that one */
    int64_t applying_cmod;  /* the candidate's */
    int64_t applying_rev;   /* the candidate a reload is applying (0: none) */
    int64_t failed_rev;     /* the last candidate refused (0: none) */
    char failed_error[512]; /* its error */
    int has_config;         /* a document serves (etcd's or the last good copy) */
    int stopped;            /* lp_etcd_stop ran: the thread and the pipe are gone */
    int closed;             /* lp_etcd_stop closed async: the struct goes with the last of it and an
                               etcd reload still running (on_applied frees it then) */
};

/* A POST /routes change on its way to etcd and back. */
typedef struct routes_req_s {
    struct routes_req_s *next; /* owned: the rest of its list */
    char *ops;                 /* owned: the batch as JSON text (no jansson object crosses
                                  threads) */
    int64_t expect_mod;        /* the config's mod_revision the instance ran at the request */
    lp_etcd_routes_cb cb;      /* main loop, once */
    void *data;                /* borrowed: cb's (the admin connection, which holds itself) */
    int status;                /* the answer (set by the thread) */
    char msg[512];
    int64_t revision;
} routes_req_t;

/* ---- the thread ---- */

static int is_stopping(lp_etcd_t *e)
{
    uv_mutex_lock(&e->lock);
    int s = e->stop;
    uv_mutex_unlock(&e->lock);
    return s;
}

static void set_state(lp_etcd_t *e, int connected, const char *err)
{
    uv_mutex_lock(&e->lock);
    int changed = e->connected != connected;
    e->connected = connected;
    if (err)
        snprintf(e->last_error, sizeof(e->last_error), "%s", err);
    uv_mutex_unlock(&e->lock);
    if (changed) {
        if (connected)
            lp_log_notice("etcd: connected");
        else
            lp_log_warn("etcd: unreachable, serving the current config: %s", err ? err : "");
    }
}

static void drain_wake(lp_etcd_t *e)
{
    char b[64];
    while (read(e->wake[0], b, sizeof(b)) > 0) {
    }
}

/* s base64-encoded as a JSON string (NULL when out of memory). */
static json_t *b64_json(const char *s, size_t n)
{
    char *b = lp_etcd_b64(s, n);
    json_t *j = b ? json_string(b) : NULL;
    free(b);
    return j;
}

/* The key range [prefix, prefix with its last byte + 1). */
static void add_range(lp_etcd_t *e, json_t *req)
{
    size_t n = strlen(e->prefix);
    char end[256];
    memcpy(end, e->prefix, n + 1);
    end[n - 1]++;
    json_object_set_new(req, "key", b64_json(e->prefix, n));
    json_object_set_new(req, "range_end", b64_json(end, n));
}

static int64_t jint(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    if (json_is_string(v))
        return strtoll(json_string_value(v), NULL, 10);
    return json_is_integer(v) ? (int64_t)json_integer_value(v) : 0;
}

static int authenticate(lp_etcd_t *e, const lp_etcd_ep_t *ep, char **token, char *err,
                        size_t errlen)
{
    *token = NULL;
    if (!e->has_auth)
        return 0;
    json_t *req = json_pack("{ssss}", "name", e->user, "password", e->password), *res;
    int rc = lp_etcd_call(ep, "/v3/auth/authenticate", NULL, req, e->timeout_ms, e->stop_pipe[0],
                          &res, err, errlen);
    json_decref(req);
    if (rc)
        return rc;
    json_t *t = json_object_get(res, "token");
    if (json_is_string(t))
        *token = strdup(json_string_value(t));
    json_decref(res);
    if (!*token) {
        snprintf(err, errlen, "etcd authentication: no token");
        return LP_EIO;
    }
    return 0;
}

/* Reads the prefix; hands the config document over, with the plugin sources under
 * PREFIX plugins/, when they differ from what was handed over last (a content hash: a
 * plugin deleted lowers no mod_revision). The revision handed over is the highest
 * mod_revision among them. *rev: etcd's revision at the read. */
static int read_prefix(lp_etcd_t *e, const lp_etcd_ep_t *ep, const char *token, int64_t *rev,
                       char *err, size_t errlen)
{
    json_t *req = json_object(), *res;
    add_range(e, req);
    int rc = lp_etcd_call(ep, "/v3/kv/range", token, req, e->timeout_ms, e->stop_pipe[0], &res, err,
                          errlen);
    json_decref(req);
    if (rc)
        return rc;
    *rev = jint(json_object_get(res, "header"), "revision");
    uv_mutex_lock(&e->lock);
    e->seen_rev = *rev;
    uv_mutex_unlock(&e->lock);
    char want[300], plug[300];
    snprintf(want, sizeof(want), "%sconfig", e->prefix);
    int pn = snprintf(plug, sizeof(plug), "%splugins/", e->prefix);
    json_t *kvs = json_object_get(res, "kvs"), *kv;
    json_t *plugins = json_object();
    char *config = NULL;
    int64_t mod = 0, cmod = 0;
    uint64_t hash = LP_FNV1A64_INIT;
    size_t i;
    json_array_foreach(kvs, i, kv) /* etcd answers in key order: the hash is stable */
    {
        size_t kn = 0, vn = 0;
        json_t *jk = json_object_get(kv, "key"), *jv = json_object_get(kv, "value");
        char *key = json_is_string(jk) ? lp_etcd_unb64(json_string_value(jk), &kn) : NULL;
        int is_config = key && !strcmp(key, want);
        int is_plugin = key && !strncmp(key, plug, (size_t)pn) && key[pn];
        if (is_config || is_plugin) {
            char *val = lp_etcd_unb64(json_is_string(jv) ? json_string_value(jv) : "", &vn);
            int64_t m = jint(kv, "mod_revision");
            mod = m > mod ? m : mod;
            hash = lp_fnv1a64(lp_fnv1a64(hash, key, kn + 1), val ? val : "", val ? vn + 1 : 0);
            if (is_config) {
                free(config);
                config = val;
                cmod = m;
            } else {
                if (val)
                    json_object_set_new(plugins, key + pn, json_stringn(val, vn));
                free(val);
            }
        }
        free(key);
    }
    json_decref(res);
    char *pj = config ? json_dumps(plugins, JSON_COMPACT) : NULL;
    json_decref(plugins);
    uv_mutex_lock(&e->lock);
    int fresh = config && pj && hash != e->delivered_hash;
    if (fresh) {
        free(e->doc);
        free(e->doc_plugins);
        e->doc = config;
        e->doc_plugins = pj;
        e->doc_rev = mod;
        e->doc_cmod = cmod;
        e->doc_hash = e->delivered_hash = hash;
        config = pj = NULL;
    }
    uv_mutex_unlock(&e->lock);
    free(config);
    free(pj);
    if (fresh) {
        lp_log_notice("etcd: config at revision %" PRId64, mod);
        uv_async_send(&e->async);
    }
    return 0;
}

static int write_status(lp_etcd_t *e, const lp_etcd_ep_t *ep, const char *token, char *err,
                        size_t errlen)
{
    uv_mutex_lock(&e->lock);
    char *st = e->status;
    e->status = NULL;
    uv_mutex_unlock(&e->lock);
    if (!st)
        return 0;
    char key[600];
    int kn = snprintf(key, sizeof(key), "%sstatus/%s", e->prefix, e->instance);
    json_t *req = json_object(), *res = NULL;
    json_object_set_new(req, "key", b64_json(key, (size_t)kn));
    json_object_set_new(req, "value", b64_json(st, strlen(st)));
    int rc = lp_etcd_call(ep, "/v3/kv/put", token, req, e->timeout_ms, e->stop_pipe[0], &res, err,
                          errlen);
    json_decref(req);
    json_decref(res);
    uv_mutex_lock(&e->lock);
    if (rc && !e->status) /* not written: try again after the reconnection */
        e->status = st;
    else
        free(st);
    uv_mutex_unlock(&e->lock);
    return rc;
}

typedef struct {
    lp_etcd_t *e;
    char line[65536]; /* one watch response (a JSON object per line) */
    size_t n;
    int relevant; /* an event under the prefix but status/: read again */
    int restart;  /* canceled or compacted: read again */
} watch_t;

static void watch_line(watch_t *w)
{
    json_t *j = json_loadb(w->line, w->n, 0, NULL);
    json_t *r = j ? json_object_get(j, "result") : NULL;
    if (!r) {
        w->restart = 1; /* an error object: the gateway ended the watch */
        json_decref(j);
        return;
    }
    if (jint(r, "compact_revision") > 0 || json_is_true(json_object_get(r, "canceled")))
        w->restart = 1;
    char status[300];
    int sn = snprintf(status, sizeof(status), "%sstatus/", w->e->prefix);
    json_t *ev;
    size_t i;
    json_array_foreach(json_object_get(r, "events"), i, ev)
    {
        json_t *jk = json_object_get(json_object_get(ev, "kv"), "key");
        size_t kn = 0;
        char *key = json_is_string(jk) ? lp_etcd_unb64(json_string_value(jk), &kn) : NULL;
        if (!key || strncmp(key, status, (size_t)sn))
            w->relevant = 1;
        free(key);
    }
    json_decref(j);
}

static int on_watch_body(void *data, const char *p, size_t n)
{
    watch_t *w = data;
    for (size_t i = 0; i < n; i++) {
        if (p[i] != '\n') {
            if (w->n < sizeof(w->line))
                w->line[w->n++] = p[i];
            else
                w->restart = 1; /* too long for a notice: read the prefix instead */
            continue;
        }
        watch_line(w);
        w->n = 0;
    }
    return w->relevant || w->restart;
}

/* Moves r to the answered list; the main loop calls its callback. */
static void routes_answer(lp_etcd_t *e, routes_req_t *r, int status, int64_t rev)
{
    r->status = status;
    r->revision = rev;
    uv_mutex_lock(&e->lock);
    r->next = e->rq_done;
    e->rq_done = r;
    uv_mutex_unlock(&e->lock);
    uv_async_send(&e->async);
}

/* One change: PREFIX config read, the batch applied, written back only if its mod_revision
 * is still the one the instance runs (an etcd transaction: compare, then put). Returns 0,
 * or an LP_E* code when etcd failed (r answered 502 either way). */
static int routes_one(lp_etcd_t *e, const lp_etcd_ep_t *ep, const char *token, routes_req_t *r)
{
    char key[300], err[512] = "";
    int kn = snprintf(key, sizeof(key), "%sconfig", e->prefix);
    json_t *req = json_object(), *res = NULL;
    json_object_set_new(req, "key", b64_json(key, (size_t)kn));
    int rc = lp_etcd_call(ep, "/v3/kv/range", token, req, e->timeout_ms, e->stop_pipe[0], &res, err,
                          sizeof(err));
    json_decref(req);
    if (rc) {
        snprintf(r->msg, sizeof(r->msg), "etcd: %s", err);
        routes_answer(e, r, 502, 0);
        return rc;
    }
    json_t *kv = json_array_get(json_object_get(res, "kvs"), 0);
    int64_t mod = kv ? jint(kv, "mod_revision") : 0;
    json_t *jv = json_object_get(kv, "value");
    size_t vn = 0;
    char *doc = json_is_string(jv) ? lp_etcd_unb64(json_string_value(jv), &vn) : NULL;
    json_decref(res);
    if (mod != r->expect_mod) {
        free(doc);
        snprintf(r->msg, sizeof(r->msg),
                 "%s changed in etcd (mod_revision %" PRId64 ") since the one this instance runs "
                 "(%" PRId64 "): nothing written; GET /routes once the instance runs it (or see "
                 "its status for why it does not), then send the change again",
                 key, mod, r->expect_mod);
        routes_answer(e, r, 409, 0);
        return 0;
    }
    json_t *ops = json_loads(r->ops, 0, NULL);
    char *out = NULL;
    int drc = lp_etcd_routes_doc(doc, ops, &out, err, sizeof(err));
    json_decref(ops);
    free(doc);
    if (drc) {
        snprintf(r->msg, sizeof(r->msg), "%s: %s", key, err);
        routes_answer(e, r, 409, 0);
        return 0;
    }
    /* mod 0 compares as "the key does not exist": the first document is created. */
    char mods[32];
    snprintf(mods, sizeof(mods), "%" PRId64, mod);
    json_t *put = json_object();
    json_object_set_new(put, "key", b64_json(key, (size_t)kn));
    json_object_set_new(put, "value", b64_json(out, strlen(out)));
    free(out);
    req = json_pack("{s:[{s:o,s:s,s:s,s:s}],s:[{s:o}]}", "compare", "key",
                    b64_json(key, (size_t)kn), "result", "EQUAL", "target", "MOD", "mod_revision",
                    mods, "success", "request_put", put);
    rc = req ? lp_etcd_call(ep, "/v3/kv/txn", token, req, e->timeout_ms, e->stop_pipe[0], &res, err,
                            sizeof(err))
             : LP_ENOMEM;
    json_decref(req);
    if (rc) {
        snprintf(r->msg, sizeof(r->msg), "etcd: %s", rc == LP_ENOMEM ? "out of memory" : err);
        routes_answer(e, r, 502, 0);
        return rc;
    }
    int ok = json_is_true(json_object_get(res, "succeeded"));
    int64_t rev = jint(json_object_get(res, "header"), "revision");
    json_decref(res);
    if (!ok) {
        snprintf(r->msg, sizeof(r->msg),
                 "%s changed in etcd while the change was being written (it expected "
                 "mod_revision %" PRId64 "): nothing written; send the change again",
                 key, mod);
        routes_answer(e, r, 409, 0);
        return 0;
    }
    lp_log_notice("etcd: routes changed through the admin API: %s at revision %" PRId64, key, rev);
    routes_answer(e, r, 200, rev);
    return 0;
}

/* Every queued change, in order; stops at the first etcd failure (the rest then wait for
 * the reconnection, or fail with it: routes_fail_all). */
static int routes_run(lp_etcd_t *e, const lp_etcd_ep_t *ep, const char *token)
{
    for (;;) {
        uv_mutex_lock(&e->lock);
        routes_req_t *r = e->rq_todo;
        if (r)
            e->rq_todo = r->next;
        uv_mutex_unlock(&e->lock);
        if (!r)
            return 0;
        int rc = routes_one(e, ep, token, r);
        if (rc)
            return rc;
    }
}

/* etcd is unreachable: the changes waiting fail now rather than when it comes back (the
 * client would not know whether to retry). */
static void routes_fail_all(lp_etcd_t *e, const char *err, int status)
{
    uv_mutex_lock(&e->lock);
    routes_req_t *r = e->rq_todo;
    e->rq_todo = NULL;
    uv_mutex_unlock(&e->lock);
    while (r) {
        routes_req_t *next = r->next;
        snprintf(r->msg, sizeof(r->msg), "etcd: %s", err);
        routes_answer(e, r, status, 0);
        r = next;
    }
}

/* Sleeps ms unless woken (then 1). */
static int nap(lp_etcd_t *e, int ms)
{
    struct pollfd p = {.fd = e->wake[0], .events = POLLIN};
    return poll(&p, 1, ms) > 0;
}

static void run(void *arg)
{
    lp_etcd_t *e = arg;
    int ep_i = 0, backoff = 100;
    char err[512];
    while (!is_stopping(e)) {
        const lp_etcd_ep_t *ep = &e->eps[ep_i];
        char *token = NULL;
        int64_t rev = 0;
        drain_wake(e);
        int rc = authenticate(e, ep, &token, err, sizeof(err));
        if (!rc)
            rc = read_prefix(e, ep, token, &rev, err, sizeof(err));
        if (!rc)
            rc = write_status(e, ep, token, err, sizeof(err));
        if (!rc)
            rc = routes_run(e, ep, token);
        while (!rc && !is_stopping(e)) {
            set_state(e, 1, "");
            backoff = 100;
            char body[1024];
            char *k = NULL, *end = NULL;
            {
                size_t n = strlen(e->prefix);
                char pend[256];
                memcpy(pend, e->prefix, n + 1);
                pend[n - 1]++;
                k = lp_etcd_b64(e->prefix, n);
                end = lp_etcd_b64(pend, n);
            }
            snprintf(body, sizeof(body),
                     "{\"create_request\":{\"key\":\"%s\",\"range_end\":\"%s\","
                     "\"start_revision\":\"%" PRId64 "\"}}",
                     k ? k : "", end ? end : "", rev + 1);
            free(k);
            free(end);
            watch_t *w = calloc(1, sizeof(*w));
            if (!w) {
                rc = LP_ENOMEM;
                break;
            }
            w->e = e;
            int st = lp_etcd_post(ep, "/v3/watch", token, body, -1, e->wake[0], on_watch_body, w,
                                  err, sizeof(err));
            int again = w->relevant || w->restart || st == 0;
            /* Ended by etcd without a change (canceled, compacted, an error line): a
             * short pause, so an etcd that keeps refusing the watch is not hammered. */
            int pause = w->restart && !w->relevant;
            free(w);
            if (pause && nap(e, 100) && is_stopping(e))
                break;
            if (st < 0 || (st != 200 && st != 0)) {
                if (st > 0)
                    snprintf(err, sizeof(err), "watch: HTTP %d", st);
                rc = LP_EIO;
                break;
            }
            if (!again) { /* the stream ended: etcd went away */
                snprintf(err, sizeof(err), "watch: the stream ended");
                rc = LP_EIO;
                break;
            }
            drain_wake(e);
            rc = read_prefix(e, ep, token, &rev, err, sizeof(err));
            if (!rc)
                rc = write_status(e, ep, token, err, sizeof(err));
            if (!rc)
                rc = routes_run(e, ep, token);
        }
        free(token);
        if (is_stopping(e))
            break;
        set_state(e, 0, err);
        routes_fail_all(e, err, 502);
        ep_i = (ep_i + 1) % e->neps;
        /* Every endpoint failed once: wait a little before the next round. */
        if (ep_i == 0) {
            nap(e, backoff);
            backoff = backoff * 2 > 1000 ? 1000 : backoff * 2;
        }
    }
}

/* ---- the main loop's side ---- */

static void post_status(lp_etcd_t *e, uint64_t gen)
{
    json_t *st = json_pack("{sssIsbsIsf}", "instance", e->instance, "revision",
                           (json_int_t)e->running_rev, "ok", e->failed_rev == 0, "generation",
                           (json_int_t)gen, "time", (double)time(NULL));
    if (e->failed_rev) {
        json_object_set_new(st, "failed_revision", json_integer(e->failed_rev));
        json_object_set_new(st, "error", json_string(e->failed_error));
    }
    char *s = json_dumps(st, JSON_COMPACT);
    json_decref(st);
    uv_mutex_lock(&e->lock);
    free(e->status);
    e->status = s;
    uv_mutex_unlock(&e->lock);
    char b = 1;
    if (write(e->wake[1], &b, 1) < 0 && errno != EAGAIN)
        lp_log_warn("etcd: cannot wake the watch: %s", strerror(errno));
}

static void take_doc(lp_etcd_t *e);
static void etcd_free(lp_etcd_t *e);

static void on_applied(void *data, int rc, const char *err, uint64_t generation)
{
    lp_etcd_t *e = data;
    if (e->stopped) { /* stopped meanwhile (the reload ends as "the server is stopping") */
        e->applying_rev = 0;
        if (e->closed)
            etcd_free(e);
        return;
    }
    lp_server_t *s = e->server;
    s->source_doc = NULL;
    if (!e->applying_rev)
        return;
    if (rc == 0) {
        if (rename(e->next_path, e->state_path))
            lp_log_error("etcd: cannot keep the config as the last good one: %s: %s", e->state_path,
                         strerror(errno));
        e->running_rev = e->applying_rev;
        e->running_hash = e->applying_hash;
        e->running_cmod = e->applying_cmod;
        e->has_config = 1;
        e->failed_rev = 0;
        lp_log_notice("etcd: revision %" PRId64 " serving (generation %" PRIu64 ")", e->running_rev,
                      generation);
    } else {
        unlink(e->next_path);
        e->failed_rev = e->applying_rev;
        snprintf(e->failed_error, sizeof(e->failed_error), "%s", err);
        lp_log_error("etcd: revision %" PRId64 " refused, revision %" PRId64 " keeps serving",
                     e->failed_rev, e->running_rev);
    }
    e->applying_rev = 0;
    post_status(e, generation);
    take_doc(e);
}

/* Writes path atomically (a temporary file, fsync'ed, renamed over). */
static int write_file(lp_etcd_t *e, const char *path, const char *a, const char *b, const char *c)
{
    int fd = open(e->tmp_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    const char *parts[3] = {a, b, c};
    int ok = 1;
    for (int i = 0; i < 3 && ok; i++) {
        size_t n = strlen(parts[i]), off = 0;
        while (ok && off < n) {
            ssize_t w = write(fd, parts[i] + off, n - off);
            if (w < 0 && errno == EINTR)
                continue;
            ok = w > 0;
            off += ok ? (size_t)w : 0;
        }
    }
    ok = ok && fsync(fd) == 0;
    ok = close(fd) == 0 && ok;
    if (!ok || rename(e->tmp_path, path)) {
        unlink(e->tmp_path);
        return -1;
    }
    return 0;
}

/* The newest document, if any and no reload of ours runs: written as the candidate, then a
 * reload. */
static void take_doc(lp_etcd_t *e)
{
    if (e->applying_rev)
        return;
    uv_mutex_lock(&e->lock);
    char *doc = e->doc, *plugins = e->doc_plugins;
    int64_t rev = e->doc_rev, cmod = e->doc_cmod;
    uint64_t hash = e->doc_hash;
    e->doc = e->doc_plugins = NULL;
    uv_mutex_unlock(&e->lock);
    if (!doc) {
        free(plugins);
        return;
    }
    if (hash == e->running_hash) {
        /* What serves already: the last good copy the instance started with, or etcd put
         * back as it was after a refused change. Its revisions are etcd's now (POST /routes
         * compares with the config's), and nothing is left refused. */
        free(doc);
        free(plugins);
        e->running_rev = rev;
        e->running_cmod = cmod;
        e->failed_rev = 0;
        e->has_config = 1;
        post_status(e, lp_gen_current->id);
        return;
    }
    /* The keys name the document and the plugins in errors about them
     * (config_source.lua: locate, plugin); jansson quotes them. */
    char key[300], pprefix[300];
    snprintf(key, sizeof(key), "%sconfig", e->prefix);
    snprintf(pprefix, sizeof(pprefix), "%splugins/", e->prefix);
    json_t *jk = json_string(key), *jp = json_string(pprefix);
    char *qk = jk ? json_dumps(jk, JSON_ENCODE_ANY) : NULL;
    char *qp = jp ? json_dumps(jp, JSON_ENCODE_ANY) : NULL;
    json_decref(jk);
    json_decref(jp);
    size_t hn = strlen(plugins ? plugins : "{}") + 1024;
    char *head = malloc(hn);
    int rc = -1;
    if (head && qk && qp) {
        snprintf(head, hn,
                 "{\"revision\":%" PRId64 ",\"config_mod\":%" PRId64 ",\"hash\":\"%016" PRIx64
                 "\",\"key\":%s,\"plugin_prefix\":%s,\"plugins\":%s,\"config\":",
                 rev, cmod, hash, qk, qp, plugins ? plugins : "{}");
        rc = write_file(e, e->next_path, head, doc, "}\n");
    } else {
        errno = ENOMEM;
    }
    free(head);
    free(qk);
    free(qp);
    free(doc);
    free(plugins);
    if (rc) {
        e->failed_rev = rev;
        snprintf(e->failed_error, sizeof(e->failed_error), "%s: %s", e->next_path, strerror(errno));
        lp_log_error("etcd: revision %" PRId64 " not applied: %s", rev, e->failed_error);
        post_status(e, lp_gen_current->id);
        return;
    }
    e->applying_rev = rev;
    e->applying_hash = hash;
    e->applying_cmod = cmod;
    e->server->source_doc = e->next_path;
    char who[64];
    snprintf(who, sizeof(who), "etcd revision %" PRId64, rev);
    lp_server_reload_by(e->server, who, on_applied, e);
}

/* The answered POST /routes changes: their callbacks, in the order they were sent. */
static void routes_deliver(lp_etcd_t *e)
{
    uv_mutex_lock(&e->lock);
    routes_req_t *r = e->rq_done, *rev = NULL;
    e->rq_done = NULL;
    uv_mutex_unlock(&e->lock);
    while (r) { /* the list is newest first */
        routes_req_t *next = r->next;
        r->next = rev;
        rev = r;
        r = next;
    }
    while (rev) {
        routes_req_t *next = rev->next;
        rev->cb(rev->data, rev->status, rev->msg, rev->revision);
        free(rev->ops);
        free(rev);
        rev = next;
    }
}

static void on_async(uv_async_t *a)
{
    routes_deliver(a->data);
    take_doc(a->data);
}

int lp_etcd_active(const lp_server_t *s)
{
    return s->etcd != NULL;
}

int lp_etcd_routes_change(lp_server_t *s, json_t *ops, lp_etcd_routes_cb cb, void *data)
{
    lp_etcd_t *e = s->etcd;
    routes_req_t *r = e ? calloc(1, sizeof(*r)) : NULL;
    if (!r || !(r->ops = json_dumps(ops, JSON_COMPACT | JSON_ENCODE_ANY))) {
        free(r);
        return LP_ENOMEM;
    }
    r->expect_mod = e->running_cmod;
    r->cb = cb;
    r->data = data;
    uv_mutex_lock(&e->lock);
    routes_req_t **tail = &e->rq_todo;
    while (*tail)
        tail = &(*tail)->next;
    *tail = r;
    uv_mutex_unlock(&e->lock);
    char b = 1;
    if (write(e->wake[1], &b, 1) < 0 && errno != EAGAIN)
        lp_log_warn("etcd: cannot wake the watch: %s", strerror(errno));
    return 0;
}

static void set_str(char *dst, size_t n, json_t *o, const char *k, const char *dflt)
{
    json_t *v = json_object_get(o, k);
    snprintf(dst, n, "%s", json_is_string(v) ? json_string_value(v) : dflt);
}

static char *opt_str(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    return json_is_string(v) ? strdup(json_string_value(v)) : NULL;
}

/* config_source.etcd.tls (NULL: the defaults: verify against the system store) as a client
 * context of tls.c, the one upstreams use. 0, or LP_ECONFIG with err naming the file. */
static int tls_context(lp_etcd_t *e, json_t *tls, char *err, size_t errlen)
{
    json_t *v = json_object_get(tls, "verify");
    lp_tls_client_conf_t c = {.verify = !json_is_false(v),
                              .ca = opt_str(tls, "ca"),
                              .sni = opt_str(tls, "server_name"),
                              .cert = opt_str(tls, "cert"),
                              .key = opt_str(tls, "key"),
                              .min_version = 0};
    char terr[400];
    e->tls = lp_tls_client_new(&c, terr, sizeof(terr));
    lp_tls_client_conf_free(&c);
    if (!e->tls) {
        snprintf(err, errlen, "config_source.etcd.tls: %s", terr);
        return LP_ECONFIG;
    }
    return 0;
}

int lp_etcd_start(lp_server_t *s, const lp_config_t *cfg, char *err, size_t errlen)
{
    if (!cfg->config_source)
        return 0;
    json_t *root = json_loads(cfg->config_source, 0, NULL);
    json_t *j = json_object_get(root, "etcd");
    if (!j) {
        json_decref(root);
        return 0;
    }
    lp_etcd_t *e = calloc(1, sizeof(*e));
    if (!e) {
        json_decref(root);
        snprintf(err, errlen, "out of memory");
        return LP_ENOMEM;
    }
    e->server = s;
    json_t *ep;
    size_t i;
    int rc = 0;
    json_array_foreach(json_object_get(j, "endpoints"), i, ep)
    {
        if (e->neps < ETCD_MAX_EPS && !rc)
            rc = lp_etcd_ep_parse(json_string_value(ep), &e->eps[e->neps++], err, errlen);
    }
    set_str(e->prefix, sizeof(e->prefix), j, "prefix", "/luaproxy/");
    char host[200] = "localhost";
    gethostname(host, sizeof(host) - 1);
    char dflt[256];
    snprintf(dflt, sizeof(dflt), "%s:%d", host, (int)getpid());
    set_str(e->instance, sizeof(e->instance), j, "instance", dflt);
    json_t *auth = json_object_get(j, "auth");
    if (auth) {
        e->has_auth = 1;
        set_str(e->user, sizeof(e->user), auth, "user", "");
        set_str(e->password, sizeof(e->password), auth, "password", "");
    }
    json_t *tls = json_object_get(j, "tls");
    int https = 0;
    for (int k = 0; k < e->neps; k++)
        https |= e->eps[k].https;
    if (!rc && https)
        rc = tls_context(e, tls, err, errlen);
    for (int k = 0; k < e->neps; k++)
        e->eps[k].tls = e->eps[k].https ? e->tls : NULL;
    json_t *t = json_object_get(j, "timeout");
    e->timeout_ms = json_is_number(t) ? (int)(json_number_value(t) * 1000) : 2000;
    /* state_file, like config_source.lua's state_path. */
    json_t *sf = json_object_get(j, "state_file");
    const char *slash = strrchr(s->config_path, '/');
    if (!json_is_string(sf))
        snprintf(e->state_path, sizeof(e->state_path), "%s.etcd.json", s->config_path);
    else if (json_string_value(sf)[0] == '/' || !slash)
        snprintf(e->state_path, sizeof(e->state_path), "%s", json_string_value(sf));
    else
        snprintf(e->state_path, sizeof(e->state_path), "%.*s/%s", (int)(slash - s->config_path),
                 s->config_path, json_string_value(sf));
    json_decref(root);
    snprintf(e->next_path, sizeof(e->next_path), "%s.next", e->state_path);
    snprintf(e->tmp_path, sizeof(e->tmp_path), "%s.tmp", e->state_path);
    if (rc || !e->neps) {
        if (!rc)
            snprintf(err, errlen, "config_source.etcd: no endpoint");
        lp_tls_client_unref(e->tls);
        free(e);
        return LP_ECONFIG;
    }
    /* The last good copy this start serves, if any: its revision is not applied again. */
    json_t *last = json_load_file(e->state_path, 0, NULL);
    if (last) {
        e->running_rev = jint(last, "revision");
        e->running_cmod = jint(last, "config_mod");
        json_t *h = json_object_get(last, "hash");
        /* A copy without a hash (an older luaproxy's) is applied again once. */
        e->running_hash = e->delivered_hash =
            json_is_string(h) ? strtoull(json_string_value(h), NULL, 16) : 0;
        e->has_config = 1;
        json_decref(last);
        lp_log_notice("etcd: serving the last good config (revision %" PRId64 ") from %s",
                      e->running_rev, e->state_path);
    }
    if (pipe2(e->wake, O_CLOEXEC | O_NONBLOCK)) {
        snprintf(err, errlen, "etcd: pipe: %s", strerror(errno));
        lp_tls_client_unref(e->tls);
        free(e);
        return LP_EIO;
    }
    if (pipe2(e->stop_pipe, O_CLOEXEC | O_NONBLOCK)) {
        snprintf(err, errlen, "etcd: pipe: %s", strerror(errno));
        close(e->wake[0]);
        close(e->wake[1]);
        lp_tls_client_unref(e->tls);
        free(e);
        return LP_EIO;
    }
    e->connected = -1;
    uv_mutex_init(&e->lock);
    uv_async_init(s->loop, &e->async, on_async);
    e->async.data = e;
    s->etcd = e;
    if (uv_thread_create(&e->thread, run, e)) {
        snprintf(err, errlen, "etcd: cannot start its thread");
        s->etcd = NULL;
        return LP_EIO; /* e leaks with its async handle: the start fails and the process exits */
    }
    return 0;
}

static void etcd_free(lp_etcd_t *e)
{
    uv_mutex_destroy(&e->lock);
    lp_tls_client_unref(e->tls);
    free(e->doc);
    free(e->doc_plugins);
    free(e->status);
    free(e);
}

static void on_async_closed(uv_handle_t *h)
{
    lp_etcd_t *e = h->data;
    e->closed = 1;
    if (!e->applying_rev)
        etcd_free(e);
}

void lp_etcd_stop(lp_server_t *s)
{
    lp_etcd_t *e = s->etcd;
    if (!e)
        return;
    s->etcd = NULL;
    s->source_doc = NULL;
    e->stopped = 1;
    uv_mutex_lock(&e->lock);
    e->stop = 1;
    uv_mutex_unlock(&e->lock);
    char b = 1;
    if (write(e->wake[1], &b, 1) < 0 || write(e->stop_pipe[1], &b, 1) < 0)
        lp_log_warn("etcd: cannot wake the watch: %s", strerror(errno));
    uv_thread_join(&e->thread);
    routes_fail_all(e, "the server is stopping", 503); /* the thread is gone: answered here */
    routes_deliver(e);
    close(e->wake[0]);
    close(e->wake[1]);
    close(e->stop_pipe[0]);
    close(e->stop_pipe[1]);
    uv_close((uv_handle_t *)&e->async, on_async_closed);
}

json_t *lp_etcd_status(const lp_server_t *s)
{
    lp_etcd_t *e = s->etcd;
    if (!e)
        return NULL;
    uv_mutex_lock(&e->lock);
    json_t *o = json_pack("{sssIsbsIss}", "instance", e->instance, "revision",
                          (json_int_t)e->running_rev, "connected", e->connected == 1,
                          "etcd_revision", (json_int_t)e->seen_rev, "last_error", e->last_error);
    uv_mutex_unlock(&e->lock);
    if (e->applying_rev)
        json_object_set_new(o, "applying_revision", json_integer(e->applying_rev));
    if (e->failed_rev) {
        json_object_set_new(o, "failed_revision", json_integer(e->failed_rev));
        json_object_set_new(o, "error", json_string(e->failed_error));
    }
    return o;
}

int lp_etcd_has_config(const lp_server_t *s)
{
    return !s->etcd || s->etcd->has_config;
}
