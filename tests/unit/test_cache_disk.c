/* engine/cache_disk.c and cache_disk_file.c: the entry file format (write, read back, every damage
 * refused: a flipped byte in the head or the body, a truncated file, a wrong magic), the path
 * layout, and the index: a zone's entries written to its directory, found again (on disk only) by a
 * new zone over the same directory, the disk budget, purge deleting files, and memory eviction
 * keeping an entry on disk. */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cache_disk.h"
#include "cache_store.h"
#include "cache_store_int.h"
#include "lp_test.h"

#define K(s) (s), strlen(s)

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec;
}

static char root[256];

static void make_root(const char *name)
{
    snprintf(root, sizeof(root), "/tmp/lp-test-cache-disk-%d-%s", (int)getpid(), name);
}

static void rm_rf(const char *path)
{
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", path);
    if (system(cmd) != 0)
        fprintf(stderr, "rm -rf %s failed\n", path);
}

static size_t count_files(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "find '%s' -type f 2>/dev/null | wc -l", dir);
    FILE *f = popen(cmd, "r");
    size_t n = 0;
    if (f) {
        if (fscanf(f, "%zu", &n) != 1)
            n = 0;
        pclose(f);
    }
    return n;
}

static lp_cache_chunk_t *chunks_of(const char *body, size_t piece)
{
    lp_cache_chunk_t *head = NULL, **tail = &head;
    size_t n = strlen(body);
    for (size_t off = 0; off < n; off += piece) {
        size_t k = n - off < piece ? n - off : piece;
        lp_cache_chunk_t *c = malloc(sizeof(*c) + k);
        c->next = NULL;
        c->len = c->cap = k;
        memcpy(c->data, body + off, k);
        *tail = c;
        tail = &c->next;
    }
    return head;
}

/* Writes fid 0x0123... with key "k", sec "s", head "hd" and body; returns its path. */
static void write_one(const char *body, char *path, size_t room)
{
    lp_cdisk_hdr_t h;
    memset(&h, 0, sizeof(h));
    h.klen = 1;
    h.slen = 1;
    h.hlen = 2;
    h.body_len = strlen(body);
    h.stamp = 42;
    h.keep_until = now() + 60;
    lp_cache_chunk_t *c = chunks_of(body, 3);
    uint64_t fid = 0x0123456789abcdefULL;
    CHECK_EQ_INT(lp_cdisk_write(root, fid, &h, "k", "s", "hd", c), 0);
    lp_cdisk_chunks_free(c);
    lp_cdisk_path(path, room, root, fid);
}

/* Reads the file back: NULL and the body in out, or what is wrong. */
static const char *read_one(const char *path, char *out, size_t room)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return "open";
    lp_cdisk_hdr_t h;
    char *meta;
    const char *err = lp_cdisk_read_meta(fd, &h, &meta);
    lp_cache_chunk_t *c = NULL;
    if (!err) {
        if (h.klen != 1 || memcmp(meta, "ksh", 1) || h.stamp != 42)
            err = "meta";
        free(meta);
    }
    if (!err)
        err = lp_cdisk_read_body(fd, &h, &c);
    close(fd);
    size_t n = 0;
    for (lp_cache_chunk_t *k = c; k && n + k->len < room; k = k->next) {
        memcpy(out + n, k->data, k->len);
        n += k->len;
    }
    out[n] = 0;
    lp_cdisk_chunks_free(c);
    return err;
}

static void patch(const char *path, long off, int whence, unsigned char x)
{
    FILE *f = fopen(path, "r+b");
    REQUIRE(f);
    fseek(f, off, whence);
    int c = fgetc(f);
    fseek(f, off, whence);
    fputc(c ^ x, f);
    fclose(f);
}

static void format_round_trip(void)
{
    make_root("fmt");
    rm_rf(root);
    char path[512], body[64];
    write_one("hello disk tier", path, sizeof(path));
    char want[512];
    snprintf(want, sizeof(want), "%s/01/23/0123456789abcdef", root);
    CHECK_STR(path, want);
    CHECK(!read_one(path, body, sizeof(body)));
    CHECK_STR(body, "hello disk tier");
    struct stat st;
    REQUIRE(!stat(path, &st));
    CHECK_EQ_INT((int)st.st_size, (int)(sizeof(lp_cdisk_hdr_t) + 1 + 1 + 2 + 15));
    /* No temp file is left behind. */
    CHECK_EQ_INT((int)count_files(root), 1);
    rm_rf(root);
}

static void format_damage_refused(void)
{
    make_root("dmg");
    rm_rf(root);
    char path[512], body[64];
    const char *err;
    /* A body byte flipped. */
    write_one("hello disk tier", path, sizeof(path));
    patch(path, -2, SEEK_END, 0x20);
    err = read_one(path, body, sizeof(body));
    CHECK(err && strstr(err, "body checksum"));
    /* The head changed. */
    write_one("hello disk tier", path, sizeof(path));
    patch(path, (long)sizeof(lp_cdisk_hdr_t) + 2, SEEK_SET, 0x01);
    err = read_one(path, body, sizeof(body));
    CHECK(err && strstr(err, "header checksum"));
    /* A header field changed (the stamp). */
    write_one("hello disk tier", path, sizeof(path));
    patch(path, 40, SEEK_SET, 0x01);
    err = read_one(path, body, sizeof(body));
    CHECK(err && strstr(err, "header checksum"));
    /* Truncated, or grown. */
    write_one("hello disk tier", path, sizeof(path));
    REQUIRE(!truncate(path, (off_t)sizeof(lp_cdisk_hdr_t) + 6));
    err = read_one(path, body, sizeof(body));
    CHECK(err && strstr(err, "size"));
    write_one("hello disk tier", path, sizeof(path));
    FILE *f = fopen(path, "ab");
    fputs("x", f);
    fclose(f);
    CHECK(read_one(path, body, sizeof(body)) != NULL);
    REQUIRE(!truncate(path, 10));
    CHECK(read_one(path, body, sizeof(body)) != NULL);
    /* Another magic or version. */
    write_one("hello disk tier", path, sizeof(path));
    patch(path, 0, SEEK_SET, 0xff);
    err = read_one(path, body, sizeof(body));
    CHECK(err && strstr(err, "bad header"));
    write_one("hello disk tier", path, sizeof(path));
    patch(path, 4, SEEK_SET, 0x01); /* the version before (the heads' layout 1) */
    err = read_one(path, body, sizeof(body));
    CHECK(err && strstr(err, "another version"));
    write_one("hello disk tier", path, sizeof(path));
    patch(path, 4, SEEK_SET, 0x03);
    err = read_one(path, body, sizeof(body));
    CHECK(err && strstr(err, "another version"));
    rm_rf(root);
}

static void write_fails_cleanly(void)
{
    /* A path under a regular file: ENOTDIR, even for root. */
    make_root("blocked");
    rm_rf(root);
    FILE *f = fopen(root, "w");
    REQUIRE(f);
    fclose(f);
    char sub[300];
    snprintf(sub, sizeof(sub), "%s/zone", root);
    lp_cdisk_hdr_t h;
    memset(&h, 0, sizeof(h));
    h.klen = 1;
    CHECK(lp_cdisk_write(sub, 7, &h, "k", "", "", NULL) != 0);
    unlink(root);
}

/* ---- the index ---- */

static int put(lp_cache_zone_t *z, const char *key, const char *sec, const char *body)
{
    lp_cache_fill_t *f =
        lp_cache_fill_start(z, NULL, K(key), K(sec), K("head:"), now() + 600, strlen(body));
    if (!f)
        return -2;
    if (*body)
        lp_cache_fill_append(f, body, strlen(body));
    return lp_cache_fill_commit(f);
}

static void wait_stats(lp_cache_zone_t *z, uint64_t disk_entries, int loaded)
{
    lp_cache_stats_t st;
    for (int i = 0; i < 1000; i++) {
        lp_cache_zone_stats(z, &st);
        if (st.disk_entries == disk_entries && (!loaded || !st.disk_loading))
            return;
        usleep(5000);
    }
    lp_cache_zone_stats(z, &st);
    CHECK_EQ_INT((int)st.disk_entries, (int)disk_entries);
}

static void index_survives_a_new_zone(void)
{
    make_root("index");
    rm_rf(root);
    lp_cache_zone_t *z = lp_cache_zone_acquire("disk1", 1 << 20, 1 << 16);
    REQUIRE(z);
    REQUIRE(!lp_cache_zone_set_disk(z, root, 1 << 20));
    wait_stats(z, 0, 1);
    CHECK_EQ_INT(put(z, "a", "", "alpha"), 0);
    CHECK_EQ_INT(put(z, "b", "v=1", "beta one"), 0);
    CHECK_EQ_INT(put(z, "b", "v=2", "beta two"), 0);
    CHECK_EQ_INT(put(z, "e", "", ""), 0);
    wait_stats(z, 4, 1);
    lp_cache_zone_release(z); /* the zone goes; its files stay */
    CHECK_EQ_INT((int)count_files(root), 4);

    z = lp_cache_zone_acquire("disk1", 1 << 20, 1 << 16);
    REQUIRE(!lp_cache_zone_set_disk(z, root, 1 << 20));
    wait_stats(z, 4, 1);
    lp_cache_stats_t st;
    lp_cache_zone_stats(z, &st);
    CHECK_EQ_INT((int)st.stubs, 3);
    CHECK_EQ_INT((int)st.entries, 1); /* the empty body only */
    lp_cache_entry_t *e = lp_cache_get(z, K("b"), K("v=2"), now());
    REQUIRE(e);
    CHECK(!lp_cache_entry_resident(e)); /* its body is read back by the hit path */
    CHECK_EQ_INT((int)lp_cache_entry_body_len(e), 8);
    char head[16];
    CHECK_EQ_INT((int)lp_cache_entry_head(z, e, head, sizeof(head)), 5);
    CHECK(memcmp(head, "head:", 5) == 0);
    lp_cache_entry_unref(e);
    /* An empty body needs no read. */
    e = lp_cache_get(z, K("e"), K(""), now());
    REQUIRE(e);
    CHECK(lp_cache_entry_resident(e));
    lp_cache_entry_unref(e);
    /* Purge deletes the key's files (both variants). */
    CHECK_EQ_INT((int)lp_cache_purge(z, LP_CACHE_PURGE_KEY, K("b")), 2);
    wait_stats(z, 2, 1);
    for (int i = 0; i < 1000 && count_files(root) != 2; i++)
        usleep(5000);
    CHECK_EQ_INT((int)count_files(root), 2);
    /* A new entry for a key replaces its file. */
    CHECK_EQ_INT(put(z, "a", "", "alpha two"), 0);
    lp_cache_zone_release(z);
    CHECK_EQ_INT((int)count_files(root), 2);
    z = lp_cache_zone_acquire("disk1", 1 << 20, 1 << 16);
    REQUIRE(!lp_cache_zone_set_disk(z, root, 1 << 20));
    wait_stats(z, 2, 1);
    e = lp_cache_get(z, K("a"), K(""), now());
    REQUIRE(e);
    CHECK_EQ_INT((int)lp_cache_entry_body_len(e), 9);
    lp_cache_entry_unref(e);
    lp_cache_purge(z, LP_CACHE_PURGE_ALL, NULL, 0);
    lp_cache_zone_release(z);
    CHECK_EQ_INT((int)count_files(root), 0);
    rm_rf(root);
}

static void budgets(void)
{
    make_root("budget");
    rm_rf(root);
    static char body[4001];
    memset(body, 'x', 4000);
    /* Memory holds about two of these, the disk about five. */
    lp_cache_zone_t *z = lp_cache_zone_acquire("disk2", 10000, 1 << 16);
    size_t one = sizeof(lp_cdisk_hdr_t) + 2 + 5 + 4000;
    REQUIRE(!lp_cache_zone_set_disk(z, root, 5 * one + 10));
    wait_stats(z, 0, 1);
    char key[8];
    for (int i = 0; i < 8; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        CHECK_EQ_INT(put(z, key, "", body), 0);
        if (i < 5) {
            wait_stats(z, (uint64_t)i + 1, 0);
            continue;
        }
        /* Written, then the oldest file pushed out: wait for that eviction. */
        lp_cache_stats_t w;
        for (int k = 0; k < 1000; k++) {
            lp_cache_zone_stats(z, &w);
            if (w.counts[LP_CACHE_C_DISK_EVICTED] >= (uint64_t)i - 4)
                break;
            usleep(5000);
        }
    }
    lp_cache_stats_t st;
    lp_cache_zone_stats(z, &st);
    CHECK(st.disk_bytes <= st.disk_capacity);
    CHECK(st.bytes <= st.capacity);
    CHECK(st.entries >= 1 && st.entries <= 2);
    CHECK(st.counts[LP_CACHE_C_DISK_EVICTED] >= 3);
    for (int i = 0; i < 1000 && count_files(root) != 5; i++)
        usleep(5000);
    CHECK_EQ_INT((int)count_files(root), 5);
    /* The oldest went from both tiers; one pushed out of memory stays on disk. */
    CHECK(!lp_cache_get(z, K("k0"), K(""), now()));
    lp_cache_entry_t *e = lp_cache_get(z, K("k3"), K(""), now());
    REQUIRE(e);
    CHECK(!lp_cache_entry_resident(e));
    lp_cache_entry_unref(e);
    /* A smaller budget deletes down to it. */
    lp_cache_zone_resize_disk(z, 2 * one + 10);
    wait_stats(z, 2, 0);
    lp_cache_purge(z, LP_CACHE_PURGE_ALL, NULL, 0);
    lp_cache_zone_release(z);
    rm_rf(root);
}

/* The index of entries on disk only is charged to the memory budget: a small zone with many
 * entries pushed out to disk keeps bytes + index_bytes within its capacity, dropping the
 * least recently used disk-only entries (and their files) when their records alone exceed
 * it. */
static void index_in_memory_budget(void)
{
    make_root("indexbudget");
    rm_rf(root);
    static char body[1001];
    memset(body, 'y', 1000);
    size_t cap = 16 * 1024;
    lp_cache_zone_t *z = lp_cache_zone_acquire("disk_ix", cap, 1 << 16);
    REQUIRE(!lp_cache_zone_set_disk(z, root, 64u << 20));
    wait_stats(z, 0, 1);
    char key[16];
    for (int i = 0; i < 400; i++) {
        snprintf(key, sizeof(key), "key%d", i);
        /* Entries pushed out before their file is written stay in the index until it is
         * (they cannot be dropped for room yet): a fill finds no room while those fill the
         * budget, until the disk thread catches up. */
        int rc = -1;
        for (int k = 0; k < 1000 && (rc = put(z, key, "", body)) != 0; k++)
            usleep(2000);
        CHECK_EQ_INT(rc, 0);
    }
    /* Once the writes are done nothing waits to be charged: within the budget. */
    lp_cache_stats_t st;
    for (int i = 0; i < 2000; i++) {
        lp_cache_zone_stats(z, &st);
        if (st.bytes + st.index_bytes <= cap && st.disk_entries == st.entries + st.stubs)
            break;
        usleep(5000);
    }
    CHECK(st.bytes + st.index_bytes <= cap);
    CHECK(st.stubs > 10);                            /* the index still holds many on disk only */
    CHECK(st.stubs + st.entries < 400);              /* not all: their records did not fit */
    CHECK(st.disk_entries == st.entries + st.stubs); /* the dropped ones' files went */
    lp_cache_purge(z, LP_CACHE_PURGE_ALL, NULL, 0);
    lp_cache_zone_release(z);
    rm_rf(root);
}

/* Fills in flight that together pass the memory budget never drop disk-only entries:
 * dropping them cannot make the fills fit (review: two fills once wiped the disk tier). */
static void fills_over_budget_keep_the_disk_tier(void)
{
    make_root("fills_over");
    rm_rf(root);
    static char body[1001];
    memset(body, 'y', 1000);
    size_t cap = 64 * 1024;
    lp_cache_zone_t *z = lp_cache_zone_acquire("disk_fills_over", cap, cap);
    REQUIRE(!lp_cache_zone_set_disk(z, root, 64u << 20));
    wait_stats(z, 0, 1);
    char key[16];
    for (int i = 0; i < 20; i++) {
        snprintf(key, sizeof(key), "key%d", i);
        CHECK_EQ_INT(put(z, key, "", body), 0);
    }
    wait_stats(z, 20, 1);
    /* Two fills of 36 KiB each (their lengths known) in a 64 KiB zone. */
    lp_cache_fill_t *f =
        lp_cache_fill_start(z, NULL, K("big"), K(""), K("head:"), now() + 600, 36864);
    lp_cache_fill_t *g =
        lp_cache_fill_start(z, NULL, K("big2"), K(""), K("head:"), now() + 600, 36864);
    REQUIRE(f && g);
    static char big[4096];
    memset(big, 'z', sizeof(big));
    for (int i = 0; i < 9; i++) {
        (void)lp_cache_fill_append(f, big, sizeof(big));
        (void)lp_cache_fill_append(g, big, sizeof(big));
    }
    lp_cache_fill_abandon(f);
    lp_cache_fill_abandon(g);
    lp_cache_stats_t st;
    lp_cache_zone_stats(z, &st);
    CHECK_EQ_INT((int)st.disk_entries, 20); /* unlinking is synchronous: none went */
    CHECK_EQ_INT((int)count_files(root), 20);
    lp_cache_purge(z, LP_CACHE_PURGE_ALL, NULL, 0);
    lp_cache_zone_release(z);
    rm_rf(root);
}

/* The stamp in a file from an earlier run of the process. */
static uint64_t file_stamp(const char *key, const char *sec)
{
    char path[512];
    if (!CHECK(lp_cdisk_path(path, sizeof(path), root, lp__cache_fid(K(key), K(sec))) <
               sizeof(path)))
        return 0;
    int fd = open(path, O_RDONLY);
    if (!CHECK(fd >= 0))
        return 0;
    lp_cdisk_hdr_t h;
    char *meta = NULL;
    const char *err = lp_cdisk_read_meta(fd, &h, &meta);
    close(fd);
    free(meta);
    CHECK(!err);
    return err ? 0 : h.stamp;
}

/* A stamp tells which write of a file holds an entry's content: a new entry must never get
 * the stamp a file of the same key carries from an earlier run, or a disk-only entry made
 * from it (pushed out of memory before its write) would take the old file as its own and
 * serve the old response. */
static void stamps_unique_across_restarts(void)
{
    make_root("stamps");
    rm_rf(root);
    lp_cache_zone_t *z = lp_cache_zone_acquire("disk3", 1 << 20, 1 << 16);
    REQUIRE(!lp_cache_zone_set_disk(z, root, 1 << 20));
    wait_stats(z, 0, 1);
    CHECK_EQ_INT(put(z, "k", "", "old body"), 0);
    wait_stats(z, 1, 1);
    lp_cache_zone_release(z);
    uint64_t old = file_stamp("k", "");

    z = lp_cache_zone_acquire("disk3", 1 << 20, 1 << 16);
    REQUIRE(!lp_cache_zone_set_disk(z, root, 1 << 20));
    wait_stats(z, 1, 1);
    CHECK_EQ_INT(put(z, "k", "", "new body!"), 0);
    lp_cache_entry_t *e = lp_cache_get(z, K("k"), K(""), now());
    REQUIRE(e);
    CHECK(lp_cache_entry_resident(e));
    CHECK(e->stamp != old);
    lp_cache_entry_unref(e);
    lp_cache_purge(z, LP_CACHE_PURGE_ALL, NULL, 0);
    lp_cache_zone_release(z);
    rm_rf(root);
}

static const lp_test_case_t tests[] = {
    {"format_round_trip", format_round_trip},
    {"format_damage_refused", format_damage_refused},
    {"write_fails_cleanly", write_fails_cleanly},
    {"index_survives_a_new_zone", index_survives_a_new_zone},
    {"budgets", budgets},
    {"index_in_memory_budget", index_in_memory_budget},
    {"fills_over_budget_keep_the_disk_tier", fills_over_budget_keep_the_disk_tier},
    {"stamps_unique_across_restarts", stamps_unique_across_restarts},
};

LP_TEST_MAIN(tests)
