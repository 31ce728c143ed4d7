/* Countries of client addresses from a MaxMind-format database (GeoLite2/GeoIP2 Country or
 * City, or any MMDB with country.iso_code), through libmaxminddb, for the ip_filter plugin.
 * The file is mapped read-only (MMDB_MODE_MMAP): each worker's VM opens its own handle, the
 * kernel shares the pages, and a lookup touches no lock. */
#include <maxminddb.h>
#include <stdlib.h>
#include <string.h>
struct lp_req_s; /* named by lua_api.h; this file needs nothing else of the engine */
#include "lua_api.h"

void *lp_ffi_geoip_open(const char *path, char *err, size_t errlen)
{
    MMDB_s *db = calloc(1, sizeof(*db));
    if (!db) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    int rc = MMDB_open(path, MMDB_MODE_MMAP, db);
    if (rc != MMDB_SUCCESS) {
        snprintf(err, errlen, "%s", MMDB_strerror(rc));
        free(db);
        return NULL;
    }
    return db;
}

void lp_ffi_geoip_close(void *db)
{
    if (!db)
        return;
    MMDB_close(db);
    free(db);
}

int lp_ffi_geoip_country(void *db, const char *ip, size_t len, char out[3])
{
    char buf[64];
    if (len == 0 || len >= sizeof(buf))
        return 0;
    memcpy(buf, ip, len);
    buf[len] = 0;
    char *zone = strchr(buf, '%');
    if (zone)
        *zone = 0;
    int gai = 0, mmdb = 0;
    MMDB_lookup_result_s r = MMDB_lookup_string(db, buf, &gai, &mmdb);
    if (gai || mmdb != MMDB_SUCCESS || !r.found_entry)
        return 0;
    MMDB_entry_data_s d;
    if (MMDB_get_value(&r.entry, &d, "country", "iso_code", NULL) != MMDB_SUCCESS || !d.has_data ||
        d.type != MMDB_DATA_TYPE_UTF8_STRING || d.data_size != 2) {
        /* An anonymous proxy or satellite provider has no country: its registered one. */
        if (MMDB_get_value(&r.entry, &d, "registered_country", "iso_code", NULL) != MMDB_SUCCESS ||
            !d.has_data || d.type != MMDB_DATA_TYPE_UTF8_STRING || d.data_size != 2)
            return 0;
    }
    memcpy(out, d.utf8_string, 2);
    out[2] = 0;
    return 1;
}
