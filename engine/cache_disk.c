/* The response cache's disk tier: the zone's disk thread, which writes, deletes and scans its
 * files (cache_disk.h; the format is cache_disk_file.c). */
#include "cache_disk.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cache_room.h"
#include "cache_store_int.h"
#include "log.h"

/* ---- the disk thread ---- */

enum { JOB_WRITE, JOB_DELETE, JOB_PURGE };

typedef struct job_s {
    struct job_s *next; /* owned by the queue: the next job */
    int kind;
    lp_cache_entry_t *e; /* reference (JOB_WRITE) */
    uint64_t fid;        /* JOB_DELETE */
    int mode;            /* JOB_PURGE */
    size_t klen;
    char key[]; /* JOB_PURGE's key */
} job_t;

/* Writes beyond this many queued are skipped (the entry stays in memory only): a disk slower
 * than the traffic must not pin an unbounded number of evicted entries. */
#define MAX_QUEUED_WRITES 4096
#define DROPS_NAMED       10 /* damaged files logged by name at a start's scan (scan_file) */

/* One per zone with a disk. `mu` guards the queue and `stop`; the thread takes the zone's
 * lock on its own (never while holding `mu`). */
struct lp_cdisk_s {
    lp_cache_zone_t *zone; /* borrowed: the zone owns this */
    char *root;            /* owned */
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    job_t *head;       /* owned: FIFO */
    job_t **tail;      /* borrowed: where the next job goes */
    size_t writes;     /* JOB_WRITEs queued (mu) */
    int stop;          /* the zone goes: finish the queue, then end (mu) */
    atomic_int loaded; /* the scan is over */
    int last_errno;    /* the last write error logged (disk thread only): one line per
                          change, not one per entry, when the disk is full */
    uint64_t skipped;  /* writes skipped over MAX_QUEUED_WRITES (mu) */
};

static void enqueue(lp_cdisk_t *d, job_t *j)
{
    j->next = NULL;
    pthread_mutex_lock(&d->mu);
    *d->tail = j;
    d->tail = &j->next;
    if (j->kind == JOB_WRITE)
        d->writes++;
    pthread_cond_signal(&d->cv);
    pthread_mutex_unlock(&d->mu);
}

void lp_cdisk_queue_write(lp_cdisk_t *d, lp_cache_entry_t *e)
{
    pthread_mutex_lock(&d->mu);
    int full = d->writes >= MAX_QUEUED_WRITES;
    if (full)
        d->skipped++;
    pthread_mutex_unlock(&d->mu);
    job_t *j = full ? NULL : calloc(1, sizeof(*j));
    if (!j)
        return; /* stays in memory only */
    j->kind = JOB_WRITE;
    j->e = lp_cache_entry_ref(e);
    e->writing++;
    enqueue(d, j);
}

void lp_cdisk_queue_delete(lp_cdisk_t *d, uint64_t fid)
{
    job_t *j = calloc(1, sizeof(*j));
    if (!j) {
        lp_log(LP_LOG_ERROR, "cache zone %s: out of memory: file %016llx not deleted",
               d->zone->name, (unsigned long long)fid);
        return;
    }
    j->kind = JOB_DELETE;
    j->fid = fid;
    enqueue(d, j);
}

void lp_cdisk_queue_purge(lp_cdisk_t *d, int mode, const char *key, size_t klen)
{
    job_t *j = calloc(1, sizeof(*j) + klen + 1);
    if (!j)
        return;
    j->kind = JOB_PURGE;
    j->mode = mode;
    j->klen = klen;
    if (klen)
        memcpy(j->key, key, klen);
    enqueue(d, j);
}

int lp_cdisk_loaded(const lp_cdisk_t *d)
{
    return atomic_load(&d->loaded);
}

const char *lp_cdisk_root(const lp_cdisk_t *d)
{
    return d->root;
}

static void delete_file(lp_cdisk_t *d, uint64_t fid)
{
    char path[4096];
    if (lp_cdisk_path(path, sizeof(path), d->root, fid) < sizeof(path) && unlink(path) &&
        errno != ENOENT)
        lp_log(LP_LOG_WARN, "cache zone %s: cannot delete %s: %s", d->zone->name, path,
               strerror(errno));
}

/* Under the zone lock: the linked entry this write is for: e itself, or the disk-only entry
 * that replaced it when memory pushed it out before the write was done (same stamp). */
static lp_cache_entry_t *write_target(lp_cache_zone_t *z, lp_cache_entry_t *e, uint64_t stamp)
{
    if (e->linked)
        return e->stamp == stamp ? e : NULL;
    lp_cache_entry_t *s = lp__cache_find(z, e->hash, e->key, e->klen, e->sec, e->slen);
    return s && !s->resident && s->stamp == stamp ? s : NULL;
}

static void do_write(lp_cdisk_t *d, lp_cache_entry_t *e)
{
    lp_cache_zone_t *z = d->zone;
    lp_cdisk_hdr_t h;
    memset(&h, 0, sizeof(h));
    char *head = NULL;
    lp_cache_entry_t *dead = NULL;
    lp_mutex_lock(&z->lock);
    lp_cache_entry_t *t = write_target(z, e, e->stamp);
    if (t && (head = malloc(e->hlen ? e->hlen : 1))) {
        memcpy(head, e->head, e->hlen);
        h.hlen = (uint32_t)e->hlen;
        h.stamp = e->stamp;
        h.keep_until = e->keep_until;
    } else {
        e->writing--;
        if (t && t != e) /* out of memory: the stub would point at nothing */
            lp__cache_unlink(z, t, &dead);
    }
    lp_mutex_unlock(&z->lock);
    lp__cache_drop_dead(dead);
    if (!head) {
        lp_cache_entry_unref(e);
        return; /* gone before its turn (evicted, purged, replaced): nothing to write */
    }
    h.klen = (uint32_t)e->klen;
    h.slen = (uint32_t)e->slen;
    h.body_len = e->body_len;
    int rc = lp_cdisk_write(d->root, e->fid, &h, e->key, e->sec, head, e->chunks);
    free(head);
    if (rc) {
        if (rc != d->last_errno)
            lp_log(LP_LOG_ERROR,
                   "cache zone %s: cannot write an entry under %s: %s (it stays in memory "
                   "only; the proxy goes on)",
                   z->name, d->root, strerror(rc));
        d->last_errno = rc;
    } else if (d->last_errno) {
        lp_log(LP_LOG_NOTICE, "cache zone %s: writing under %s works again", z->name, d->root);
        d->last_errno = 0;
    }
    int remove = 0;
    lp_mutex_lock(&z->lock);
    e->writing--;
    t = write_target(z, e, h.stamp);
    if (rc) {
        if (t && t != e)
            lp__cache_unlink(z, t, &dead); /* a disk-only entry without its file */
    } else if (t) {
        lp__cache_on_disk(z, t, lp_cdisk_file_size(&h));
        lp__cache_evict(z, &dead);
    } else if (!e->linked) {
        /* Dropped while being written: the file must not outlive it (a later write of the
         * same keys is queued after this job, so it is not this file's). */
        remove = 1;
    }
    lp_mutex_unlock(&z->lock);
    lp__cache_drop_dead(dead);
    if (remove)
        delete_file(d, e->fid);
    lp_cache_entry_unref(e);
}

static int parse_hex(const char *s, size_t n, uint64_t *out)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        int x = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (x < 0)
            return -1;
        v = v << 4 | (uint64_t)x;
    }
    *out = v;
    return 0;
}

static int stopping(lp_cdisk_t *d)
{
    pthread_mutex_lock(&d->mu);
    int s = d->stop;
    pthread_mutex_unlock(&d->mu);
    return s;
}

/* One file met by the scan: indexed as a disk-only entry, or deleted (damaged, expired, a
 * leftover temp file). */
static void scan_file(lp_cdisk_t *d, const char *path, const char *name, double now,
                      size_t *nindexed, size_t *ndropped, size_t *ndamaged)
{
    size_t nl = strlen(name);
    if (nl > 4 && strcmp(name + nl - 4, ".tmp") == 0) {
        unlink(path); /* a write cut short by a crash */
        return;
    }
    uint64_t fid;
    if (nl != 16 || parse_hex(name, 16, &fid))
        return; /* not ours: left alone */
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    lp_cdisk_hdr_t h;
    char *meta;
    const char *err = lp_cdisk_read_meta(fd, &h, &meta);
    close(fd);
    if (!err && lp__cache_fid(meta, h.klen, meta + h.klen, h.slen) != fid)
        err = "its name is not its key's";
    if (!err && h.keep_until < now)
        err = NULL, h.keep_until = -1;
    if (err || h.keep_until < 0) {
        /* The first few by name; past them only counted (the scan's summary line): a release
         * that changed the file format drops every file, one line each was a flood. */
        if (err && (*ndamaged)++ < DROPS_NAMED)
            lp_log(LP_LOG_WARN, "cache zone %s: dropped %s: %s%s", d->zone->name, path, err,
                   *ndamaged == DROPS_NAMED ? " (further ones only counted)" : "");
        free(meta);
        unlink(path);
        (*ndropped)++;
        return;
    }
    lp_cache_zone_t *z = d->zone;
    lp_cache_entry_t *e =
        lp__cache_stub_new(meta, h.klen, meta + h.klen, h.slen, meta + h.klen + h.slen, h.hlen,
                           h.body_len, h.keep_until, fid);
    if (!e) {
        free(meta);
        return;
    }
    e->stamp = h.stamp;
    size_t nfields = lp_cache_head_fields(meta + h.klen + h.slen, h.hlen);
    lp__cache_entry_set_fields(e, nfields);
    lp_cache_entry_t *dead = NULL;
    lp_mutex_lock(&z->lock);
    if (z->stamps < h.stamp)
        z->stamps = h.stamp; /* new entries' stamps stay past every file's */
    if (lp__cache_find(z, e->hash, e->key, e->klen, e->sec, e->slen)) {
        /* Stored since the start: that entry is newer, its write (queued after this scan)
         * replaces the file. */
        lp_mutex_unlock(&z->lock);
        lp__cache_entry_free(e);
        free(meta);
        return;
    }
    /* Written under another config, maybe a larger max_headers: requests make room for it
     * (a file the scan drops or a newer entry replaces takes none) from its link on (its
     * zone's tally: cache_store.c room_add), and one made before with less goes upstream
     * instead (lp_ffi_cache_get). */
    lp__cache_link(z, e);
    lp__cache_on_disk(z, e, lp_cdisk_file_size(&h));
    lp__cache_evict(z, &dead);
    lp_mutex_unlock(&z->lock);
    lp__cache_drop_dead(dead);
    free(meta);
    (*nindexed)++;
}

static void scan(lp_cdisk_t *d)
{
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    struct timespec rt;
    clock_gettime(CLOCK_REALTIME, &rt);
    double now = (double)rt.tv_sec + (double)rt.tv_nsec / 1e9;
    size_t nindexed = 0, ndropped = 0, ndamaged = 0;
    char p1[4096], p2[4096], p3[4096];
    DIR *top = opendir(d->root);
    if (!top) {
        /* Nothing was loaded: no line claims a load (lp_cdisk_start said why, when it could
         * not make the directory). */
        lp_log(LP_LOG_WARN, "cache zone %s: cannot read %s: %s (no entries from it)", d->zone->name,
               d->root, strerror(errno));
        atomic_store(&d->loaded, 1);
        return;
    }
    struct dirent *a, *b, *c;
    while ((a = readdir(top)) && !stopping(d)) {
        if (strlen(a->d_name) != 2 || a->d_name[0] == '.')
            continue;
        snprintf(p1, sizeof(p1), "%s/%s", d->root, a->d_name);
        DIR *mid = opendir(p1);
        while (mid && (b = readdir(mid))) {
            if (strlen(b->d_name) != 2 || b->d_name[0] == '.')
                continue;
            snprintf(p2, sizeof(p2), "%s/%s", p1, b->d_name);
            DIR *leaf = opendir(p2);
            while (leaf && (c = readdir(leaf))) {
                if (c->d_name[0] == '.')
                    continue;
                snprintf(p3, sizeof(p3), "%s/%s", p2, c->d_name);
                scan_file(d, p3, c->d_name, now, &nindexed, &ndropped, &ndamaged);
            }
            if (leaf)
                closedir(leaf);
        }
        if (mid)
            closedir(mid);
    }
    closedir(top);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
    lp_log(LP_LOG_INFO,
           "cache zone %s: loaded %zu entries from %s in %.0f ms (%zu dropped, %zu of them "
           "damaged or of another version)",
           d->zone->name, nindexed, d->root, ms, ndropped, ndamaged);
    atomic_store(&d->loaded, 1);
}

static void *disk_main(void *arg)
{
    lp_cdisk_t *d = arg;
    pthread_setname_np(pthread_self(), "lp-cachedisk"); /* for top -H, gdb */
    scan(d);
    for (;;) {
        pthread_mutex_lock(&d->mu);
        while (!d->head && !d->stop)
            pthread_cond_wait(&d->cv, &d->mu);
        job_t *j = d->head;
        if (!j) {
            pthread_mutex_unlock(&d->mu);
            break; /* stopping, and nothing is left */
        }
        d->head = j->next;
        if (!d->head)
            d->tail = &d->head;
        if (j->kind == JOB_WRITE)
            d->writes--;
        pthread_mutex_unlock(&d->mu);
        if (j->kind == JOB_WRITE)
            do_write(d, j->e);
        else if (j->kind == JOB_DELETE)
            delete_file(d, j->fid);
        else
            lp_cache_purge(d->zone, j->mode, j->key, j->klen);
        free(j);
    }
    return NULL;
}

lp_cdisk_t *lp_cdisk_start(lp_cache_zone_t *z, const char *root)
{
    lp_cdisk_t *d = calloc(1, sizeof(*d));
    if (!d)
        return NULL;
    d->zone = z;
    d->tail = &d->head;
    if (!(d->root = strdup(root))) {
        free(d);
        return NULL;
    }
    size_t n = strlen(d->root);
    while (n > 1 && d->root[n - 1] == '/')
        d->root[--n] = 0;
    int rc = lp_cdisk_mkdirs(d->root);
    if (rc)
        lp_log(LP_LOG_ERROR,
               "cache zone %s: cannot make %s: %s (entries stay in memory only until it can "
               "be written)",
               z->name, d->root, strerror(rc));
    pthread_mutex_init(&d->mu, NULL);
    pthread_cond_init(&d->cv, NULL);
    /* The zone knows its disk before the thread scans: an eviction during the scan must
     * queue its file's deletion (jobs wait in the queue until the thread takes them), not
     * leave the file orphaned until the next start. */
    lp_mutex_lock(&z->lock);
    z->disk = d;
    lp_mutex_unlock(&z->lock);
    if (pthread_create(&d->thread, NULL, disk_main, d)) {
        lp_mutex_lock(&z->lock);
        z->disk = NULL;
        lp_mutex_unlock(&z->lock);
        pthread_mutex_destroy(&d->mu);
        pthread_cond_destroy(&d->cv);
        free(d->root);
        free(d);
        return NULL;
    }
    return d;
}

void lp_cdisk_stop(lp_cdisk_t *d)
{
    if (!d)
        return;
    pthread_mutex_lock(&d->mu);
    d->stop = 1;
    pthread_cond_signal(&d->cv);
    pthread_mutex_unlock(&d->mu);
    pthread_join(d->thread, NULL);
    pthread_mutex_destroy(&d->mu);
    pthread_cond_destroy(&d->cv);
    free(d->root);
    free(d);
}
