/* HTTP/2 counters summed over workers (h2_stats.h): client connections (h2.c) and
 * connections to h2 upstreams (h2_up.c). */
#include "h2_stats.h"
#include "worker.h"

static uint64_t sum(const lp_server_t *s, int cell)
{
    uint64_t v = 0;
    for (unsigned w = 0; w < s->nworkers; w++)
        v += LP_M_GET(&s->workers[w].m_cells[cell]);
    return v;
}

/* Open = started - closed; two relaxed reads may cross a closing, never below 0. */
static uint64_t open_now(const lp_server_t *s, int started, int closed)
{
    uint64_t closed_n = sum(s, closed), started_n = sum(s, started);
    return started_n > closed_n ? started_n - closed_n : 0;
}

/* The protections that end a connection (GOAWAY) or a stream, by reason. */
static const struct {
    const char *reason;
    int cell;
} PROTECT[] = {
    {"rapid_reset", LP_WM_H2_FLOOD_RESET},        {"control_frames", LP_WM_H2_FLOOD_CONTROL},
    {"continuations", LP_WM_H2_FLOOD_CONT},       {"header_list", LP_WM_H2_FLOOD_HEADERS},
    {"send_stall_stream", LP_WM_H2_STALL_STREAM}, {"send_stall_connection", LP_WM_H2_STALL_CONN},
};

/* The `upstream` member of the `http2` object: connections to h2 upstreams. */
static json_t *h2u_status(const lp_server_t *s)
{
    return json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:{s:I,s:I}}", "connections_open",
                     (json_int_t)open_now(s, LP_WM_H2U_CONNS, LP_WM_H2U_CONNS_CLOSED),
                     "connections", (json_int_t)sum(s, LP_WM_H2U_CONNS), "streams_open",
                     (json_int_t)open_now(s, LP_WM_H2U_STREAMS, LP_WM_H2U_STREAMS_CLOSED),
                     "streams", (json_int_t)sum(s, LP_WM_H2U_STREAMS), "goaways_received",
                     (json_int_t)sum(s, LP_WM_H2U_GOAWAY_RECV), "resets_received",
                     (json_int_t)sum(s, LP_WM_H2U_RST_RECV), "resets_sent",
                     (json_int_t)sum(s, LP_WM_H2U_RST_SENT), "retries", "refused",
                     (json_int_t)sum(s, LP_WM_H2U_RETRY_REFUSED), "stale",
                     (json_int_t)sum(s, LP_WM_H2U_RETRY_STALE));
}

json_t *lp_h2_status(const lp_server_t *s)
{
    json_t *u = h2u_status(s);
    if (!u)
        return NULL;
    json_t *p = json_object();
    for (size_t i = 0; p && i < LP_ARRAY_LEN(PROTECT); i++)
        json_object_set_new(p, PROTECT[i].reason,
                            json_integer((json_int_t)sum(s, PROTECT[i].cell)));
    if (!p) {
        json_decref(u);
        return NULL;
    }
    return json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:o,s:o}", "connections_open",
                     (json_int_t)open_now(s, LP_WM_H2_CONNS, LP_WM_H2_CONNS_CLOSED), "connections",
                     (json_int_t)sum(s, LP_WM_H2_CONNS), "streams_open",
                     (json_int_t)open_now(s, LP_WM_H2_STREAMS, LP_WM_H2_STREAMS_CLOSED), "streams",
                     (json_int_t)sum(s, LP_WM_H2_STREAMS), "resets_received",
                     (json_int_t)sum(s, LP_WM_H2_RST_RECV), "resets_sent",
                     (json_int_t)sum(s, LP_WM_H2_RST_SENT), "goaways_sent",
                     (json_int_t)sum(s, LP_WM_H2_GOAWAY_SENT), "protections", p, "upstream", u);
}

/* The luaproxy_h2_upstream_* families: connections to h2 upstreams (h2_up.c). */
static void h2u_metrics(lp_mtext_t *t, const lp_server_t *s)
{
    static const struct {
        const char *name, *type, *help;
        int cell, closed; /* closed >= 0: a gauge of cell - closed */
    } M[] = {
        {"luaproxy_h2_upstream_connections_open", "gauge", "HTTP/2 connections to upstreams open.",
         LP_WM_H2U_CONNS, LP_WM_H2U_CONNS_CLOSED},
        {"luaproxy_h2_upstream_connections_total", "counter",
         "HTTP/2 connections made to upstreams.", LP_WM_H2U_CONNS, -1},
        {"luaproxy_h2_upstream_streams_open", "gauge", "HTTP/2 streams to upstreams open.",
         LP_WM_H2U_STREAMS, LP_WM_H2U_STREAMS_CLOSED},
        {"luaproxy_h2_upstream_streams_total", "counter", "HTTP/2 streams started to upstreams.",
         LP_WM_H2U_STREAMS, -1},
        {"luaproxy_h2_upstream_goaways_received_total", "counter",
         "HTTP/2 GOAWAY frames upstreams sent.", LP_WM_H2U_GOAWAY_RECV, -1},
    };
    for (size_t i = 0; i < LP_ARRAY_LEN(M); i++) {
        lp_mtext_family(t, M[i].name, M[i].type, M[i].help);
        uint64_t v = M[i].closed >= 0 ? open_now(s, M[i].cell, M[i].closed) : sum(s, M[i].cell);
        lp_mtext_sample(t, M[i].name, "", NULL, 0, (double)v);
    }
    const char *n = "luaproxy_h2_upstream_resets_total";
    lp_mtext_family(t, n, "counter",
                    "HTTP/2 RST_STREAM frames to and from upstreams, by direction.");
    const char *rx[] = {"direction", "received"}, *tx[] = {"direction", "sent"};
    lp_mtext_sample(t, n, "", rx, 1, (double)sum(s, LP_WM_H2U_RST_RECV));
    lp_mtext_sample(t, n, "", tx, 1, (double)sum(s, LP_WM_H2U_RST_SENT));
    n = "luaproxy_h2_upstream_retries_total";
    lp_mtext_family(t, n, "counter",
                    "Requests sent again on another HTTP/2 upstream connection, by reason: "
                    "refused (GOAWAY, REFUSED_STREAM), stale (a reused connection failed first).");
    const char *rf[] = {"reason", "refused"}, *st[] = {"reason", "stale"};
    lp_mtext_sample(t, n, "", rf, 1, (double)sum(s, LP_WM_H2U_RETRY_REFUSED));
    lp_mtext_sample(t, n, "", st, 1, (double)sum(s, LP_WM_H2U_RETRY_STALE));
}

void lp_h2_metrics(lp_mtext_t *t, const lp_server_t *s)
{
    static const struct {
        const char *name, *type, *help;
        int cell, closed; /* closed >= 0: a gauge of cell - closed */
    } M[] = {
        {"luaproxy_h2_connections_open", "gauge", "HTTP/2 client connections open.", LP_WM_H2_CONNS,
         LP_WM_H2_CONNS_CLOSED},
        {"luaproxy_h2_connections_total", "counter", "Client connections that spoke HTTP/2.",
         LP_WM_H2_CONNS, -1},
        {"luaproxy_h2_streams_open", "gauge", "HTTP/2 streams open.", LP_WM_H2_STREAMS,
         LP_WM_H2_STREAMS_CLOSED},
        {"luaproxy_h2_streams_total", "counter", "HTTP/2 streams clients opened.", LP_WM_H2_STREAMS,
         -1},
        {"luaproxy_h2_goaways_sent_total", "counter", "HTTP/2 GOAWAY frames sent.",
         LP_WM_H2_GOAWAY_SENT, -1},
    };
    for (size_t i = 0; i < LP_ARRAY_LEN(M); i++) {
        lp_mtext_family(t, M[i].name, M[i].type, M[i].help);
        uint64_t v = M[i].closed >= 0 ? open_now(s, M[i].cell, M[i].closed) : sum(s, M[i].cell);
        lp_mtext_sample(t, M[i].name, "", NULL, 0, (double)v);
    }
    lp_mtext_family(t, "luaproxy_h2_resets_total", "counter",
                    "HTTP/2 RST_STREAM frames, by direction.");
    const char *rx[] = {"direction", "received"}, *tx[] = {"direction", "sent"};
    lp_mtext_sample(t, "luaproxy_h2_resets_total", "", rx, 1, (double)sum(s, LP_WM_H2_RST_RECV));
    lp_mtext_sample(t, "luaproxy_h2_resets_total", "", tx, 1, (double)sum(s, LP_WM_H2_RST_SENT));
    lp_mtext_family(t, "luaproxy_h2_protections_total", "counter",
                    "HTTP/2 connections closed (floods, a shut connection window) or streams "
                    "reset (header list, a shut stream window) by a protection, by reason.");
    for (size_t i = 0; i < LP_ARRAY_LEN(PROTECT); i++) {
        const char *l[] = {"reason", PROTECT[i].reason};
        lp_mtext_sample(t, "luaproxy_h2_protections_total", "", l, 1,
                        (double)sum(s, PROTECT[i].cell));
    }
    h2u_metrics(t, s);
}
