/* The response cache's disk tier: the entry file format and atomic writes (cache_disk.h). Pure
 * file work, no zone: called by the disk thread (cache_disk.c) and the hit path's pool reads
 * (cache_disk_hit.c). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "cache_disk.h"

/* ---- format ---- */

static uint32_t crc(uint32_t c, const void *p, size_t n)
{
    const unsigned char *b = p;
    while (n) {
        uInt k = n > (1u << 30) ? (1u << 30) : (uInt)n;
        c = (uint32_t)crc32(c, b, k);
        b += k;
        n -= k;
    }
    return c;
}

uint64_t lp_cdisk_file_size(const lp_cdisk_hdr_t *h)
{
    return sizeof(*h) + (uint64_t)h->klen + h->slen + h->hlen + h->body_len;
}

int lp_cdisk_hdr_check(const lp_cdisk_hdr_t *h)
{
    if (h->magic != LP_CDISK_MAGIC || h->version != LP_CDISK_VERSION || h->pad != 0)
        return -1;
    if (h->klen > LP_CACHE_MAX_KEY || h->slen > LP_CACHE_MAX_KEY || h->hlen > (1u << 24) ||
        h->body_len > ((uint64_t)1 << 40))
        return -1;
    return 0;
}

uint32_t lp_cdisk_meta_crc(const lp_cdisk_hdr_t *h, const char *meta)
{
    lp_cdisk_hdr_t z = *h;
    z.meta_crc = 0;
    uint32_t c = crc((uint32_t)crc32(0, Z_NULL, 0), &z, sizeof(z));
    return crc(c, meta, (size_t)h->klen + h->slen + h->hlen);
}

size_t lp_cdisk_path(char *out, size_t room, const char *root, uint64_t fid)
{
    int n = snprintf(out, room, "%s/%02x/%02x/%016llx", root, (unsigned)(fid >> 56),
                     (unsigned)((fid >> 48) & 0xff), (unsigned long long)fid);
    return n < 0 ? room : (size_t)n;
}

static int write_all(int fd, const void *p, size_t n)
{
    const char *b = p;
    while (n) {
        ssize_t k = write(fd, b, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return k < 0 ? errno : EIO;
        b += k;
        n -= (size_t)k;
    }
    return 0;
}

int lp_cdisk_mkdirs(const char *path)
{
    char buf[4096];
    size_t n = strlen(path);
    if (n >= sizeof(buf))
        return ENAMETOOLONG;
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != 0)
            continue;
        char c = buf[i];
        buf[i] = 0;
        if (mkdir(buf, 0700) && errno != EEXIST)
            return errno;
        buf[i] = c;
    }
    return 0;
}

int lp_cdisk_write(const char *root, uint64_t fid, lp_cdisk_hdr_t *h, const char *key,
                   const char *sec, const char *head, const lp_cache_chunk_t *chunks)
{
    char path[4096], tmp[4100];
    if (lp_cdisk_path(path, sizeof(path), root, fid) >= sizeof(path))
        return ENAMETOOLONG;
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    h->magic = LP_CDISK_MAGIC;
    h->version = LP_CDISK_VERSION;
    h->pad = 0;
    uint32_t bc = (uint32_t)crc32(0, Z_NULL, 0);
    for (const lp_cache_chunk_t *c = chunks; c; c = c->next)
        bc = crc(bc, c->data, c->len);
    h->body_crc = bc;
    h->meta_crc = 0;
    uint32_t mc = crc((uint32_t)crc32(0, Z_NULL, 0), h, sizeof(*h));
    mc = crc(mc, key, h->klen);
    mc = crc(mc, sec, h->slen);
    h->meta_crc = crc(mc, head, h->hlen);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 && errno == ENOENT) {
        char dir[4096];
        memcpy(dir, path, strlen(path) + 1);
        *strrchr(dir, '/') = 0;
        int rc = lp_cdisk_mkdirs(dir);
        if (rc)
            return rc;
        fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    }
    if (fd < 0)
        return errno;
    int rc = write_all(fd, h, sizeof(*h));
    if (!rc)
        rc = write_all(fd, key, h->klen);
    if (!rc)
        rc = write_all(fd, sec, h->slen);
    if (!rc)
        rc = write_all(fd, head, h->hlen);
    for (const lp_cache_chunk_t *c = chunks; c && !rc; c = c->next)
        rc = write_all(fd, c->data, c->len);
    /* No fsync: a file cut short by a power loss is refused by its size or CRC, as any other
     * damage is; the cost of a sync per entry is not worth a cache's content. */
    if (close(fd) && !rc)
        rc = errno;
    if (!rc && rename(tmp, path))
        rc = errno;
    if (rc)
        unlink(tmp);
    return rc;
}

static int read_all(int fd, void *p, size_t n, uint64_t off)
{
    char *b = p;
    while (n) {
        ssize_t k = pread(fd, b, n, (off_t)off);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return -1;
        b += k;
        n -= (size_t)k;
        off += (uint64_t)k;
    }
    return 0;
}

const char *lp_cdisk_read_meta(int fd, lp_cdisk_hdr_t *h, char **meta)
{
    *meta = NULL;
    struct stat st;
    if (fstat(fd, &st))
        return "cannot stat";
    if (read_all(fd, h, sizeof(*h), 0))
        return "truncated header";
    if (h->magic == LP_CDISK_MAGIC && h->version != LP_CDISK_VERSION)
        return "written by another version (its head's layout)";
    if (lp_cdisk_hdr_check(h))
        return "bad header";
    if ((uint64_t)st.st_size != lp_cdisk_file_size(h))
        return "size differs from its header (truncated or changed)";
    size_t n = (size_t)h->klen + h->slen + h->hlen;
    char *m = malloc(n ? n : 1);
    if (!m)
        return "out of memory";
    if (read_all(fd, m, n, sizeof(*h))) {
        free(m);
        return "truncated";
    }
    if (lp_cdisk_meta_crc(h, m) != h->meta_crc) {
        free(m);
        return "header checksum mismatch";
    }
    *meta = m;
    return NULL;
}

void lp_cdisk_chunks_free(lp_cache_chunk_t *c)
{
    while (c) {
        lp_cache_chunk_t *n = c->next;
        free(c);
        c = n;
    }
}

const char *lp_cdisk_read_body(int fd, const lp_cdisk_hdr_t *h, lp_cache_chunk_t **chunks)
{
    *chunks = NULL;
    lp_cache_chunk_t **tail = chunks;
    uint64_t off = sizeof(*h) + (uint64_t)h->klen + h->slen + h->hlen;
    uint64_t left = h->body_len;
    uint32_t c = (uint32_t)crc32(0, Z_NULL, 0);
    while (left) {
        size_t want = left < LP_CACHE_CHUNK ? (size_t)left : LP_CACHE_CHUNK;
        lp_cache_chunk_t *k = malloc(sizeof(*k) + want);
        if (!k) {
            lp_cdisk_chunks_free(*chunks);
            *chunks = NULL;
            return "out of memory";
        }
        k->next = NULL;
        k->cap = k->len = want;
        *tail = k;
        tail = &k->next;
        if (read_all(fd, k->data, want, off)) {
            lp_cdisk_chunks_free(*chunks);
            *chunks = NULL;
            return "truncated body";
        }
        c = crc(c, k->data, want);
        off += want;
        left -= want;
    }
    if (c != h->body_crc) {
        lp_cdisk_chunks_free(*chunks);
        *chunks = NULL;
        return "body checksum mismatch";
    }
    return NULL;
}
