/* A hit on a disk-only entry (cache_disk.h): its file is read back on libuv's threadpool
 * while the request's task is parked, checked whole (header CRC, key, stamp, size, body CRC)
 * before a byte of it is served, and the entry it makes is promoted into the memory tier
 * (served from there by the usual zero-copy pump). A damaged, changed or vanished file is
 * logged and dropped from the index; the request then sees a miss and goes upstream. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cache_disk.h"
#include "cache_disk_hit.h"
#include "cache_store_int.h"
#include "log.h"
#include "lua_vm.h"
#include "worker.h"

/* One read-back. Made on the request's worker thread; `work` runs on a pool thread and
 * touches only the fields below marked (pool); the rest is the worker thread's. */
typedef struct disk_load_s {
    uv_work_t work;           /* work.data = this */
    lp_lua_owned_t owned;     /* in its task's list while the task may be woken */
    lp_lua_waiter_t lw;       /* the parked task */
    lp_req_t *req;            /* borrowed: valid while !task_gone (the task is the request's) */
    lp_cache_zone_t *zone;    /* registry reference: the load may outlive its generation */
    lp_cache_entry_t *stub;   /* reference: the disk-only entry looked up */
    char path[4096];          /* (pool) the file */
    lp_cache_entry_t *loaded; /* owned (pool, then worker): the entry read back; NULL: failed */
    const char *err;          /* (pool) why it failed: a static string */
    uint8_t task_gone;        /* its task ended: never touch req, never wake it */
} disk_load_t;

static void load_work(uv_work_t *w)
{
    disk_load_t *l = w->data;
    lp_cache_entry_t *s = l->stub;
    int fd = open(l->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        l->err = errno == ENOENT ? "file vanished" : "cannot open";
        return;
    }
    lp_cdisk_hdr_t h;
    char *meta = NULL;
    lp_cache_chunk_t *chunks = NULL;
    const char *err = lp_cdisk_read_meta(fd, &h, &meta);
    /* The stub's key, sec and stamp are immutable (a new head gives a new entry a new stamp
     * under the zone lock; a stub's stamp never changes): read without the lock. */
    if (!err &&
        (h.klen != s->klen || h.slen != s->slen || memcmp(meta, s->key, s->klen + s->slen) != 0))
        err = "holds another key";
    if (!err && h.stamp != s->stamp)
        err = "replaced";
    if (!err && h.body_len != s->body_len)
        err = "body length differs from the index";
    if (!err)
        err = lp_cdisk_read_body(fd, &h, &chunks);
    close(fd);
    if (!err && !chunks)
        err = "empty";
    if (!err) {
        l->loaded = lp__cache_entry_new(meta, h.klen, meta + h.klen, h.slen, meta + h.klen + h.slen,
                                        h.hlen, h.body_len, h.keep_until, chunks);
        if (!l->loaded)
            err = "out of memory";
    }
    free(meta);
    l->err = err;
}

static void load_done(uv_work_t *w, int status)
{
    disk_load_t *l = w->data;
    lp_cache_zone_t *z = l->zone;
    lp_cache_entry_t *s = l->stub, *e = l->loaded, *dead = NULL;
    if (status && !l->err)
        l->err = "cancelled";
    int drop = 0;
    pthread_mutex_lock(&z->lock);
    if (e && !l->err) {
        /* Promoted when the stub is still the key's and the memory budget can hold it; else
         * the request is served from it alone. */
        if (s->linked && e->cost <= z->capacity) {
            lp__cache_replace(z, s, e, &dead);
            lp_cache_entry_ref(e); /* the zone's is the first; the request's this */
            lp__cache_evict(z, &dead);
        }
    } else if (s->linked && strcmp(l->err, "cancelled") != 0 &&
               strcmp(l->err, "out of memory") != 0) {
        lp__cache_unlink(z, s, &dead); /* its file is queued for deletion */
        drop = 1;
    }
    pthread_mutex_unlock(&z->lock);
    lp__cache_drop_dead(dead);
    if (drop) {
        lp_cache_count(z, LP_CACHE_C_DISK_DROPPED);
        lp_log(LP_LOG_WARN, "cache zone %s: dropped %s: %s (the request goes upstream)",
               lp_cache_zone_name(z), l->path, l->err);
    } else if (e && !l->err) {
        lp_cache_count(z, LP_CACHE_C_DISK_LOADED);
    }
    if (l->err && e) {
        lp_cache_entry_unref(e);
        e = NULL;
    }
    if (!l->task_gone) {
        lp_lua_disown(&l->owned);
        lp_req_cache_t *rc = &l->req->cache;
        rc->load_done = 1;
        lp_cache_entry_unref(rc->loaded);
        rc->loaded = e;
        lp_lua_unpark(l->lw);
    } else {
        lp_cache_entry_unref(e);
    }
    lp_cache_entry_unref(s);
    lp_cache_zone_release(z);
    free(l);
}

static void on_task_end(lp_lua_owned_t *o)
{
    disk_load_t *l = LP_CONTAINER_OF(o, disk_load_t, owned);
    l->task_gone = 1; /* the read cannot be called back: load_done frees it */
}

int lp_cache_disk_load(lp_req_t *r, lp_cache_zone_t *z, lp_cache_entry_t *stub)
{
    lp_worker_t *w = lp_lua_io();
    lp_lua_task_t *t = lp_lua_running();
    if (!w || !t || t->in_filter || lp_lua_loading())
        return -1;
    pthread_mutex_lock(&z->lock);
    lp_cdisk_t *d = z->disk; /* set once, under the lock; lives as long as the zone */
    pthread_mutex_unlock(&z->lock);
    disk_load_t *l = d ? calloc(1, sizeof(*l)) : NULL;
    if (!l)
        return -1;
    if (lp_cdisk_path(l->path, sizeof(l->path), lp_cdisk_root(d), stub->fid) >= sizeof(l->path) ||
        lp_lua_park(&l->lw)) {
        free(l);
        return -1;
    }
    l->work.data = l;
    l->req = r;
    l->zone = z;
    lp_cache_zone_hold(z);
    l->stub = lp_cache_entry_ref(stub);
    l->owned.release = on_task_end;
    lp_lua_own(&l->owned);
    if (uv_queue_work(&w->loop, &l->work, load_work, load_done)) {
        /* cannot happen with a valid loop; the task is parked: wake it on a miss */
        lp_lua_disown(&l->owned);
        r->cache.load_done = 1;
        lp_lua_unpark(l->lw);
        lp_cache_entry_unref(l->stub);
        lp_cache_zone_release(z);
        free(l);
    }
    return 0;
}
