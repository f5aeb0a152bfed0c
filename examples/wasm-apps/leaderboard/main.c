// The leaderboard: a small real app on Shoal's capabilities, a
// wasi:http/proxy component in C (leaderboard.h / leaderboard.c are generated
// by build.sh from the world in world.wit).
//
//   POST /vote/NAME   one more vote for NAME: wasi:keyvalue atomics.increment
//                     of key NAME in the store `votes`; answers
//                     {"name": NAME, "votes": N}
//   GET  /            {"title": config title, "banner": the body of GET
//                     http://<config banner-app>.svc/ (null if that fails),
//                     "scores": [{"name": .., "votes": ..}, ...]}, most votes
//                     first
//   GET  /healthz     {"ok": true}, touching neither store nor config
//   POST /reset       deletes every vote; only with
//                     `authorization: Bearer <config admin-token>` (401
//                     otherwise)
//
// Every answer is JSON. Failures of the store or the configuration are
// logged to stderr and answered 503 without details.
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "leaderboard.h"

typedef leaderboard_string_t str_t;
typedef wasi_http_types_own_response_outparam_t own_outparam_t;
typedef wasi_http_types_borrow_incoming_request_t borrow_request_t;
typedef wasi_keyvalue_store_own_bucket_t own_bucket_t;
typedef wasi_keyvalue_store_borrow_bucket_t borrow_bucket_t;

#define STORE "votes"
#define NAME_MAX_LEN 64
#define BANNER_MAX_LEN 1024

// ---- small helpers --------------------------------------------------------

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) __builtin_trap();
    return p;
}

typedef struct {
    char *ptr;
    size_t len, cap;
} buf_t;

static void buf_add(buf_t *b, const void *data, size_t n) {
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n) cap *= 2;
        char *p = realloc(b->ptr, cap);
        if (!p) __builtin_trap();
        b->ptr = p;
        b->cap = cap;
    }
    memcpy(b->ptr + b->len, data, n);
    b->len += n;
}

static void buf_str(buf_t *b, const char *s) { buf_add(b, s, strlen(s)); }

static void buf_free(buf_t *b) {
    free(b->ptr);
    b->ptr = NULL;
    b->len = b->cap = 0;
}

static str_t view(const char *s, size_t n) {
    str_t v = {(uint8_t *)s, n};
    return v;
}

static str_t view_c(const char *s) { return view(s, strlen(s)); }

// Appends s as a JSON string, quotes included. Control characters are
// escaped; bytes that are not UTF-8 are passed through, as the values here
// come from WIT strings (UTF-8 by contract) or a banner checked for control
// characters only.
static void json_str(buf_t *b, const void *data, size_t n) {
    const uint8_t *s = data;
    buf_str(b, "\"");
    for (size_t i = 0; i < n; i++) {
        uint8_t c = s[i];
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            buf_add(b, esc, 2);
        } else if (c == '\n') {
            buf_str(b, "\\n");
        } else if (c < 0x20 || c == 0x7f) {
            char esc[8];
            snprintf(esc, sizeof esc, "\\u%04x", c);
            buf_str(b, esc);
        } else {
            buf_add(b, &c, 1);
        }
    }
    buf_str(b, "\"");
}

// Compares a and b in time that depends only on their lengths.
static bool same_secret(const uint8_t *a, size_t an, const uint8_t *b, size_t bn) {
    uint8_t diff = an != bn;
    size_t n = an < bn ? an : bn;
    for (size_t i = 0; i < n; i++) diff |= a[i] ^ b[i];
    return diff == 0;
}

// ---- responses ------------------------------------------------------------

static void reply(own_outparam_t outparam, uint16_t status, const void *data, size_t n) {
    wasi_http_types_own_fields_t headers = wasi_http_types_constructor_fields();
    wasi_http_types_borrow_fields_t bheaders = wasi_http_types_borrow_fields(headers);
    wasi_http_types_field_name_t name = view_c("content-type");
    wasi_http_types_field_value_t value = {(uint8_t *)"application/json", 16};
    wasi_http_types_header_error_t herr;
    wasi_http_types_method_fields_append(bheaders, &name, &value, &herr);
    if (status == 401) {
        wasi_http_types_field_name_t challenge = view_c("www-authenticate");
        wasi_http_types_field_value_t scheme = {(uint8_t *)"Bearer", 6};
        wasi_http_types_method_fields_append(bheaders, &challenge, &scheme, &herr);
    }

    wasi_http_types_own_outgoing_response_t resp = wasi_http_types_constructor_outgoing_response(headers);
    wasi_http_types_borrow_outgoing_response_t bresp = wasi_http_types_borrow_outgoing_response(resp);
    wasi_http_types_method_outgoing_response_set_status_code(bresp, status);
    wasi_http_types_own_outgoing_body_t body;
    wasi_io_streams_own_output_stream_t out;
    if (!wasi_http_types_method_outgoing_response_body(bresp, &body)) __builtin_trap();
    if (!wasi_http_types_method_outgoing_body_write(wasi_http_types_borrow_outgoing_body(body), &out))
        __builtin_trap();
    wasi_http_types_result_own_outgoing_response_error_code_t result = {.is_err = false, .val.ok = resp};
    wasi_http_types_static_response_outparam_set(outparam, &result);

    const uint8_t *p = data;
    wasi_io_streams_borrow_output_stream_t bout = wasi_io_streams_borrow_output_stream(out);
    while (n > 0) {
        size_t k = n < 4096 ? n : 4096;
        leaderboard_list_u8_t chunk = {(uint8_t *)p, k};
        wasi_io_streams_stream_error_t err;
        if (!wasi_io_streams_method_output_stream_blocking_write_and_flush(bout, &chunk, &err)) {
            if (err.tag == WASI_IO_STREAMS_STREAM_ERROR_LAST_OPERATION_FAILED)
                wasi_io_error_error_drop_own(err.val.last_operation_failed);
            break;
        }
        p += k;
        n -= k;
    }
    wasi_io_streams_output_stream_drop_own(out);
    wasi_http_types_error_code_t err;
    if (!wasi_http_types_static_outgoing_body_finish(body, NULL, &err)) wasi_http_types_error_code_free(&err);
}

static void reply_str(own_outparam_t outparam, uint16_t status, const char *json) {
    reply(outparam, status, json, strlen(json));
}

static void reply_buf(own_outparam_t outparam, uint16_t status, buf_t *b) {
    reply(outparam, status, b->ptr, b->len);
    buf_free(b);
}

static void reply_unavailable(own_outparam_t outparam) {
    reply_str(outparam, 503, "{\"error\": \"unavailable\"}\n");
}

// ---- configuration --------------------------------------------------------

// Reads configuration key `key`: true and *value (owned, or is_some false if
// unset) on success; false, logged, on an error.
static bool config(const char *key, leaderboard_option_string_t *value) {
    str_t k = view_c(key);
    wasi_config_store_error_t err;
    if (wasi_config_store_get(&k, value, &err)) return true;
    str_t *msg = err.tag == WASI_CONFIG_STORE_ERROR_UPSTREAM ? &err.val.upstream : &err.val.io;
    fprintf(stderr, "leaderboard: reading config %s failed: %.*s\n", key, (int)msg->len, (const char *)msg->ptr);
    wasi_config_store_error_free(&err);
    return false;
}

// ---- the store ------------------------------------------------------------

static void log_kv_error(const char *what, wasi_keyvalue_store_error_t *err) {
    switch (err->tag) {
    case WASI_KEYVALUE_STORE_ERROR_NO_SUCH_STORE:
        fprintf(stderr, "leaderboard: %s: no such store '" STORE "'\n", what);
        break;
    case WASI_KEYVALUE_STORE_ERROR_ACCESS_DENIED:
        fprintf(stderr, "leaderboard: %s: access to store '" STORE "' denied\n", what);
        break;
    default:
        fprintf(stderr, "leaderboard: %s: %.*s\n", what, (int)err->val.other.len,
                (const char *)err->val.other.ptr);
        break;
    }
    wasi_keyvalue_store_error_free(err);
}

static bool open_votes(own_bucket_t *bucket) {
    str_t name = view_c(STORE);
    wasi_keyvalue_store_error_t err;
    if (wasi_keyvalue_store_open(&name, bucket, &err)) return true;
    log_kv_error("opening the store", &err);
    return false;
}

// Every key of the bucket (list-keys followed to the end), owned by the
// caller; false, logged, on an error.
static bool all_keys(borrow_bucket_t bucket, leaderboard_list_string_t *keys) {
    keys->ptr = NULL;
    keys->len = 0;
    size_t cap = 0;
    leaderboard_option_u64_t cursor = {0};
    for (;;) {
        wasi_keyvalue_store_key_response_t page;
        wasi_keyvalue_store_error_t err;
        if (!wasi_keyvalue_store_method_bucket_list_keys(bucket, cursor.is_some ? &cursor.val : NULL, &page, &err)) {
            leaderboard_list_string_free(keys);
            log_kv_error("listing the votes", &err);
            return false;
        }
        for (size_t i = 0; i < page.keys.len; i++) {
            if (keys->len == cap) {
                cap = cap ? cap * 2 : 64;
                keys->ptr = realloc(keys->ptr, cap * sizeof *keys->ptr);
                if (!keys->ptr) __builtin_trap();
            }
            keys->ptr[keys->len++] = page.keys.ptr[i];
        }
        // The strings are ours now; the list itself was allocated only if
        // it is not empty (as the generated *_free functions assume).
        if (page.keys.len > 0) free(page.keys.ptr);
        cursor.is_some = page.cursor.is_some;
        cursor.val = page.cursor.val;
        if (!cursor.is_some) return true;
    }
}

// ---- POST /vote/NAME ------------------------------------------------------

// A name is 1 to 64 letters, digits, '-', '_' or '.'.
static bool valid_name(const char *s) {
    size_t n = strlen(s);
    if (n == 0 || n > NAME_MAX_LEN) return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
              c == '_' || c == '.'))
            return false;
    }
    return true;
}

static void route_vote(const char *name, own_outparam_t outparam) {
    if (!valid_name(name)) {
        reply_str(outparam, 400,
                  "{\"error\": \"a name is 1 to 64 letters, digits, '-', '_' or '.'\"}\n");
        return;
    }
    own_bucket_t bucket;
    if (!open_votes(&bucket)) {
        reply_unavailable(outparam);
        return;
    }
    str_t key = view_c(name);
    uint64_t votes;
    wasi_keyvalue_store_error_t err;
    bool ok = wasi_keyvalue_atomics_increment(wasi_keyvalue_store_borrow_bucket(bucket), &key, 1, &votes, &err);
    wasi_keyvalue_store_bucket_drop_own(bucket);
    if (!ok) {
        log_kv_error("counting a vote", &err);
        reply_unavailable(outparam);
        return;
    }
    buf_t b = {0};
    char num[32];
    buf_str(&b, "{\"name\": ");
    json_str(&b, name, strlen(name));
    snprintf(num, sizeof num, ", \"votes\": %llu}\n", (unsigned long long)votes);
    buf_str(&b, num);
    reply_buf(outparam, 200, &b);
}

// ---- GET / ----------------------------------------------------------------

// The body of GET http://<app>.svc/ if it answers 2xx with at most
// BANNER_MAX_LEN bytes, trailing white space removed; false otherwise.
static bool fetch_banner(const str_t *app, buf_t *banner) {
    buf_t authority = {0};
    buf_add(&authority, app->ptr, app->len);
    buf_str(&authority, ".svc");

    wasi_http_types_own_outgoing_request_t request =
        wasi_http_types_constructor_outgoing_request(wasi_http_types_constructor_fields());
    wasi_http_types_borrow_outgoing_request_t breq = wasi_http_types_borrow_outgoing_request(request);
    wasi_http_types_method_t get = {.tag = WASI_HTTP_TYPES_METHOD_GET};
    wasi_http_types_scheme_t scheme = {.tag = WASI_HTTP_TYPES_SCHEME_HTTP};
    str_t authority_s = view(authority.ptr, authority.len);
    str_t path = view_c("/");
    bool valid = wasi_http_types_method_outgoing_request_set_method(breq, &get) &&
                 wasi_http_types_method_outgoing_request_set_scheme(breq, &scheme) &&
                 wasi_http_types_method_outgoing_request_set_authority(breq, &authority_s) &&
                 wasi_http_types_method_outgoing_request_set_path_with_query(breq, &path);
    buf_free(&authority);
    if (!valid) {
        wasi_http_types_outgoing_request_drop_own(request);
        fprintf(stderr, "leaderboard: banner-app is not a valid host name\n");
        return false;
    }

    wasi_http_types_own_future_incoming_response_t future;
    wasi_http_types_error_code_t code;
    if (!wasi_http_outgoing_handler_handle(request, NULL, &future, &code)) {
        fprintf(stderr, "leaderboard: calling the banner app failed (error-code %u)\n", (unsigned)code.tag);
        wasi_http_types_error_code_free(&code);
        return false;
    }
    wasi_http_types_borrow_future_incoming_response_t bfuture =
        wasi_http_types_borrow_future_incoming_response(future);
    wasi_http_types_result_result_own_incoming_response_error_code_void_t got;
    while (!wasi_http_types_method_future_incoming_response_get(bfuture, &got)) {
        wasi_io_poll_own_pollable_t ready = wasi_http_types_method_future_incoming_response_subscribe(bfuture);
        wasi_io_poll_method_pollable_block(wasi_io_poll_borrow_pollable(ready));
        wasi_io_poll_pollable_drop_own(ready);
    }
    if (got.is_err || got.val.ok.is_err) {
        if (!got.is_err) {
            fprintf(stderr, "leaderboard: calling the banner app failed (error-code %u)\n",
                    (unsigned)got.val.ok.val.err.tag);
            wasi_http_types_error_code_free(&got.val.ok.val.err);
        }
        wasi_http_types_future_incoming_response_drop_own(future);
        return false;
    }

    wasi_http_types_own_incoming_response_t response = got.val.ok.val.ok;
    wasi_http_types_borrow_incoming_response_t bresp = wasi_http_types_borrow_incoming_response(response);
    uint16_t status = wasi_http_types_method_incoming_response_status(bresp);
    bool ok = status >= 200 && status < 300;
    wasi_http_types_own_incoming_body_t body;
    if (ok && wasi_http_types_method_incoming_response_consume(bresp, &body)) {
        wasi_io_streams_own_input_stream_t in;
        if (wasi_http_types_method_incoming_body_stream(wasi_http_types_borrow_incoming_body(body), &in)) {
            wasi_io_streams_borrow_input_stream_t bin = wasi_io_streams_borrow_input_stream(in);
            while (ok) {
                leaderboard_list_u8_t chunk;
                wasi_io_streams_stream_error_t err;
                if (!wasi_io_streams_method_input_stream_blocking_read(bin, BANNER_MAX_LEN + 1, &chunk, &err)) {
                    if (err.tag == WASI_IO_STREAMS_STREAM_ERROR_LAST_OPERATION_FAILED) {
                        wasi_io_error_error_drop_own(err.val.last_operation_failed);
                        ok = false;
                    }
                    break;
                }
                buf_add(banner, chunk.ptr, chunk.len);
                leaderboard_list_u8_free(&chunk);
                if (banner->len > BANNER_MAX_LEN) ok = false;
            }
            wasi_io_streams_input_stream_drop_own(in);
        }
        wasi_http_types_future_trailers_drop_own(wasi_http_types_static_incoming_body_finish(body));
    } else if (!ok) {
        fprintf(stderr, "leaderboard: the banner app answered %u\n", (unsigned)status);
    }
    wasi_http_types_incoming_response_drop_own(response);
    wasi_http_types_future_incoming_response_drop_own(future);
    if (!ok) {
        buf_free(banner);
        return false;
    }
    while (banner->len > 0 && (banner->ptr[banner->len - 1] == '\n' || banner->ptr[banner->len - 1] == '\r' ||
                               banner->ptr[banner->len - 1] == ' ' || banner->ptr[banner->len - 1] == '\t'))
        banner->len--;
    return true;
}

typedef struct {
    str_t name;
    uint64_t votes;
} score_t;

static int score_cmp(const void *x, const void *y) {
    const score_t *a = x, *b = y;
    if (a->votes != b->votes) return a->votes > b->votes ? -1 : 1;
    size_t n = a->name.len < b->name.len ? a->name.len : b->name.len;
    int c = memcmp(a->name.ptr, b->name.ptr, n);
    if (c) return c;
    return a->name.len < b->name.len ? -1 : a->name.len > b->name.len;
}

// A stored count: decimal digits, as atomics.increment writes them.
static uint64_t parse_votes(const leaderboard_list_u8_t *v) {
    uint64_t n = 0;
    for (size_t i = 0; i < v->len; i++) {
        if (v->ptr[i] < '0' || v->ptr[i] > '9') return 0;
        n = n * 10 + (uint64_t)(v->ptr[i] - '0');
    }
    return n;
}

static void route_board(own_outparam_t outparam) {
    leaderboard_option_string_t title, banner_app;
    if (!config("title", &title)) {
        reply_unavailable(outparam);
        return;
    }
    if (!config("banner-app", &banner_app)) {
        leaderboard_option_string_free(&title);
        reply_unavailable(outparam);
        return;
    }

    own_bucket_t owned;
    leaderboard_list_string_t names = {0};
    leaderboard_list_option_tuple2_string_list_u8_t values = {0};
    bool ok = open_votes(&owned);
    if (ok) {
        borrow_bucket_t bucket = wasi_keyvalue_store_borrow_bucket(owned);
        ok = all_keys(bucket, &names);
        wasi_keyvalue_store_error_t err;
        if (ok && names.len > 0 && !wasi_keyvalue_batch_get_many(bucket, &names, &values, &err)) {
            log_kv_error("reading the votes", &err);
            ok = false;
        }
        wasi_keyvalue_store_bucket_drop_own(owned);
    }
    if (!ok) {
        leaderboard_list_string_free(&names);
        leaderboard_option_string_free(&title);
        leaderboard_option_string_free(&banner_app);
        reply_unavailable(outparam);
        return;
    }

    // A name deleted since list-keys has no value: left out.
    score_t *scores = xmalloc(sizeof *scores * values.len);
    size_t n = 0;
    for (size_t i = 0; i < values.len; i++) {
        if (!values.ptr[i].is_some) continue;
        scores[n].name = values.ptr[i].val.f0;
        scores[n].votes = parse_votes(&values.ptr[i].val.f1);
        n++;
    }
    qsort(scores, n, sizeof *scores, score_cmp);

    buf_t b = {0};
    buf_str(&b, "{\"title\": ");
    if (title.is_some)
        json_str(&b, title.val.ptr, title.val.len);
    else
        buf_str(&b, "null");
    buf_str(&b, ", \"banner\": ");
    buf_t banner = {0};
    if (banner_app.is_some && fetch_banner(&banner_app.val, &banner))
        json_str(&b, banner.ptr, banner.len);
    else
        buf_str(&b, "null");
    buf_free(&banner);
    buf_str(&b, ", \"scores\": [");
    for (size_t i = 0; i < n; i++) {
        char num[40];
        buf_str(&b, i ? ", {\"name\": " : "{\"name\": ");
        json_str(&b, scores[i].name.ptr, scores[i].name.len);
        snprintf(num, sizeof num, ", \"votes\": %llu}", (unsigned long long)scores[i].votes);
        buf_str(&b, num);
    }
    buf_str(&b, "]}\n");

    free(scores);
    leaderboard_list_option_tuple2_string_list_u8_free(&values);
    leaderboard_list_string_free(&names);
    leaderboard_option_string_free(&title);
    leaderboard_option_string_free(&banner_app);
    reply_buf(outparam, 200, &b);
}

// ---- POST /reset ----------------------------------------------------------

// Whether a header value starts with "Bearer " (the scheme in any case).
static bool bearer(const uint8_t *v) {
    static const char scheme[] = "bearer ";
    for (size_t i = 0; i < 7; i++) {
        uint8_t c = v[i] >= 'A' && v[i] <= 'Z' ? (uint8_t)(v[i] + 32) : v[i];
        if (c != (uint8_t)scheme[i]) return false;
    }
    return true;
}

// Whether the request carries `authorization: Bearer <admin-token>`. Without
// an admin-token in the configuration nobody may reset.
static bool authorized(borrow_request_t req, bool *config_ok) {
    *config_ok = true;
    leaderboard_option_string_t token;
    if (!config("admin-token", &token)) {
        *config_ok = false;
        return false;
    }
    if (!token.is_some || token.val.len == 0) {
        leaderboard_option_string_free(&token);
        return false;
    }
    wasi_http_types_own_headers_t headers = wasi_http_types_method_incoming_request_headers(req);
    wasi_http_types_field_name_t name = view_c("authorization");
    wasi_http_types_list_field_value_t values;
    wasi_http_types_method_fields_get(wasi_http_types_borrow_fields(headers), &name, &values);
    bool ok = false;
    if (values.len == 1 && values.ptr[0].len > 7 && bearer(values.ptr[0].ptr))
        ok = same_secret(values.ptr[0].ptr + 7, values.ptr[0].len - 7, token.val.ptr, token.val.len);
    wasi_http_types_list_field_value_free(&values);
    wasi_http_types_fields_drop_own(headers);
    leaderboard_option_string_free(&token);
    return ok;
}

static void route_reset(borrow_request_t req, own_outparam_t outparam) {
    bool config_ok;
    if (!authorized(req, &config_ok)) {
        if (config_ok)
            reply_str(outparam, 401, "{\"error\": \"unauthorized\"}\n");
        else
            reply_unavailable(outparam);
        return;
    }
    own_bucket_t owned;
    if (!open_votes(&owned)) {
        reply_unavailable(outparam);
        return;
    }
    borrow_bucket_t bucket = wasi_keyvalue_store_borrow_bucket(owned);
    leaderboard_list_string_t names;
    bool ok = all_keys(bucket, &names);
    if (ok) {
        wasi_keyvalue_store_error_t err;
        if (names.len > 0 && !wasi_keyvalue_batch_delete_many(bucket, &names, &err)) {
            log_kv_error("deleting the votes", &err);
            ok = false;
        }
        leaderboard_list_string_free(&names);
    }
    wasi_keyvalue_store_bucket_drop_own(owned);
    if (ok)
        reply_str(outparam, 200, "{\"reset\": true}\n");
    else
        reply_unavailable(outparam);
}

// ---- the export -----------------------------------------------------------

void exports_wasi_http_incoming_handler_handle(exports_wasi_http_incoming_handler_own_incoming_request_t request,
                                               exports_wasi_http_incoming_handler_own_response_outparam_t outparam) {
    borrow_request_t req = wasi_http_types_borrow_incoming_request(request);
    wasi_http_types_method_t m;
    wasi_http_types_method_incoming_request_method(req, &m);
    bool get = m.tag == WASI_HTTP_TYPES_METHOD_GET, post = m.tag == WASI_HTTP_TYPES_METHOD_POST;
    wasi_http_types_method_free(&m);

    str_t pq;
    buf_t path = {0};
    if (wasi_http_types_method_incoming_request_path_with_query(req, &pq)) {
        const uint8_t *q = memchr(pq.ptr, '?', pq.len);
        buf_add(&path, pq.ptr, q ? (size_t)(q - pq.ptr) : pq.len);
        leaderboard_string_free(&pq);
    }
    buf_add(&path, "", 1); // NUL-terminated
    const char *p = path.ptr;

    if (strcmp(p, "/") == 0 || strcmp(p, "") == 0) {
        if (get)
            route_board(outparam);
        else
            reply_str(outparam, 405, "{\"error\": \"method not allowed\"}\n");
    } else if (strncmp(p, "/vote/", 6) == 0) {
        if (post)
            route_vote(p + 6, outparam);
        else
            reply_str(outparam, 405, "{\"error\": \"method not allowed\"}\n");
    } else if (strcmp(p, "/healthz") == 0) {
        if (get)
            reply_str(outparam, 200, "{\"ok\": true}\n");
        else
            reply_str(outparam, 405, "{\"error\": \"method not allowed\"}\n");
    } else if (strcmp(p, "/reset") == 0) {
        if (post)
            route_reset(req, outparam);
        else
            reply_str(outparam, 405, "{\"error\": \"method not allowed\"}\n");
    } else {
        reply_str(outparam, 404, "{\"error\": \"not found\"}\n");
    }
    buf_free(&path);
    wasi_http_types_incoming_request_drop_own(request);
}
