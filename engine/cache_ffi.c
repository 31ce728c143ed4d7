/* The response cache's FFI functions (the cache plugin's calls, lua/luaproxy/cache.lua) and
 * its hooks on the request path (cache_req.h). The store (cache_store.c) knows bytes; the
 * policy is Lua's. Everything here runs on the request's worker thread. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cache_disk_hit.h"
#include "cache_fields.h"
#include "cache_key.h"
#include "cache_req.h"
#include "cache_room.h"
#include "cache_store.h"
#include "cache_store_int.h"
#include "conn.h"
#include "http1.h"
#include "lua_api.h"
#include "lua_vm.h"
#include "upstream.h"
#include "worker.h"

void lp__lua_mark_responded(void);

static double real_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Heads read out of the store land here (copied under the zone's lock), then ffi.string. One
 * per thread (owned by it); grown as needed, never shrunk (heads are small); a thread-specific
 * key frees it when the thread ends. */
static _Thread_local char *scratch;
static _Thread_local size_t scratch_cap;
static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

static void scratch_key_make(void)
{
    pthread_key_create(&scratch_key, free);
}

/* The thread's scratch holds at least `need` bytes (what it held before is kept). 0, or -1
 * out of memory (the scratch is as it was). */
static int scratch_reserve(size_t need)
{
    if (need <= scratch_cap)
        return 0;
    char *s = realloc(scratch, need);
    if (!s)
        return -1;
    pthread_once(&scratch_once, scratch_key_make);
    pthread_setspecific(scratch_key, s);
    scratch = s;
    scratch_cap = need;
    return 0;
}

/* ---- the request path ---- */

/* uv_now(&w->loop) without its call (libuv's unix loop keeps it in `time`): a fill's
 * progress stamps take it per body piece, on a stored miss's path. */
static inline uint64_t loop_ms(const lp_worker_t *w)
{
    return w->loop.time;
}

void lp_cache_req_head(lp_req_t *req)
{
    lp_req_cache_t *rc = &req->cache;
    if (rc->fill && !lp__cache_fill_active(rc->fill)) {
        lp_cache_fill_abandon(rc->fill);
        rc->fill = NULL;
    }
}

static void watch_free(struct lp_cache_fill_watch_s *fw);

void lp_cache_req_tee(lp_req_t *req, const char *at, size_t len)
{
    lp_req_cache_t *rc = &req->cache;
    if (!rc->fill || !len)
        return;
    lp_cache_fill_t *f = rc->fill;
    /* Its waiters wait on while bytes come (lp_cache_wait_quiet): a store per piece, the
     * loop's time (no clock read, no wake-up of anyone). */
    lp__cache_fill_progress(f, loop_ms(req->w));
    char *to = lp__cache_fill_room(f, len); /* a small body: no call, no loop */
    if (to) {
        lp_cache_entry_t *e = f->e;
        lp_cache_chunk_t *t = f->tail;
        size_t end = t->len + len;
        put_short(to, at, len);
        lp__cache_fill_wrote_at(f, e, t, len, end);
        return;
    }
    if (lp_cache_fill_append(rc->fill, at, len)) {
        lp_cache_fill_abandon(rc->fill); /* over max_object_size: the response passes on */
        rc->fill = NULL;
    }
}

void lp_cache_req_done(lp_req_t *req)
{
    lp_req_cache_t *rc = &req->cache;
    if (!rc->fill)
        return;
    lp_cache_fill_t *f = rc->fill;
    rc->fill = NULL;
    if (lp__cache_fill_active(f) && !(req->flags & LP_RF_LOCAL))
        lp_cache_fill_commit(f);
    else
        lp_cache_fill_abandon(f);
}

/* lp_cache_req_body_done, inlined where this file calls it on a hit's path (the answer, the
 * request's end), as it was before fill streams gave it a third caller here. A fill stream's
 * watch stays until the request ends (lp_cache_req_end) or answers again (fill_answer): a
 * resume it brings meanwhile finds no body and does nothing. */
static inline __attribute__((always_inline)) void body_done(lp_req_t *req)
{
    lp_req_cache_t *rc = &req->cache;
    rc->streaming = 0; /* the stream stays (a read may run): lp_cache_req_end frees it */
    if (rc->pin)
        lp_buf_unref(rc->pin); /* the batches' pins keep the entry until their writes end */
    rc->pin = NULL;
    lp_cache_entry_unref(rc->body);
    rc->body = NULL;
    rc->chunk = NULL;
    rc->chunk_off = 0;
    rc->left = 0;
    lp_turn_cancel(&rc->turn); /* nothing is left for the pump's next turn (conn.c) */
}

void lp_cache_req_body_done(lp_req_t *req)
{
    body_done(req);
}

void lp_cache_req_end(lp_req_t *req)
{
    lp_req_cache_t *rc = &req->cache;
    if (rc->fill)
        lp_cache_fill_abandon(rc->fill);
    rc->fill = NULL;
    lp_cache_entry_unref(rc->hit);
    rc->hit = NULL;
    rc->hit_zone = NULL;
    lp_cache_entry_unref(rc->loaded);
    rc->loaded = NULL;
    body_done(req);
    if (__builtin_expect(rc->watch != NULL, 0)) {
        watch_free(rc->watch);
        rc->watch = NULL;
    }
    lp_cache_stream_free(rc->stream);
    rc->stream = NULL;
}

/* A pin over an entry: an lp_buf_t whose data holds the entry pointer (a reference) and
 * whose release drops it. Write batches take a reference per iovec; the last one (the batch's
 * write callback, or the request's own in lp_cache_req_body_done) frees it. Its refs are
 * counted on this worker's thread only, like every block's. */
static void pin_release(lp_buf_t *b)
{
    lp_cache_entry_t *e;
    memcpy(&e, b->data, sizeof(e));
    lp_cache_entry_unref(e);
    free(b);
}

lp_buf_t *lp_cache_req_pin(lp_req_t *req)
{
    lp_req_cache_t *rc = &req->cache;
    if (rc->pin)
        return rc->pin;
    lp_buf_t *b = calloc(1, sizeof(*b) + sizeof(lp_cache_entry_t *));
    if (!b)
        return NULL;
    b->refs = 1; /* rc->pin's */
    b->cap = sizeof(lp_cache_entry_t *);
    b->release = pin_release;
    lp_cache_entry_t *e = lp_cache_entry_ref(rc->body);
    memcpy(b->data, &e, sizeof(e));
    rc->pin = b;
    return b;
}

/* ---- coalescing waits ---- */

struct lp_cache_fill_watch_s;
static void watch_notify(lp_cache_waiter_t *base);

/* A worker's inbox for waits another thread's fill ended, and for fill streams another
 * thread's fill appended to (lp_cache_waiter_t.notify). Owned by the worker
 * (lp_worker_t.cache_inbox); `lock` guards `head` and `watches` only, taken by any thread
 * that drops a key lock or wakes a fill's readers (under that zone's lock: zone lock, then
 * inbox lock). */
typedef struct lp_cache_inbox_s {
    uv_async_t async; /* async.data = this; wakes the worker's loop */
    uv_mutex_t lock;  /* guards head and watches */
    /* borrowed: waits handed over, not yet seen by the worker */
    struct cache_wait_s *head;
    /* borrowed: fill watches handed over, not yet seen by the worker */
    struct lp_cache_fill_watch_s *watches;
    lp_list_t waits; /* every wait of this worker alive (cache_wait_t.link); worker thread
                        only */
} lp_cache_inbox_t;

/* One request (task) waiting for a key's fill, bounded by a timer. Made and freed on its
 * worker's thread; between lp_cache_wait and notify, the zone's lock guards `base`. It ends
 * exactly once, by whichever comes first: the fill's end (notify, then the inbox), the
 * timer, or its task's end (owned.release); the other two then find it gone from the zone
 * (lp_cache_wait_cancel says) or `done` set. */
typedef struct cache_wait_s {
    lp_cache_waiter_t base;          /* first: notify's argument */
    lp_lua_owned_t owned;            /* in its task's list while the task may be woken */
    lp_lua_waiter_t lw;              /* the parked task (its serial makes a late wake harmless) */
    uv_timer_t timer;                /* the bound; timer.data = this; freed in its close callback */
    lp_worker_t *w;                  /* borrowed: the waiting worker */
    lp_cache_zone_t *zone;           /* registry reference (lp_cache_zone_hold): the wait may
                                        outlive its task, and so its generation */
    lp_list_t link;                  /* in the inbox's `waits` while alive */
    struct cache_wait_s *inbox_next; /* borrowed: in inbox->head once notified (inbox lock) */
    uint64_t window;                 /* ms: the wait ends after this long without the fill's
                                        progress (lp_cache_wait_quiet) */
    uint8_t done;                    /* ended: the timer is closing, nothing else may touch it */
    uint8_t task_gone;               /* its task ended first: lw.task may be freed, never wake it */
} cache_wait_t;

static void wait_on_closed(uv_handle_t *h)
{
    cache_wait_t *cw = h->data;
    lp_cache_zone_release(cw->zone);
    free(cw);
}

/* Ends a wait on its worker's thread: wakes the task (unless the task itself ended) and lets
 * the wait go. */
static void wait_end(cache_wait_t *cw, int wake)
{
    if (cw->done)
        return;
    cw->done = 1;
    lp_list_remove(&cw->link);
    lp_lua_disown(&cw->owned);
    if (wake && !cw->task_gone)
        lp_lua_unpark(cw->lw);
    uv_timer_stop(&cw->timer);
    uv_close((uv_handle_t *)&cw->timer, wait_on_closed);
}

/* notify (any thread, under the zone's lock): hand the wait over to its worker. */
static void wait_notify(lp_cache_waiter_t *base)
{
    cache_wait_t *cw = (cache_wait_t *)base;
    lp_cache_inbox_t *in = cw->w->cache_inbox;
    uv_mutex_lock(&in->lock);
    cw->inbox_next = in->head;
    in->head = cw;
    uv_mutex_unlock(&in->lock);
    uv_async_send(&in->async);
}

static void watches_drain(lp_cache_inbox_t *in);

static void inbox_drain(lp_cache_inbox_t *in)
{
    uv_mutex_lock(&in->lock);
    cache_wait_t *cw = in->head;
    in->head = NULL;
    uv_mutex_unlock(&in->lock);
    while (cw) {
        cache_wait_t *next = cw->inbox_next;
        wait_end(cw, 1);
        cw = next;
    }
    watches_drain(in);
}

static void on_inbox(uv_async_t *a)
{
    inbox_drain(a->data);
}

static void on_wait_timeout(uv_timer_t *t)
{
    cache_wait_t *cw = t->data;
    /* A fill still receiving (a slow body) keeps its waiters: the bound counts from its last
     * progress, looked at only here, when the bound comes. Quiet for the whole window and
     * still registered: it ends here. Else notify ran and the inbox ends it. */
    int64_t left = lp_cache_wait_quiet(cw->zone, &cw->base, uv_now(&cw->w->loop), cw->window);
    if (left > 0)
        uv_timer_start(&cw->timer, on_wait_timeout, (uint64_t)left + 1, 0);
    else if (left == 0)
        wait_end(cw, 1);
}

static void on_wait_task_end(lp_lua_owned_t *o)
{
    cache_wait_t *cw = LP_CONTAINER_OF(o, cache_wait_t, owned);
    cw->task_gone = 1;
    if (lp_cache_wait_cancel(cw->zone, &cw->base))
        wait_end(cw, 0);
    /* else: handed over to the inbox (or on its way): it ends there, without a wake. */
}

static lp_cache_inbox_t *inbox_of(lp_worker_t *w)
{
    if (w->cache_inbox)
        return w->cache_inbox;
    lp_cache_inbox_t *in = calloc(1, sizeof(*in));
    if (!in)
        return NULL;
    if (uv_async_init(&w->loop, &in->async, on_inbox)) {
        free(in);
        return NULL;
    }
    in->async.data = in;
    uv_mutex_init(&in->lock);
    lp_list_init(&in->waits);
    w->cache_inbox = in;
    return in;
}

static void inbox_on_closed(uv_handle_t *h)
{
    lp_cache_inbox_t *in = h->data;
    uv_mutex_destroy(&in->lock);
    free(in);
}

void lp_cache_worker_close(lp_worker_t *w)
{
    lp_cache_inbox_t *in = w->cache_inbox;
    if (!in)
        return;
    while (!lp_list_empty(&in->waits)) {
        cache_wait_t *cw = LP_CONTAINER_OF(in->waits.next, cache_wait_t, link);
        if (lp_cache_wait_cancel(cw->zone, &cw->base))
            wait_end(cw, 0);
        else
            inbox_drain(in); /* it was handed over: it ends there */
    }
    inbox_drain(in);
    w->cache_inbox = NULL;
    uv_close((uv_handle_t *)&in->async, inbox_on_closed);
}

/* ---- fill streams: a coalesced waiter answered as the entry fills ---- */

/* A request reading an entry as it fills, waiting for its next bytes: registered with the
 * store (lp_cache_fill_watch) while `armed`, notified on the filler's thread (under the
 * zone's lock), handed over to the reader's worker through its inbox, which resumes the
 * answer's pump. Made and freed on the reader's worker thread: one per answer, used for each
 * of its waits. A request that lets go while it is handed over leaves it to the inbox. */
typedef struct lp_cache_fill_watch_s {
    lp_cache_waiter_t base;                   /* first: notify's argument */
    lp_req_t *req;                            /* borrowed: the reader; NULL once it let go
                                                 (the inbox frees the watch then) */
    lp_worker_t *w;                           /* borrowed: the reader's worker */
    lp_cache_zone_t *zone;                    /* borrowed: the entry's (the request's
                                                 generation holds it while `req` does) */
    struct lp_cache_fill_watch_s *inbox_next; /* borrowed: in the inbox's list (inbox lock) */
    uint8_t armed;                            /* registered or handed over, not drained yet */
} fill_watch_t;

static fill_watch_t *watch_new(lp_req_t *r, lp_cache_zone_t *zone)
{
    if (!inbox_of(r->w))
        return NULL;
    fill_watch_t *fw = calloc(1, sizeof(*fw));
    if (!fw)
        return NULL;
    fw->base.notify = watch_notify;
    fw->req = r;
    fw->w = r->w;
    fw->zone = zone;
    return fw;
}

/* The request lets go of its watch: freed now unless notify handed it over already. */
static void watch_free(fill_watch_t *fw)
{
    if (fw->armed && !lp_cache_wait_cancel(fw->zone, &fw->base)) {
        fw->req = NULL; /* in the inbox (or on its way): freed there */
        return;
    }
    free(fw);
}

/* notify (the filler's thread, under the zone's lock): to the reader's worker. */
static void watch_notify(lp_cache_waiter_t *base)
{
    fill_watch_t *fw = (fill_watch_t *)base;
    lp_cache_inbox_t *in = fw->w->cache_inbox;
    uv_mutex_lock(&in->lock);
    fw->inbox_next = in->watches;
    in->watches = fw;
    uv_mutex_unlock(&in->lock);
    uv_async_send(&in->async);
}

static void watches_drain(lp_cache_inbox_t *in)
{
    uv_mutex_lock(&in->lock);
    fill_watch_t *fw = in->watches;
    in->watches = NULL;
    uv_mutex_unlock(&in->lock);
    while (fw) {
        fill_watch_t *next = fw->inbox_next;
        fw->armed = 0;
        if (!fw->req)
            free(fw);
        else
            lp_conn_cache_resume(fw->req); /* may end the request (and free fw) */
        fw = next;
    }
}

int lp_cache_req_fill_next(lp_req_t *r, const char **p, size_t *n)
{
    lp_req_cache_t *rc = &r->cache;
    fill_watch_t *fw = rc->watch;
    for (;;) {
        lp_cache_fill_cursor_t cur = {rc->chunk, rc->chunk_off};
        int got = lp_cache_fill_read(rc->body, &cur, p, n);
        rc->chunk = cur.c;
        rc->chunk_off = cur.off;
        if (got || fw->armed)
            return got; /* armed: a resume before the fill's next bytes came */
        if (!lp_cache_fill_watch(fw->zone, rc->body, &fw->base))
            continue; /* its fill ended meanwhile: read again */
        fw->armed = 1;
        /* Registered: bytes that came meanwhile are read now (the filler may have looked for
         * readers before this one was counted). */
        const char *pp;
        size_t nn;
        if (!lp_cache_fill_read(rc->body, &cur, &pp, &nn))
            return 0; /* the fill's next bytes resume the pump */
        if (lp_cache_wait_cancel(fw->zone, &fw->base)) {
            fw->armed = 0;
        } else {
            /* Notified meanwhile: that hand-over ends in the inbox (a harmless resume);
             * this answer takes a new watch. */
            fw->req = NULL;
            if (!(fw = rc->watch = watch_new(r, fw->zone)))
                return -1;
        }
    }
}

/* ---- FFI ---- */

void *lp_ffi_cache_zone(const char *name, size_t n)
{
    /* The registry holds every zone a live config declares; cache.lua asks only for names its
     * own config declares, and its generation's config holds the reference. */
    return lp_cache_zone_find(name, n);
}

/* Whether a hit on e would leave r's header arrays no room for e's fields and a hit's own. */
static inline int too_wide(const lp_req_t *r, const lp_cache_entry_t *e)
{
    return lp__cache_entry_fields(e) + LP_CACHE_HIT_FIELDS > r->cap_headers;
}

int lp_ffi_cache_get(void *rp, void *zone, const char *key, size_t klen, const char *sec,
                     size_t slen, lp_str_t *head, double *body_len)
{
    lp_req_t *r = rp;
    if (!lp__lua_runs(r))
        return LP_FFI_EOTHER;
    lp_req_cache_t *rc = &r->cache;
    /* The engine looked this key up just before (cache_native.c): its entry, not a second
     * lookup, when it is in memory. One on disk only is looked up again: another request
     * may have read it back and promoted it since (its read-back lock is free again), and
     * reading back the stale one would be a second read-back of the key. */
    lp_cache_entry_t *kept = NULL;
    if (rc->native_kept && rc->hit && rc->hit_zone == zone && lp_cache_entry_resident(rc->hit) &&
        lp_cache_entry_same(rc->hit, key, klen, sec, slen)) {
        kept = rc->hit;
        rc->hit = NULL;
    }
    rc->native_kept = 0;
    rc->hit_filling = 0;
    lp_cache_entry_unref(rc->hit);
    rc->hit = kept ? kept : lp_cache_get(zone, key, klen, sec, slen, real_now());
    int unfit = 0; /* an entry is there, this request cannot carry it: answers 4, not 0 */
    if (rc->hit && too_wide(r, rc->hit)) {
        /* This request's header arrays were made before a wider head was stored or indexed,
         * or while no zone held one (cache_room.c): a hit on it would have no room for its
         * fields. As a miss, never a 500 for want of slots; the entry stays for the requests
         * made since. */
        lp_cache_entry_unref(rc->hit);
        rc->hit = NULL;
        unfit = 1;
    }
    int waited = rc->load_waited; /* this lookup follows a wait for another's read-back */
    rc->load_waited = 0;
    if (rc->hit && !lp_cache_entry_resident(rc->hit)) {
        /* On disk only: read back first (the task waits), then asked again (cache.lua). A
         * large body is streamed from its file instead (through the route's body filters,
         * if any, a block at a time): the file is checked and kept open, and the hit is the
         * disk-only entry. */
        lp_cache_entry_t *stub = rc->hit;
        rc->hit = NULL;
        int again = 0;
        if (rc->load_done) {
            lp_cache_entry_t *e = rc->loaded;
            rc->loaded = NULL;
            rc->load_done = 0;
            /* The file's head, which a 304 may have replaced in the index since: checked
             * again. */
            if (e && too_wide(r, e)) {
                lp_cache_entry_unref(e);
                e = NULL;
                unfit = 1;
            }
            if (e && lp_cache_entry_same(e, key, klen, sec, slen) &&
                (lp_cache_entry_resident(e) || lp_cache_stream_entry_is(rc->stream, e)))
                rc->hit = e;
            else
                lp_cache_entry_unref(e);
        } else {
            int stream = lp_cache_entry_body_len(stub) > LP_CACHE_STREAM_MIN;
            /* Read-backs of one entry are coalesced: the one reading it back holds the key's
             * lock until it is promoted, the others wait on the key, then find it in memory
             * (once: after a wait, each reads back itself). Streams are not: each reads its
             * own part of the file. */
            lp_cache_fill_t *lock = NULL;
            int busy = 0;
            if (!stream && !waited && !rc->fill)
                lock =
                    lp_cache_lock_readback(zone, key, klen, LP_CACHE_LOAD_LOCK, real_now(), &busy);
            if (busy) {
                lp_cache_entry_unref(stub);
                rc->load_waited = 1;
                return 3;
            }
            again = lp_cache_disk_load(r, zone, stub, stream, lock) == 0;
        }
        lp_cache_entry_unref(stub);
        if (again)
            return 2;
    } else if (rc->load_done) {
        lp_cache_entry_unref(rc->loaded); /* promoted meanwhile: the lookup found it */
        rc->loaded = NULL;
        rc->load_done = 0;
    }
    rc->hit_zone = rc->hit ? zone : NULL;
    if (!rc->hit)
        return unfit ? 4 : 0;
    for (;;) {
        size_t n = lp_cache_entry_head(zone, rc->hit, scratch, scratch_cap);
        if (n <= scratch_cap) {
            *head = (lp_str_t){scratch, n};
            break;
        }
        if (scratch_reserve(n)) {
            lp_cache_entry_unref(rc->hit);
            rc->hit = NULL;
            return LP_FFI_ENOSPACE;
        }
    }
    *body_len = (double)lp_cache_entry_body_len(rc->hit);
    return 1;
}

int lp_ffi_cache_get_filling(void *rp, void *zone, const char *key, size_t klen, const char *sec,
                             size_t slen, lp_str_t *head, double *hint)
{
    lp_req_t *r = rp;
    if (!lp__lua_runs(r))
        return LP_FFI_EOTHER;
    lp_req_cache_t *rc = &r->cache;
    /* An HTTP/1.0 client's answer without a length ends at the connection's close, which a
     * fill failing mid-body would make look whole (review): it waits for the whole entry. */
    if (!r->h2s && r->minor == 0)
        return 0;
    uint64_t h = 0;
    lp_cache_entry_t *e = lp_cache_get_filling(zone, key, klen, sec, slen, &h);
    if (e && too_wide(r, e)) {
        lp_cache_entry_unref(e); /* no room for its fields: this request goes upstream */
        e = NULL;
    }
    if (!e)
        return 0;
    for (;;) {
        size_t n = lp_cache_entry_head(zone, e, scratch, scratch_cap);
        if (n <= scratch_cap) {
            *head = (lp_str_t){scratch, n};
            break;
        }
        if (scratch_reserve(n)) {
            lp_cache_entry_unref(e);
            return LP_FFI_ENOSPACE;
        }
    }
    lp_cache_entry_unref(rc->hit);
    rc->hit = e;
    rc->hit_zone = zone;
    rc->hit_filling = 1;
    rc->native_kept = 0;
    rc->fill_hint = h;
    *hint = (double)h;
    return 1;
}

int lp_ffi_cache_lock(void *rp, void *zone, const char *key, size_t klen, double timeout)
{
    lp_req_t *r = rp;
    if (!lp__lua_runs(r))
        return LP_FFI_EOTHER;
    if (r->cache.fill)
        return 1; /* this request holds one already (a revalidation after a wait) */
    int busy;
    r->cache.fill = lp_cache_lock(zone, key, klen, timeout, real_now(), &busy);
    if (r->cache.fill)
        return 1;
    return busy ? 0 : LP_FFI_ENOSPACE;
}

int lp_ffi_cache_locked(void *zone, const char *key, size_t klen)
{
    return lp_cache_locked(zone, key, klen);
}

int lp_ffi_cache_wait(void *zone, const char *key, size_t klen, double seconds, int early)
{
    lp_worker_t *w = lp_lua_io();
    if (!w || !lp_lua_running() || lp_lua_loading() || !(seconds > 0 && seconds < 1e6))
        return LP_FFI_EPHASE;
    lp_cache_inbox_t *in = inbox_of(w);
    cache_wait_t *cw = in ? calloc(1, sizeof(*cw)) : NULL;
    if (!cw)
        return LP_FFI_ENOSPACE;
    cw->w = w;
    cw->zone = zone;
    cw->base.notify = wait_notify;
    cw->base.early = early != 0;
    cw->owned.release = on_wait_task_end;
    int got = lp_cache_wait(zone, key, klen, &cw->base);
    if (got != 1) {
        free(cw); /* the fill ended meanwhile (0: look again), or its head is ready (2) */
        return got;
    }
    lp_cache_zone_hold(zone);
    /* Parked after registering: a notify from another thread only queues the wait for this
     * thread, which ends it (and wakes the task) on a later turn, after Lua yielded. */
    lp_lua_park(&cw->lw);
    lp_lua_own(&cw->owned);
    lp_list_insert_tail(&in->waits, &cw->link);
    uv_timer_init(&w->loop, &cw->timer);
    cw->timer.data = cw;
    cw->window = (uint64_t)(seconds * 1000.0) + 1;
    uv_timer_start(&cw->timer, on_wait_timeout, cw->window, 0);
    return 1;
}

int lp_ffi_cache_store(void *rp, void *zone, const char *key, size_t klen, const char *sec,
                       size_t slen, const char *head, size_t hlen, double keep)
{
    if (!lp__lua_runs(rp))
        return LP_FFI_EOTHER;
    return lp__cache_store(rp, zone, key, klen, sec, slen, head, hlen, keep);
}

/* A head of at most this many fields leaves a hit room under any config: the smallest
 * limits.max_headers the schema takes (1) plus LP_HEADERS_SPARE, less the hit's own
 * (LP_CACHE_HIT_FIELDS). Such a head needs neither lp_cache_fields_fit's check nor its note
 * (lp_cache_room_cap never has to grow for it): most heads, and no call for them. */
#define FIELDS_ALWAYS_FIT (1 + LP_HEADERS_SPARE - LP_CACHE_HIT_FIELDS)

/* lp__cache_store and _store_fields: the checks, then the fill starts (r->cache.fill) for a
 * head of hlen bytes holding nfields fields (head NULL: the caller writes it, at
 * lp_cache_fill_head). 0, or an LP_FFI_E* code. */
static inline __attribute__((always_inline)) int
store_start(lp_req_t *r, lp_cache_zone_t *zone, const char *key, size_t klen, const char *sec,
            size_t slen, const char *head, size_t hlen, size_t nfields, double keep_until)
{
    /* Only an upstream's body can be gathered: a HEAD's has none, a local answer is not one. */
    if ((r->flags & (LP_RF_HEAD | LP_RF_LOCAL)) || !r->try.peer)
        return LP_FFI_EINVAL;
    const lp_h1_t *h = &r->try.peer->h1;
    uint64_t hint = (h->flags & LP_H1F_LENGTH) ? h->content_length : 0;
    lp_cache_fill_t *f = r->cache.fill;
    if (f && lp__cache_fill_active(f))
        return LP_FFI_EINVAL; /* stored once already */
    if (nfields > FIELDS_ALWAYS_FIT && !lp_cache_fields_fit(r->w, zone, key, klen, nfields))
        return LP_FFI_ENOSPACE; /* a hit on it could not carry its own fields */
    r->cache.fill = NULL;
    f = lp_cache_fill_start(zone, f, key, klen, sec, slen, head, hlen, keep_until, hint);
    if (!f)
        return LP_FFI_ENOSPACE; /* too large, key too long, or out of memory */
    lp__cache_entry_set_fields(f->e, nfields);
    if (head)
        lp__cache_fill_ready_new(f); /* its waiters may read it as it fills */
    r->cache.fill = f; /* an empty body is complete with the response (lp_cache_req_done) */
    lp__cache_fill_progress(f, loop_ms(r->w)); /* the head came */
    return 0;
}

int lp__cache_store(lp_req_t *r, lp_cache_zone_t *zone, const char *key, size_t klen,
                    const char *sec, size_t slen, const char *head, size_t hlen, double keep)
{
    return store_start(r, zone, key, klen, sec, slen, head, hlen, lp_cache_head_fields(head, hlen),
                       real_now() + keep);
}

int lp_ffi_cache_put(void *zone, const char *key, size_t klen, const char *sec, size_t slen,
                     const char *head, size_t hlen, const char *body, size_t blen, double keep)
{
    if (keep < 0) {
        /* Kept for no time: what was there goes, nothing is stored (the plugin ends its
         * refresh marker so; an expired entry would stay linked until a lookup met it). */
        lp_cache_remove(zone, key, klen, sec, slen);
        return 0;
    }
    size_t nfields = lp_cache_head_fields(head, hlen);
    if (!lp_cache_fields_fit(lp_lua_io(), zone, key, klen, nfields))
        return LP_FFI_ENOSPACE;
    lp_cache_fill_t *f =
        lp_cache_fill_start(zone, NULL, key, klen, sec, slen, head, hlen, real_now() + keep, blen);
    if (!f)
        return LP_FFI_ENOSPACE;
    lp_cache_fill_fields(f, nfields);
    if (blen && lp_cache_fill_append(f, body, blen)) {
        lp_cache_fill_abandon(f);
        return LP_FFI_ENOSPACE;
    }
    return lp_cache_fill_commit(f) ? LP_FFI_ENOSPACE : 0;
}

/* lp__cache_answer's body from an entry still filling (lp_ffi_cache_get_filling): the whole
 * of it, streamed as it comes (conn.c's fill stream), or none (a 304). */
static int fill_answer(lp_req_t *r, lp_req_cache_t *rc, int status, double first)
{
    int none = first <= -2 || status == 204 || status == 304;
    if (first >= 0)
        return LP_FFI_EINVAL; /* a range waits for the whole entry (the plugin's plain only) */
    lp_cache_req_body_done(r);
    free(r->resp.local_body);
    r->resp.local_body = NULL;
    if (rc->watch)
        watch_free(rc->watch); /* an earlier answer's */
    rc->watch = NULL;
    if (!none && !(rc->watch = watch_new(r, rc->hit_zone)))
        return LP_FFI_ENOSPACE;
    rc->body = lp_cache_entry_ref(rc->hit);
    rc->streaming = none ? 0 : LP_CACHE_STREAM_FILL;
    rc->chunk = NULL;
    rc->chunk_off = 0;
    rc->left = none ? 0 : rc->fill_hint ? rc->fill_hint : UINT64_MAX;
    r->resp.local_body_len = none ? 0 : (size_t)rc->fill_hint;
    r->resp.status = status;
    r->flags |= LP_RF_LOCAL;
    return 0;
}

int lp__cache_answer(lp_req_t *r, int status, const char *fields, size_t flen, int checked,
                     const char *more, size_t mlen, double first, double last)
{
    lp_req_cache_t *rc = &r->cache;
    if (!rc->hit || status < 200 || status > 999)
        return LP_FFI_EINVAL;
    int hrc = lp__resp_begin(r);
    if (!hrc)
        hrc = lp__resp_add_wire(r, fields, flen, checked);
    if (!hrc)
        hrc = lp__resp_add_wire(r, more, mlen, 0);
    if (hrc)
        return hrc;
    if (rc->hit_filling)
        return fill_answer(r, rc, status, first);
    uint64_t len = lp_cache_entry_body_len(rc->hit);
    uint64_t from = 0, to = len; /* [from, to) */
    if (first <= -2 || status == 204 || status == 304) {
        to = 0; /* an answer without the entry's body (304, 412, 416) */
    } else if (first >= 0) {
        if (first >= (double)len || last < first)
            return LP_FFI_EINVAL;
        from = (uint64_t)first;
        to = last >= (double)len ? len : (uint64_t)last + 1;
    }
    body_done(r);
    free(r->resp.local_body);
    r->resp.local_body = NULL;
    if (!lp_cache_entry_resident(rc->hit)) {
        /* A streamed disk-only hit: its file, from the first byte served. */
        uint64_t off = first >= 0 && to ? (uint64_t)first : 0;
        if (!lp_cache_stream_entry_is(rc->stream, rc->hit) ||
            lp_cache_stream_start(rc->stream, r, off, to > off ? to - off : 0))
            return LP_FFI_EINVAL;
        rc->body = lp_cache_entry_ref(rc->hit);
        rc->streaming = 1;
        rc->left = to > off ? to - off : 0;
    } else {
        rc->body = lp_cache_entry_ref(rc->hit);
        rc->chunk = lp_cache_entry_chunks(rc->body);
        rc->chunk_off = 0;
        while (rc->chunk && from >= rc->chunk->len) {
            from -= rc->chunk->len;
            rc->chunk = rc->chunk->next;
        }
        rc->chunk_off = (size_t)from;
        rc->left = to - (first >= 0 && to ? (uint64_t)first : 0);
    }
    r->resp.local_body_len = (size_t)rc->left;
    r->resp.status = status;
    r->flags |= LP_RF_LOCAL;
    return 0;
}

/* The answer's fields, as "Name: value\r\n" lines (wire form: a hit's stored fields are
 * serialised once per head, lua/luaproxy/cache.lua, then come its own), replace the
 * response's. */
int lp_ffi_cache_respond(void *rp, int status, const char *fields, size_t flen, const char *more,
                         size_t mlen, double first, double last, int flags)
{
    lp_req_t *r = rp;
    if (!lp__lua_runs(r))
        return LP_FFI_EOTHER;
    int rc = lp__cache_answer(r, status, fields, flen, flags & LP_FFI_CACHE_FIELDS_CHECKED, more,
                              mlen, first, last);
    if (rc)
        return rc;
    /* The request phase ends here (as req:respond()); in the response phase the plugins that
     * follow still run and see this answer. */
    if (!(r->flags & LP_RF_NO_LUA_RESP)) {
        lp__lua_mark_responded();
        /* The response phase's only hook is the caller's, which has nothing to do for its
         * own answer (a cache hit): the engine skips the phase (conn_run_phase). */
        if (flags & LP_FFI_CACHE_ONLY_HOOK)
            r->flags |= LP_RF_NO_LUA_RESP;
    }
    return 0;
}

int lp_ffi_cache_wire_check(const char *fields, size_t flen)
{
    return lp__wire_valid(fields, flen);
}

double lp_ffi_cache_read(void *rp, double first, char *dst, double n)
{
    lp_req_t *r = rp;
    if (!lp__lua_runs(r))
        return LP_FFI_EOTHER;
    const lp_cache_entry_t *e = r->cache.hit;
    if (!e || first < 0 || n < 0)
        return LP_FFI_EINVAL;
    if (r->cache.hit_filling || !lp_cache_entry_resident(e))
        return LP_FFI_ENOTFOUND; /* a streamed hit's body is in its file only, a filling
                                    entry's not all there */
    uint64_t len = lp_cache_entry_body_len(e);
    uint64_t from = (uint64_t)first;
    if (from >= len)
        return 0;
    uint64_t want = len - from < (uint64_t)n ? len - from : (uint64_t)n;
    const lp_cache_chunk_t *c = lp_cache_entry_chunks(e);
    while (c && from >= c->len) {
        from -= c->len;
        c = c->next;
    }
    uint64_t got = 0;
    for (; c && got < want; c = c->next, from = 0) {
        size_t k = c->len - (size_t)from;
        if (k > want - got)
            k = (size_t)(want - got);
        memcpy(dst + got, c->data + from, k);
        got += k;
    }
    return (double)got;
}

double lp_ffi_cache_upstream_length(void *rp)
{
    lp_req_t *r = rp;
    if (!lp__lua_runs(r))
        return LP_FFI_EOTHER;
    if ((r->flags & LP_RF_LOCAL) || !lp__cache_body_sized(r))
        return -1;
    const lp_h1_t *rh = &r->try.peer->h1;
    return (rh->flags & LP_H1F_LENGTH) ? (double)rh->content_length : 0; /* 0: no body (204) */
}

int lp_ffi_cache_window(void *rp, double first, double n)
{
    lp_req_t *r = rp;
    if (!lp__lua_runs(r))
        return LP_FFI_EOTHER;
    /* The upstream's body, of a length it said, is what the window is cut from. */
    if (!r->try.peer || (r->flags & LP_RF_LOCAL))
        return LP_FFI_EINVAL;
    const lp_h1_t *rh = &r->try.peer->h1;
    if (!(rh->flags & LP_H1F_LENGTH) || (rh->flags & LP_H1F_CHUNKED) || !(first >= 0) ||
        !(n >= 0) || first + n > (double)rh->content_length)
        return LP_FFI_EINVAL;
    r->resp.win = 1;
    r->resp.win_skip = (uint64_t)first;
    r->resp.win_len = (uint64_t)n;
    return 0;
}

int lp_ffi_cache_refresh(void *rp, const char *head, size_t hlen, double keep)
{
    lp_req_t *r = rp;
    if (!lp__lua_runs(r))
        return LP_FFI_EOTHER;
    if (!r->cache.hit)
        return LP_FFI_EINVAL;
    size_t nfields = lp_cache_head_fields(head, hlen);
    if (!lp_cache_fields_fit(r->w, r->cache.hit_zone, "(a revalidated entry)", 21, nfields))
        return LP_FFI_ENOSPACE; /* it keeps its old head: the next request revalidates */
    return lp_cache_entry_set_head(r->cache.hit_zone, r->cache.hit, head, hlen, nfields,
                                   real_now() + keep)
               ? LP_FFI_ENOSPACE
               : 0;
}

double lp_ffi_cache_purge(void *zone, int mode, const char *key, size_t klen)
{
    return (double)lp_cache_purge(zone, mode, key, klen);
}

void lp_ffi_cache_count(void *zone, int what)
{
    lp_cache_count(zone, what);
}

/* ---- the hot path without header tables ---- */

int lp__cache_field_index(lp_str_t n)
{
    return field_index(n);
}

int lp_ffi_cache_fields(void *rp, int resp)
{
    return fields_mask(rp, resp);
}

int lp_ffi_cache_store_fields(void *rp, void *zone, const char *key, size_t klen, const char *sec,
                              size_t slen, const char *meta, size_t mlen, double keep)
{
    if (!lp__lua_runs(rp))
        return LP_FFI_EOTHER;
    lp_str_t m = {meta, mlen};
    return lp__cache_store_fields(rp, zone, key, klen, sec, slen, &m, 1,
                                  lp_cache_head_fields(meta, mlen), real_now() + keep, NULL);
}

int lp__cache_store_fields(lp_req_t *r, lp_cache_zone_t *zone, const char *key, size_t klen,
                           const char *sec, size_t slen, const lp_str_t *meta, size_t nmeta,
                           size_t meta_fields, double keep_until,
                           const lp_cache_fields_size_t *sized)
{
    const lp_header_t *v;
    unsigned n = fields_of(r, 1, &v);
    lp_cache_fields_size_t sz = {0, 0, 0};
    if (sized)
        sz = *sized;
    else
        for (unsigned i = 0; i < n; i++)
            size_field(&sz, &v[i], never_stored(v[i].name));
    size_t need = sz.need, nfields = meta_fields + sz.nfields;
    for (size_t i = 0; i < nmeta; i++)
        need += meta[i].len;
    int skip = sz.skip; /* some field is not stored: the writing loop tests each again */
    /* Written straight into the entry's block (no copy of the head made first). */
    int rc = store_start(r, zone, key, klen, sec, slen, NULL, need, nfields, keep_until);
    if (rc)
        return rc;
    char *p = lp__cache_fill_head(r->cache.fill);
    for (size_t i = 0; i < nmeta; i++)
        p = put_short(p, meta[i].base, meta[i].len);
    for (unsigned i = 0; i < n; i++) {
        lp_str_t name = v[i].name, value = v[i].value;
        if (skip && never_stored(name))
            continue;
        *p++ = 'h';
        *p++ = ' ';
        p = put_short(p, name.base, name.len);
        *p++ = '\t';
        p = put_short(p, value.base, value.len);
        *p++ = '\n';
    }
    lp__cache_fill_ready_new(r->cache.fill); /* its waiters may read it as it fills */
    return 0;
}

/* The common miss's Cache-Status (RFC 9211) as the cache plugin wrote it, added in one
 * pass: its name and value are ours (no field checks), and the plugin calls this only when
 * the response has no Cache-Status of its own (nothing to replace). */
int lp_ffi_cache_miss_status(void *rp, int status, int stored, double ttl)
{
    if (!lp__lua_runs(rp))
        return LP_FFI_EOTHER;
    return lp__cache_miss_status(rp, status, stored, ttl);
}

size_t lp__cache_miss_status_line(char *line, int status, int stored, double ttl)
{
    if (status < 100 || status > 999)
        return 0;
    static const char pre[] = "Cache-Status: luaproxy; fwd=uri-miss; fwd-status=";
    static const char st[] = "; stored; ttl=";
    _Static_assert(sizeof pre + sizeof st + 48 <= LP_CACHE_MISS_LINE, "room for the line");
    char *p = line;
    memcpy(p, pre, sizeof pre - 1);
    p += sizeof pre - 1;
    p += lp_u64_to_str((uint64_t)status, 10, p);
    if (stored) {
        memcpy(p, st, sizeof st - 1);
        p += sizeof st - 1;
        /* floor(ttl) as the plugin's format("%d", floor(ttl)); bounded: a stored TTL is far
         * below 1e15 seconds. */
        double f = floor(ttl);
        if (f < -1e15)
            f = -1e15;
        if (f > 1e15)
            f = 1e15;
        if (f < 0) {
            *p++ = '-';
            f = -f;
        }
        p += lp_u64_to_str((uint64_t)f, 10, p);
    }
    *p++ = '\r';
    *p++ = '\n';
    return (size_t)(p - line);
}

int lp__cache_miss_status(lp_req_t *r, int status, int stored, double ttl)
{
    char line[LP_CACHE_MISS_LINE];
    size_t n = lp__cache_miss_status_line(line, status, stored && lp__cache_body_sized(r), ttl);
    if (!n)
        return LP_FFI_EINVAL;
    return lp__resp_add_line(r, line, n, LP_CACHE_STATUS_NAME_LEN);
}

int lp_ffi_cache_key(void *r, lp_str_t *out)
{
    size_t need = lp__cache_key_len(r);
    if (scratch_reserve(need))
        return LP_FFI_ENOSPACE;
    lp__cache_key_put(r, scratch);
    *out = (lp_str_t){scratch, need};
    return 0;
}
