/* A request body's copy (req:tee_body) and replacement (req:set_body): req_body.h. */
#include <string.h>

#include "req_body.h"
#include "lua_api.h"

void lp_req_body_init(lp_req_t *req)
{
    req->tee_buf = NULL;
    req->tee_len = 0;
    req->tee_max = 0;
    req->tee = LP_TEE_OFF;
    req->new_body = NULL;
    req->new_body_len = 0;
}

void lp_req_body_release(lp_req_t *req)
{
    if (req->tee_buf)
        lp_buf_unref(req->tee_buf);
    if (req->new_body)
        lp_buf_unref(req->new_body);
    lp_req_body_init(req);
}

/* Drops the copy for good, saying why. */
static void tee_drop(lp_req_t *req, uint8_t why)
{
    if (req->tee_buf)
        lp_buf_unref(req->tee_buf);
    req->tee_buf = NULL;
    req->tee_len = 0;
    req->tee = why;
}

void lp_req_body_tee(lp_req_t *req, const char *at, size_t len)
{
    if (req->tee != LP_TEE_ON || !len)
        return;
    size_t used = req->tee_len;
    if (len > req->tee_max - used) {
        tee_drop(req, LP_TEE_OVER);
        return;
    }
    lp_buf_t *b = req->tee_buf;
    if (!b || len > b->cap - used) {
        /* Doubling, but never past the limit: a 1 MiB bound costs at most 1 MiB. */
        size_t cap = b ? b->cap : LP_BUF_SMALL;
        while (cap < used + len)
            cap = cap > SIZE_MAX / 2 ? SIZE_MAX : cap * 2;
        if (cap > req->tee_max)
            cap = (size_t)req->tee_max;
        lp_buf_t *nb = lp_buf_get(&req->w->bufs, cap);
        if (!nb) {
            tee_drop(req, LP_TEE_FAIL);
            return;
        }
        if (b) {
            memcpy(nb->data, b->data, used);
            lp_buf_unref(b);
        }
        req->tee_buf = b = nb;
    }
    memcpy(b->data + used, at, len);
    req->tee_len = used + len;
}

int lp_ffi_body_tee(void *rp, double max)
{
    lp_req_t *req = rp;
    if (!(max >= 1 && max <= 9007199254740992.0)) /* NaN and inf too */
        return LP_FFI_EINVAL;
    if (req->tee != LP_TEE_OFF)
        return 0; /* the first caller's limit stands */
    req->tee = LP_TEE_ON;
    req->tee_max = (uint64_t)max;
    /* What req:body() gathered already went past the tee: copy it now. */
    if (req->body_buf && req->body_len)
        lp_req_body_tee(req, req->body_buf->data, req->body_len);
    return 0;
}

int lp_ffi_body_teed(void *rp, lp_str_t *out)
{
    lp_req_t *req = rp;
    switch (req->tee) {
    case LP_TEE_OFF:
        return LP_FFI_TEE_NONE;
    case LP_TEE_OVER:
        return LP_FFI_TEE_OVER;
    case LP_TEE_FAIL:
        return LP_FFI_TEE_FAIL;
    default:
        break;
    }
    if (req->state != LP_RS_DONE)
        return LP_FFI_TEE_PARTIAL; /* the client went away before its body ended */
    out->base = req->tee_buf ? req->tee_buf->data : "";
    out->len = req->tee_len;
    return LP_FFI_TEE_DONE;
}

int lp_ffi_body_set(void *rp, const char *p, size_t n)
{
    lp_req_t *req = rp;
    if (req->try.peer)
        return LP_FFI_EPHASE; /* its head already went */
    lp_buf_t *b = lp_buf_get(&req->w->bufs, n ? n : 1);
    if (!b)
        return LP_FFI_ENOSPACE;
    memcpy(b->data, p, n);
    if (req->new_body)
        lp_buf_unref(req->new_body);
    req->new_body = b;
    req->new_body_len = n;
    return 0;
}
