/* The response cache's disk tier (issue #13): a zone's directory of entry files, its file
 * format, and the zone's disk thread that writes, deletes and (at start) scans them.
 *
 * Layout: ROOT/ab/cd/0123456789abcdef, the name being the 64-bit file id (a hash of the key
 * and secondary key, lp__cache_fid) in hex and the two levels its first bytes, so no
 * directory holds more than a few thousand files. A file is written as NAME.tmp in the same
 * directory and renamed over NAME: a reader sees a whole old file or a whole new one. A
 * leftover .tmp (a crash mid-write) is deleted by the next start's scan.
 *
 * Format (host byte order, 56-byte header then key, sec, head, body):
 *   magic "LPC1", version, klen, slen, hlen, meta_crc, body_crc, pad, body_len, stamp,
 *   keep_until
 * meta_crc is a CRC32 over the header (meta_crc set to 0) then key, sec and head; body_crc
 * a CRC32 over the body. Together they cover every byte: a truncated file is refused by its
 * size, a changed one by a CRC, before any byte of it is served. The stamp says which write
 * this is: the index keeps it, and a file whose stamp differs was replaced meanwhile.
 *
 * Threads: each zone with a disk has one disk thread (lp_cdisk_t), which alone writes and
 * deletes the zone's files, in the order they were asked for (a purge's delete never
 * overtakes the write it follows). Hits read files on libuv's threadpool from the worker's
 * loop (cache_disk_hit.c); a read races only renames, which it survives (an open file keeps
 * its content), and deletes, which it sees as a vanished file. */
#ifndef LP_CACHE_DISK_H
#define LP_CACHE_DISK_H

#include <stddef.h>
#include <stdint.h>

#include "cache_store.h"

typedef struct lp_cdisk_s lp_cdisk_t;

/* Version 2: the plugin's heads in their layout 2 (cache_room.h: binary times). A file of
 * another version is dropped by the start's scan, as a damaged one is: its entry is a miss. */
#define LP_CDISK_MAGIC   0x3143504cu /* "LPC1" read as a little-endian u32 */
#define LP_CDISK_VERSION 2u

typedef struct {
    uint32_t magic, version;
    uint32_t klen, slen, hlen;
    uint32_t meta_crc; /* CRC32 of this header (meta_crc 0), then key, sec and head */
    uint32_t body_crc; /* CRC32 of the body */
    uint32_t pad;      /* 0 */
    uint64_t body_len;
    uint64_t stamp;
    double keep_until; /* seconds (realtime) */
} lp_cdisk_hdr_t;

/* The size a file with this header has. */
uint64_t lp_cdisk_file_size(const lp_cdisk_hdr_t *h);
/* 0 when magic, version and lengths are sane, else -1. */
int lp_cdisk_hdr_check(const lp_cdisk_hdr_t *h);
/* meta: key, sec and head, back to back. */
uint32_t lp_cdisk_meta_crc(const lp_cdisk_hdr_t *h, const char *meta);
/* ROOT/ab/cd/<16 hex>; returns the length (room too small: >= room, out unusable). */
size_t lp_cdisk_path(char *out, size_t room, const char *root, uint64_t fid);
/* Writes the file of fid atomically (NAME.tmp then rename), making its directories; sets the
 * header's CRCs. 0, or an errno. */
int lp_cdisk_write(const char *root, uint64_t fid, lp_cdisk_hdr_t *h, const char *key,
                   const char *sec, const char *head, const lp_cache_chunk_t *chunks);
/* Reads and checks a file's header and meta (magic, version, meta CRC, and the file's size
 * against the header): NULL and *meta (malloc'd: key, sec, head), or what is wrong. */
const char *lp_cdisk_read_meta(int fd, lp_cdisk_hdr_t *h, char **meta);
/* Reads the body after the meta into chunks (malloc'd list) checking its CRC: NULL, or what
 * is wrong. */
const char *lp_cdisk_read_body(int fd, const lp_cdisk_hdr_t *h, lp_cache_chunk_t **chunks);
void lp_cdisk_chunks_free(lp_cache_chunk_t *c);

/* mkdir -p: 0, or an errno. */
int lp_cdisk_mkdirs(const char *path);

/* ---- the zone's disk thread ---- */
/* Starts the thread for zone z over root (made when missing), whose first job is the scan
 * that rebuilds the index from the files there (the zone serves misses meanwhile). NULL
 * when the thread cannot start. */
lp_cdisk_t *lp_cdisk_start(lp_cache_zone_t *z, const char *root);
/* Ends the thread once the writes queued are done (files stay: they are the next start's
 * cache), and frees d. */
void lp_cdisk_stop(lp_cdisk_t *d);
/* Queues the writing of a resident entry's file (takes a reference). Called under the zone
 * lock (lock order: zone, then the queue's). */
void lp_cdisk_queue_write(lp_cdisk_t *d, lp_cache_entry_t *e);
/* Queues the deletion of file fid (under the zone lock too). */
void lp_cdisk_queue_delete(lp_cdisk_t *d, uint64_t fid);
/* Queues a purge to run again once the scan is over (it may index files the purge missed). */
void lp_cdisk_queue_purge(lp_cdisk_t *d, int mode, const char *key, size_t klen);
/* Whether the scan is over. */
int lp_cdisk_loaded(const lp_cdisk_t *d);
const char *lp_cdisk_root(const lp_cdisk_t *d);

#endif
