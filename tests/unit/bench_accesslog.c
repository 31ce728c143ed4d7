/* Not a test: ns per JSON access log line (the 13 members of bench/scenarios.py's
 * log-json scenarios) made by lp_accesslog_write and handed to the log writer thread,
 * which writes them to /dev/null. Prints the figure; asserts nothing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "accesslog.h"
#include "config.h"
#include "conn.h"
#include "logw.h"

static lp_upstream_rt_t fake_upstream;

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 2000000;
    static lp_log_field_t members[] = {
        {"body_bytes_sent", "$body_bytes_sent"},
        {"host", "$host"},
        {"method", "$request_method"},
        {"referer", "$http_referer"},
        {"remote_addr", "$remote_addr"},
        {"request", "$request"},
        {"request_time", "$request_time"},
        {"status", "$status"},
        {"time", "$time_iso8601"},
        {"upstream_addr", "$upstream_addr"},
        {"upstream_response_time", "$upstream_response_time"},
        {"uri", "$uri"},
        {"user_agent", "$http_user_agent"},
    };
    lp_log_format_t fmt = {.json = members, .njson = LP_ARRAY_LEN(members)};
    if (lp_logw_start(64u << 20))
        return 1;
    char err[256] = "";
    lp_accesslog_t *log = lp_accesslog_open("/dev/null", &fmt, err, sizeof(err));
    if (!log) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    static lp_req_t req;
    static lp_conn_t conn;
    static lp_header_t headers[2];
    static const char url[] = "/fixed?size=16384";
    req.conn = &conn;
    snprintf(req.client_ip, sizeof(req.client_ip), "127.0.0.1");
    req.method = HTTP_GET;
    req.flags = LP_RF_PARSED;
    req.minor = 1;
    req.resp.sent_status = 200;
    req.resp.body_out = 16384;
    req.upstream = &fake_upstream;
    req.try.target = 0;
    snprintf(req.try.target_addr, sizeof(req.try.target_addr), "127.0.0.1:9001");
    req.h1.url = (lp_str_t){url, sizeof(url) - 1};
    req.h1.path = req.h1.url;
    req.h1.host = (lp_str_t){"127.0.0.1:8080", 14};
    req.h1.headers = headers;
    headers[0].name = (lp_str_t){"User-Agent", 10};
    headers[0].value = (lp_str_t){"wrk/4.2.0 (bench)", 17};
    headers[1].name = (lp_str_t){"Host", 4};
    headers[1].value = req.h1.host;
    req.h1.nheaders = 2;
    uint64_t t0 = uv_hrtime();
    for (long i = 0; i < n; i++) {
        req.t_start = t0;
        req.t_upstream = req.t_upstream_head = t0;
        lp_accesslog_write(log, &req);
    }
    uint64_t t1 = uv_hrtime();
    lp_accesslog_close(log);
    lp_logw_stop(5000);
    printf("JSON access log line (13 members): %.1f ns per line (%ld lines, dropped %llu)\n",
           (double)(t1 - t0) / (double)n, n, (unsigned long long)lp_logw_lines_dropped());
    return 0;
}
