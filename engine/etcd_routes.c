/* POST /routes with the config from etcd (issue #22, docs/admin-api.md): the batch the admin
 * API checked against the running table is applied to the document's `routes` array, the
 * text that goes back to etcd. Positions mean the same routes in both only while the
 * document is the one the instance runs: etcd.c writes the result with a compare-and-swap on
 * the document's mod_revision, so a document changed meanwhile is never written over. */
#include <stdio.h>
#include <string.h>
#include "common.h"
#include "etcd.h"

/* op[k] as a 1-based position in [lo, hi]; 0 when missing or out of range. */
static size_t position(json_t *op, const char *k, size_t lo, size_t hi)
{
    json_t *v = json_object_get(op, k);
    if (!json_is_integer(v))
        return 0;
    json_int_t i = json_integer_value(v);
    return i >= (json_int_t)lo && i <= (json_int_t)hi ? (size_t)i : 0;
}

int lp_etcd_routes_doc(const char *doc, json_t *ops, char **out, char *err, size_t errlen)
{
    *out = NULL;
    json_error_t je;
    json_t *d = json_loads(doc && doc[0] ? doc : "{}", 0, &je);
    if (!json_is_object(d)) {
        snprintf(err, errlen, "the document in etcd is not a JSON object: %s",
                 d ? "another value" : je.text);
        json_decref(d);
        return LP_ECONFIG;
    }
    json_t *routes = json_object_get(d, "routes");
    if (!routes) {
        routes = json_array();
        json_object_set_new(d, "routes", routes);
    }
    if (!json_is_array(routes) || !json_is_array(ops)) {
        snprintf(err, errlen, "%s is not an array", json_is_array(ops) ? "routes" : "ops");
        json_decref(d);
        return LP_ECONFIG;
    }
    json_t *op;
    size_t i;
    json_array_foreach(ops, i, op)
    {
        const char *kind = json_string_value(json_object_get(op, "op"));
        json_t *route = json_object_get(op, "route");
        size_t n = json_array_size(routes), at;
        int rc = -1;
        if (kind && !strcmp(kind, "add") && json_is_object(route)) {
            at = json_object_get(op, "at") ? position(op, "at", 1, n + 1) : n + 1;
            rc = at ? json_array_insert_new(routes, at - 1, json_deep_copy(route)) : -1;
        } else if (kind && !strcmp(kind, "replace") && json_is_object(route)) {
            at = position(op, "index", 1, n);
            rc = at ? json_array_set_new(routes, at - 1, json_deep_copy(route)) : -1;
        } else if (kind && !strcmp(kind, "remove")) {
            at = position(op, "index", 1, n);
            rc = at ? json_array_remove(routes, at - 1) : -1;
        }
        if (rc) {
            /* The admin API checked the batch against the same routes: only a document
             * that is not the running one gets here, and the swap would refuse it too. */
            snprintf(err, errlen, "ops[%zu]: does not apply to the document's %zu routes", i + 1,
                     n);
            json_decref(d);
            return LP_ECONFIG;
        }
    }
    *out = json_dumps(d, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(d);
    if (!*out) {
        snprintf(err, errlen, "out of memory");
        return LP_ENOMEM;
    }
    return 0;
}
