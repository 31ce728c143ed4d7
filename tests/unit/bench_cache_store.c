/* Not a test: RSS per entry of the response cache's store (issue #13: "100k keys in a 64 MiB
 * zone"): 100,000 entries with a 40-byte key, a 300-byte head and a 5-byte body, then with a
 * 1 KiB body, in a 64 MiB zone; prints the zone's own accounting and the process RSS growth
 * per entry. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include "cache_store.h"

static long rss_kib(void)
{
    long pages = 0, rss = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &rss) != 2)
            rss = 0;
        fclose(f);
    }
    return rss * (sysconf(_SC_PAGESIZE) / 1024);
}

static void run(const char *name, size_t body_len)
{
    static char head[300], body[1024];
    memset(head, 'h', sizeof(head));
    memset(body, 'b', sizeof(body));
    lp_cache_zone_t *z = lp_cache_zone_acquire(name, 64u << 20, 1 << 20);
    long before = rss_kib();
    char key[64];
    for (int i = 0; i < 100000; i++) {
        snprintf(key, sizeof(key), "GET http://example.com/items/%012d", i);
        lp_cache_fill_t *f = lp_cache_fill_start(z, NULL, key, strlen(key), "", 0, head,
                                                 sizeof(head), 1e12, body_len);
        if (f) {
            lp_cache_fill_append(f, body, body_len);
            lp_cache_fill_commit(f);
        }
    }
    long after = rss_kib();
    lp_cache_stats_t st;
    lp_cache_zone_stats(z, &st);
    printf("%-10s body %4zu B: %llu entries kept (%llu evicted), zone bytes/entry %.0f, "
           "RSS growth/entry %.0f B (key 40 B + head 300 B + body)\n",
           name, body_len, (unsigned long long)st.entries,
           (unsigned long long)st.counts[LP_CACHE_C_EVICTED],
           st.entries ? (double)st.bytes / (double)st.entries : 0.0,
           st.entries ? (double)(after - before) * 1024.0 / (double)st.entries : 0.0);
    lp_cache_zone_release(z);
}

int main(void)
{
    run("small", 5);
    run("kib", 1024);
    return 0;
}
