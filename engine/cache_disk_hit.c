/* A hit on a disk-only entry (cache_disk.h). Two ways, both on libuv's threadpool while the
 * request's task is parked:
 * - read back whole (small bodies): checked whole (header
 *   CRC, key, stamp, size, body CRC) before a byte of it is served, and the entry it makes
 *   is promoted into the memory tier (served from there by the usual zero-copy pump);
 * - streamed (a body over LP_CACHE_STREAM_MIN, to an HTTP/1 or HTTP/2 client, through the
 *   route's response_body filters if any): the file is
 *   opened and its header, meta, key, stamp and size checked; the body is then read in
 *   chunks of LP_CACHE_CHUNK as the client takes them (lp_cache_stream_next: one read ahead
 *   at most, and none while the client's side, the socket's queue or the HTTP/2 stream's,
 *   holds the high watermark), so a large entry costs two chunks of memory, not its size.
 *   The body CRC is checked as the last chunk comes in, before it is sent: a damaged body
 *   is never sent whole (the connection, or the HTTP/2 stream, is cut short there: the
 *   client sees a truncated response) and the entry is dropped.
 * A damaged, changed or vanished file is logged and dropped from the index; found before
 * the answer, the request sees a miss and goes upstream. */
#include <errno.h>
#include <fcntl.h>
#include <zlib.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cache_disk.h"
#include "cache_disk_hit.h"
#include "cache_room.h"
#include "cache_store_int.h"
#include "conn.h"
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
    uint8_t open_only;        /* streamed: check the file and keep it open, read no body */
    lp_cache_fill_t *lock;    /* owned: the key's lock, dropped when done (its waiters then
                                 find the promoted entry); NULL: none */
    int fd;                   /* (pool, then worker) owned: the file kept open; -1: none */
    lp_cdisk_hdr_t hdr;       /* (pool) the file's header, when fd is kept */
} disk_load_t;

/* A disk-only entry's body read from its file as the client takes it (streamed hits). Made
 * by a check (lp_cache_disk_load, open_only) on the request's worker thread; its reads run
 * on the threadpool (uv_fs_read), their callbacks on that thread. */
struct lp_cache_stream_s {
    uv_fs_t fs;              /* the read in flight (fs.data = this) */
    lp_req_t *req;           /* borrowed: NULL once the request let go of it (a read's
                                callback then frees it) */
    lp_cache_zone_t *zone;   /* registry reference */
    lp_cache_entry_t *entry; /* reference: the disk-only entry whose file this is */
    int fd;                  /* owned: the file */
    uint64_t body_off;       /* where the body starts in the file */
    uint64_t body_len;       /* its length (the header's, checked against the index) */
    uint32_t body_crc;       /* the header's CRC of the body */
    uint64_t off;            /* body offset of the next read */
    uint64_t left;           /* body bytes still to read */
    uint32_t crc;            /* CRC of the body read so far (when `check`) */
    uint8_t check;           /* the whole body is read in order: its CRC is checked */
    uint8_t reading;         /* a read is in flight (fs and `buf` are the pool's) */
    lp_buf_t *buf;           /* owned reference: the block the read in flight fills */
    size_t want;             /* bytes that read asked for */
    lp_buf_t *ready;         /* owned reference: bytes read and not taken yet */
    size_t ready_len;
    const char *err; /* why it failed (static): later calls fail too */
};

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
    if (l->open_only) {
        /* Checked as below but for the body, whose CRC the stream checks as it reads it. */
        if (!err && (h.klen != s->klen || h.slen != s->slen ||
                     memcmp(meta, s->key, s->klen + s->slen) != 0))
            err = "holds another key";
        if (!err && h.stamp != s->stamp)
            err = "replaced";
        if (!err && h.body_len != s->body_len)
            err = "body length differs from the index";
        free(meta);
        if (err) {
            close(fd);
        } else {
            l->fd = fd;
            l->hdr = h;
        }
        l->err = err;
        return;
    }
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
        else /* the file's head: the index's may be a 304's since */
            lp__cache_entry_set_fields(l->loaded,
                                       lp_cache_head_fields(meta + h.klen + h.slen, h.hlen));
    }
    free(meta);
    l->err = err;
}

static lp_cache_stream_t *stream_new(disk_load_t *l);

static void load_done(uv_work_t *w, int status)
{
    disk_load_t *l = w->data;
    lp_cache_zone_t *z = l->zone;
    lp_cache_entry_t *s = l->stub, *e = l->loaded, *dead = NULL;
    if (status && !l->err)
        l->err = "cancelled";
    lp_cache_stream_t *opened = NULL;
    if (l->open_only && !l->err && l->fd >= 0 && !l->task_gone) {
        if (!(opened = stream_new(l)))
            l->err = "out of memory";
    }
    if (l->fd >= 0 && !opened) {
        close(l->fd);
        l->fd = -1;
    }
    int drop = 0;
    lp_mutex_lock(&z->lock);
    if (opened) {
        /* nothing to promote: the body stays in its file */
    } else if (e && !l->err) {
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
    lp_mutex_unlock(&z->lock);
    lp__cache_drop_dead(dead);
    if (drop) {
        lp_cache_count(z, LP_CACHE_C_DISK_DROPPED);
        lp_log(LP_LOG_WARN, "cache zone %s: dropped %s: %s (the request goes upstream)",
               lp_cache_zone_name(z), l->path, l->err);
    } else if ((e || opened) && !l->err) {
        lp_cache_count(z, opened ? LP_CACHE_C_DISK_STREAMED : LP_CACHE_C_DISK_LOADED);
    }
    if (l->err && e) {
        lp_cache_entry_unref(e);
        e = NULL;
    }
    if (opened)
        e = lp_cache_entry_ref(s); /* the hit is the disk-only entry itself */
    if (!l->task_gone) {
        lp_lua_disown(&l->owned);
        lp_req_cache_t *rc = &l->req->cache;
        rc->load_done = 1;
        lp_cache_entry_unref(rc->loaded);
        rc->loaded = e;
        if (opened) {
            lp_cache_stream_free(rc->stream);
            rc->stream = opened;
        }
        lp_lua_unpark(l->lw);
    } else {
        lp_cache_entry_unref(e);
    }
    /* The entry is promoted (or dropped): requests waiting on the key look again. */
    lp_cache_fill_abandon(l->lock);
    lp_cache_entry_unref(s);
    lp_cache_zone_release(z);
    free(l);
}

static void on_task_end(lp_lua_owned_t *o)
{
    disk_load_t *l = LP_CONTAINER_OF(o, disk_load_t, owned);
    l->task_gone = 1; /* the read cannot be called back: load_done frees it */
}

int lp_cache_disk_load(lp_req_t *r, lp_cache_zone_t *z, lp_cache_entry_t *stub, int stream,
                       lp_cache_fill_t *lock)
{
    lp_worker_t *w = lp_lua_io();
    lp_lua_task_t *t = lp_lua_running();
    if (!w || !t || t->in_filter || lp_lua_loading()) {
        lp_cache_fill_abandon(lock);
        return -1;
    }
    lp_mutex_lock(&z->lock);
    lp_cdisk_t *d = z->disk; /* set once, under the lock; lives as long as the zone */
    lp_mutex_unlock(&z->lock);
    disk_load_t *l = d ? calloc(1, sizeof(*l)) : NULL;
    if (!l) {
        lp_cache_fill_abandon(lock);
        return -1;
    }
    if (lp_cdisk_path(l->path, sizeof(l->path), lp_cdisk_root(d), stub->fid) >= sizeof(l->path) ||
        lp_lua_park(&l->lw)) {
        lp_cache_fill_abandon(lock);
        free(l);
        return -1;
    }
    l->lock = lock;
    l->work.data = l;
    l->open_only = stream != 0;
    l->fd = -1;
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
        lp_cache_fill_abandon(l->lock);
        lp_cache_entry_unref(l->stub);
        lp_cache_zone_release(z);
        free(l);
    }
    return 0;
}

/* ---- streamed hits ---- */

static lp_cache_stream_t *stream_new(disk_load_t *l)
{
    lp_cache_stream_t *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->fd = l->fd;
    l->fd = -1;
    s->zone = l->zone;
    lp_cache_zone_hold(s->zone);
    s->entry = lp_cache_entry_ref(l->stub);
    s->body_off = sizeof(l->hdr) + (uint64_t)l->hdr.klen + l->hdr.slen + l->hdr.hlen;
    s->body_len = l->hdr.body_len;
    s->body_crc = l->hdr.body_crc;
    s->fs.data = s;
    return s;
}

static void stream_release(lp_cache_stream_t *s)
{
    if (s->buf)
        lp_buf_unref(s->buf);
    if (s->ready)
        lp_buf_unref(s->ready);
    close(s->fd);
    lp_cache_entry_unref(s->entry);
    lp_cache_zone_release(s->zone);
    free(s);
}

void lp_cache_stream_free(lp_cache_stream_t *s)
{
    if (!s)
        return;
    if (s->reading) {
        s->req = NULL; /* the read's callback frees it */
        return;
    }
    stream_release(s);
}

int lp_cache_stream_entry_is(const lp_cache_stream_t *s, const lp_cache_entry_t *e)
{
    return s && s->entry == e && !s->err;
}

int lp_cache_stream_start(lp_cache_stream_t *s, lp_req_t *r, uint64_t from, uint64_t len)
{
    if (s->reading || s->err || from > s->body_len || len > s->body_len - from)
        return -1;
    if (s->ready) {
        lp_buf_unref(s->ready);
        s->ready = NULL;
    }
    s->req = r;
    s->off = from;
    s->left = len;
    s->check = from == 0 && len == s->body_len;
    s->crc = (uint32_t)crc32(0, Z_NULL, 0);
    return 0;
}

/* The file failed under a streamed answer: the entry goes from the index (its file with it),
 * logged once per file. */
static void stream_drop(lp_cache_stream_t *s)
{
    lp_cache_zone_t *z = s->zone;
    lp_cache_entry_t *dead = NULL;
    int dropped = 0;
    lp_mutex_lock(&z->lock);
    if (s->entry->linked) {
        lp__cache_unlink(z, s->entry, &dead);
        dropped = 1;
    }
    lp_cdisk_t *d = z->disk;
    lp_mutex_unlock(&z->lock);
    lp__cache_drop_dead(dead);
    if (!dropped)
        return;
    lp_cache_count(z, LP_CACHE_C_DISK_DROPPED);
    char path[4096];
    if (d && lp_cdisk_path(path, sizeof(path), lp_cdisk_root(d), s->entry->fid) < sizeof(path))
        lp_log(LP_LOG_WARN, "cache zone %s: dropped %s: %s (its answer was cut short)",
               lp_cache_zone_name(z), path, s->err);
}

static void stream_read_done(uv_fs_t *fs)
{
    lp_cache_stream_t *s = fs->data;
    ssize_t got = fs->result;
    uv_fs_req_cleanup(fs);
    s->reading = 0;
    lp_buf_t *b = s->buf;
    s->buf = NULL;
    if (!s->req) { /* the request let go meanwhile */
        lp_buf_unref(b);
        stream_release(s);
        return;
    }
    size_t want = s->want;
    if (got < 0 || (size_t)got != want) {
        lp_buf_unref(b);
        s->err = got < 0 ? "read failed" : "truncated body";
    } else {
        s->off += want;
        s->left -= want;
        if (s->check) {
            s->crc = (uint32_t)crc32(s->crc, (const unsigned char *)b->data, (uInt)want);
            if (!s->left && s->crc != s->body_crc)
                s->err = "body checksum mismatch";
        }
        if (s->err) {
            lp_buf_unref(b);
        } else {
            s->ready = b;
            s->ready_len = want;
        }
    }
    if (s->err)
        stream_drop(s);
    lp_conn_cache_resume(s->req); /* the pump takes it (or ends the answer on an error) */
}

/* Starts the next read: 0, or -1 (s->err set). */
static int stream_read(lp_cache_stream_t *s)
{
    size_t want = s->left < LP_CACHE_CHUNK ? (size_t)s->left : LP_CACHE_CHUNK;
    lp_buf_t *b = lp_buf_get(&s->req->w->bufs, want);
    if (!b) {
        s->err = "out of memory";
        return -1;
    }
    s->buf = b;
    s->want = want;
    uv_buf_t ub = uv_buf_init(b->data, (unsigned)want);
    s->reading = 1;
    if (uv_fs_read(&s->req->w->loop, &s->fs, s->fd, &ub, 1, (int64_t)(s->body_off + s->off),
                   stream_read_done)) {
        s->reading = 0;
        s->buf = NULL;
        lp_buf_unref(b);
        s->err = "read failed";
        return -1;
    }
    return 0;
}

int lp_cache_stream_next(lp_cache_stream_t *s, lp_buf_t **b, size_t *n)
{
    if (s->err)
        return -1;
    if (s->ready) {
        *b = s->ready;
        *n = s->ready_len;
        s->ready = NULL;
        if (s->left && !s->reading && stream_read(s)) /* one read ahead */ {
            lp_buf_unref(*b);
            return -1;
        }
        return 1;
    }
    if (!s->reading && s->left && stream_read(s))
        return -1;
    return 0;
}
