/*
 * fake_rkllm.c -- a FAKE librkllmrt.so for edgebot's tests. It is NOT Rockchip's RKLLM runtime:
 * there is no NPU and no model here. It implements the functions and structs of the real header
 * (rkllm.h of airockchip/rknn-llm, tag release-v1.3.0, included verbatim from this directory) so
 * that edgebot's ctypes bindings can be exercised on a machine without an RK3588:
 *
 *   - rkllm_init prints the runtime's version line on stdout as the real runtime does
 *     ("I rkllm: rkllm-runtime version: 1.3.0, rknpu driver version: 0.9.8, platform: RK3588"),
 *     with the version set at compile time (-DFAKE_RKLLM_VERSION="1.2.3" builds a wrong one);
 *   - the "model" is a text file: a FAKE-RKLLM header, then a scripted reply whose tokens are
 *     separated by '|' bytes (see tests/test_rkllm_backend.py, write_fake_model);
 *   - rkllm_run / rkllm_run_async stream that reply token by token through the result callback
 *     from a worker thread, honour rkllm_abort between tokens and during the fake prefill, hold
 *     back incomplete UTF-8 characters (RKLLM_RUN_WAITING), report perf stats with
 *     RKLLM_RUN_FINISH, and keep a fake KV-cache size (keep_history);
 *   - every call is appended to $FAKE_RKLLM_LOG (one line per call, prompts hex-encoded) so tests
 *     can see exactly what the runtime was given.
 *
 * Build: gcc -shared -fPIC -pthread -I<this dir>/shim -I<this dir> -o librkllmrt.so fake_rkllm.c
 * (shim/cstdint lets the C++ header compile as C).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "rkllm.h"

#ifndef FAKE_RKLLM_VERSION
#define FAKE_RKLLM_VERSION "1.3.0"
#endif
#define FAKE_DRIVER_VERSION "0.9.8"
#define MAGIC "FAKE-RKLLM 1\n"

typedef struct {
    RKLLMParam param;
    char *model_path;
    RKLLMCallback cb;
    char **tokens;          /* the scripted reply, one NUL-terminated string per token */
    int n_tokens;
    int think_end;          /* index of the first token after the one completing "</think>" */
    int token_delay_us;
    int prefill_us_per_token;
    int loop;               /* 1: after the last token, start the answer again (never ends) */
    int error_after;        /* >= 0: report RKLLM_RUN_ERROR after this many tokens */
    pthread_mutex_t mu;
    pthread_t worker;
    int has_worker;
    volatile int abort_flag;
    volatile int running;
    int kv_size;
    /* the current run */
    char *prompt;
    int keep_history;
    int max_new;
    void *userdata;
} FakeLLM;

static void fake_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fake_log(const char *fmt, ...) {
    const char *path = getenv("FAKE_RKLLM_LOG");
    if (!path || !*path) return;
    FILE *fh = fopen(path, "a");
    if (!fh) return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(fh, fmt, ap);
    va_end(ap);
    fputc('\n', fh);
    fclose(fh);
}

static char *hex(const char *s) {
    if (!s) return strdup("-");
    size_t n = strlen(s);
    char *out = malloc(2 * n + 1);
    for (size_t i = 0; i < n; i++) sprintf(out + 2 * i, "%02x", (unsigned char)s[i]);
    out[2 * n] = 0;
    return out;
}

/* Sleep ``us`` microseconds in 1 ms slices; returns 1 as soon as abort is requested. */
static int nap(FakeLLM *f, long us) {
    while (us > 0) {
        if (f->abort_flag) return 1;
        long step = us > 1000 ? 1000 : us;
        struct timespec ts = {0, step * 1000};
        nanosleep(&ts, NULL);
        us -= step;
    }
    return f->abort_flag;
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000.0 + ts.tv_nsec / 1e6;
}

/* Length of the longest prefix of buf[0:n] that ends on a UTF-8 character boundary. */
static size_t complete_utf8(const unsigned char *buf, size_t n) {
    size_t i = n;
    int back = 0;
    while (i > 0 && back < 4 && (buf[i - 1] & 0xC0) == 0x80) { i--; back++; }
    if (i == 0) return n;
    unsigned char lead = buf[i - 1];
    size_t want = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
    return (n - (i - 1) >= want) ? n : i - 1;
}

static int ends_with_think_close(const char *s) {
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == '\t')) n--;
    return n >= 8 && memcmp(s + n - 8, "</think>", 8) == 0;
}

static int load_script(FakeLLM *f, const char *path) {
    FILE *fh = fopen(path, "rb");
    if (!fh) return -1;
    fseek(fh, 0, SEEK_END);
    long size = ftell(fh);
    fseek(fh, 0, SEEK_SET);
    char *data = malloc(size + 1);
    size_t got = fread(data, 1, size, fh);
    fclose(fh);
    data[got] = 0;
    if (got < strlen(MAGIC) || memcmp(data, MAGIC, strlen(MAGIC)) != 0) { free(data); return -2; }
    f->token_delay_us = 1000;
    f->error_after = -1;
    char *p = data + strlen(MAGIC);
    for (;;) {  /* key=value lines until "---" */
        char *eol = strchr(p, '\n');
        if (!eol) { free(data); return -2; }
        *eol = 0;
        if (strcmp(p, "---") == 0) { p = eol + 1; break; }
        int v;
        if (sscanf(p, "token_delay_us=%d", &v) == 1) f->token_delay_us = v;
        else if (sscanf(p, "prefill_us_per_token=%d", &v) == 1) f->prefill_us_per_token = v;
        else if (sscanf(p, "loop=%d", &v) == 1) f->loop = v;
        else if (sscanf(p, "error_after=%d", &v) == 1) f->error_after = v;
        p = eol + 1;
    }
    size_t body = strlen(p);
    if (body && p[body - 1] == '\n') p[--body] = 0;
    f->n_tokens = 1;
    for (char *q = p; *q; q++) f->n_tokens += (*q == '|');
    f->tokens = calloc(f->n_tokens, sizeof(char *));
    char *acc = calloc(1, body + 1);
    int i = 0;
    f->think_end = 0;
    for (char *start = p;; i++) {
        char *bar = strchr(start, '|');
        size_t len = bar ? (size_t)(bar - start) : strlen(start);
        f->tokens[i] = strndup(start, len);
        strncat(acc, start, len);
        if (!f->think_end && strstr(acc, "</think>")) f->think_end = i + 1;
        if (!bar) break;
        start = bar + 1;
    }
    free(acc);
    free(data);
    return 0;
}

RKLLMParam rkllm_createDefaultParam(void) {
    RKLLMParam p;
    memset(&p, 0, sizeof(p));
    p.max_context_len = 512;
    p.max_new_tokens = -1;
    p.top_k = 1;
    p.n_keep = -1;
    p.top_p = 0.9f;
    p.temperature = 0.8f;
    p.repeat_penalty = 1.1f;
    p.mirostat_tau = 5.0f;
    p.mirostat_eta = 0.1f;
    p.extend_param.n_batch = 1;
    return p;
}

int rkllm_init(LLMHandle *handle, RKLLMParam *param, RKLLMCallback *callback) {
    /* Like the real runtime: the version line on stdout (buffered stdio, as printf is). */
    printf("I rkllm: rkllm-runtime version: %s, rknpu driver version: %s, platform: RK3588\n",
           FAKE_RKLLM_VERSION, FAKE_DRIVER_VERSION);
    if (!handle || !param || !callback || !callback->result_callback) {
        printf("E rkllm: invalid arguments to rkllm_init\n");
        return -1;
    }
    FakeLLM *f = calloc(1, sizeof(FakeLLM));
    f->param = *param;
    f->cb = *callback;
    f->model_path = strdup(param->model_path ? param->model_path : "");
    int rc = load_script(f, f->model_path);
    fake_log("init model=%s max_context_len=%d max_new_tokens=%d is_async=%d skip_special_token=%d "
             "enabled_cpus_num=%d enabled_cpus_mask=%u rc=%d", f->model_path, param->max_context_len,
             param->max_new_tokens, param->is_async, param->skip_special_token,
             param->extend_param.enabled_cpus_num, param->extend_param.enabled_cpus_mask, rc);
    if (rc == -1) {
        printf("E rkllm: failed to open model file %s: %s\n", f->model_path, strerror(errno));
    } else if (rc == -2) {
        printf("E RKNN: invalid rknn llm model magic\nE rkllm: load model file error!\n");
    }
    if (rc != 0) {
        free(f->model_path);
        free(f);
        *handle = NULL;
        return -1;
    }
    pthread_mutex_init(&f->mu, NULL);
    *handle = f;
    return 0;
}

static int call(FakeLLM *f, RKLLMResult *r, LLMCallState state) {
    void *ud = f->userdata ? f->userdata : f->cb.result_userdata;
    return f->cb.result_callback(r, ud, state);
}

static void *worker(void *arg) {
    FakeLLM *f = arg;
    int n_prompt = (int)((strlen(f->prompt) + 3) / 4);
    if (n_prompt < 1) n_prompt = 1;
    double t0 = now_ms();
    int generated = 0, aborted = 0, failed = 0;
    if (nap(f, (long)n_prompt * f->prefill_us_per_token)) aborted = 1;
    double t1 = now_ms();
    int first = ends_with_think_close(f->prompt) ? f->think_end : 0;
    int max_new = f->max_new > 0 ? f->max_new : f->param.max_new_tokens;
    unsigned char pending[256];
    size_t npending = 0;
    for (int i = first; !aborted; i++) {
        if (i >= f->n_tokens) {
            if (!f->loop) break;
            i = f->think_end;
        }
        if (max_new > 0 && generated >= max_new) break;
        if (f->error_after >= 0 && generated >= f->error_after) { failed = 1; break; }
        if (f->abort_flag) { aborted = 1; break; }
        size_t len = strlen(f->tokens[i]);
        if (npending + len >= sizeof(pending)) npending = 0;
        memcpy(pending + npending, f->tokens[i], len);
        npending += len;
        size_t done = complete_utf8(pending, npending);
        RKLLMResult r;
        memset(&r, 0, sizeof(r));
        r.token_id = i;
        char text[257];
        memcpy(text, pending, done);
        text[done] = 0;
        r.text = text;
        generated++;
        call(f, &r, done == npending ? RKLLM_RUN_NORMAL : RKLLM_RUN_WAITING);
        memmove(pending, pending + done, npending - done);
        npending -= done;
        if (nap(f, f->token_delay_us)) aborted = 1;
    }
    double t2 = now_ms();
    pthread_mutex_lock(&f->mu);
    f->kv_size = f->keep_history ? f->kv_size + n_prompt + generated : 0;
    pthread_mutex_unlock(&f->mu);
    if (failed) {
        call(f, NULL, RKLLM_RUN_ERROR);
    } else if (!aborted) {  /* an aborted run ends without a callback: the caller must not wait for one */
        RKLLMResult r;
        memset(&r, 0, sizeof(r));
        r.perf.prefill_time_ms = (float)(t1 - t0);
        r.perf.prefill_tokens = n_prompt;
        r.perf.generate_time_ms = (float)(t2 - t1);
        r.perf.generate_tokens = generated;
        r.perf.memory_usage_mb = 42.0f;
        call(f, &r, RKLLM_RUN_FINISH);
    }
    fake_log("run-end generated=%d aborted=%d failed=%d kv_size=%d", generated, aborted, failed, f->kv_size);
    f->running = 0;
    return NULL;
}

static int start(FakeLLM *f, RKLLMInput *input, RKLLMInferParam *infer, void *userdata) {
    if (!f || !input) return -1;
    if (input->input_type != RKLLM_INPUT_PROMPT || !input->prompt_input) {
        printf("E rkllm: the fake runtime only takes RKLLM_INPUT_PROMPT\n");
        return -1;
    }
    pthread_mutex_lock(&f->mu);
    if (f->running) {
        pthread_mutex_unlock(&f->mu);
        printf("E rkllm: a task is already running\n");
        return -1;
    }
    if (f->has_worker) pthread_join(f->worker, NULL);
    f->has_worker = 0;
    f->running = 1;
    f->abort_flag = 0;
    free(f->prompt);
    f->prompt = strdup(input->prompt_input);
    f->keep_history = infer ? infer->keep_history : 0;
    f->max_new = infer ? infer->max_new_tokens : 0;
    f->userdata = userdata;
    char *h = hex(f->prompt);
    RKLLMSamplingParam *sp = infer ? infer->sampling_params : NULL;
    fake_log("run keep_history=%d max_new_tokens=%d role=%s enable_thinking=%d top_k=%d top_p=%.2f "
             "temperature=%.2f prompt=%s", f->keep_history, f->max_new, input->role ? input->role : "-",
             input->enable_thinking, sp ? sp->top_k : -1, sp ? sp->top_p : -1.0, sp ? sp->temperature : -1.0, h);
    free(h);
    pthread_create(&f->worker, NULL, worker, f);
    f->has_worker = 1;
    pthread_mutex_unlock(&f->mu);
    return 0;
}

int rkllm_run(LLMHandle handle, RKLLMInput *rkllm_input, RKLLMInferParam *rkllm_infer_params, void *userdata) {
    FakeLLM *f = handle;
    int rc = start(f, rkllm_input, rkllm_infer_params, userdata);
    if (rc == 0) {
        pthread_join(f->worker, NULL);
        f->has_worker = 0;
    }
    return rc;
}

int rkllm_run_async(LLMHandle handle, RKLLMInput *rkllm_input, RKLLMInferParam *rkllm_infer_params,
                    void *userdata) {
    return start(handle, rkllm_input, rkllm_infer_params, userdata);
}

int rkllm_abort(LLMHandle handle) {
    FakeLLM *f = handle;
    if (!f) return -1;
    f->abort_flag = 1;
    fake_log("abort running=%d", f->running);
    return 0;
}

int rkllm_is_running(LLMHandle handle) {
    FakeLLM *f = handle;
    return f && f->running ? 1 : 0;
}

int rkllm_clear_kv_cache(LLMHandle handle, int keep_system_prompt, int *start_pos, int *end_pos) {
    FakeLLM *f = handle;
    if (!f) return -1;
    pthread_mutex_lock(&f->mu);
    f->kv_size = 0;
    pthread_mutex_unlock(&f->mu);
    fake_log("clear_kv_cache keep_system_prompt=%d ranges=%d", keep_system_prompt, start_pos || end_pos);
    return 0;
}

int rkllm_get_kv_cache_size(LLMHandle handle, int *cache_sizes) {
    FakeLLM *f = handle;
    if (!f || !cache_sizes) return -1;
    pthread_mutex_lock(&f->mu);
    cache_sizes[0] = f->kv_size;
    pthread_mutex_unlock(&f->mu);
    return 0;
}

int rkllm_set_chat_template(LLMHandle handle, const char *system_prompt, const char *prompt_prefix,
                            const char *prompt_postfix) {
    if (!handle) return -1;
    char *a = hex(system_prompt), *b = hex(prompt_prefix), *c = hex(prompt_postfix);
    fake_log("set_chat_template system=%s prefix=%s postfix=%s", a, b, c);
    free(a); free(b); free(c);
    return 0;
}

int rkllm_destroy(LLMHandle handle) {
    FakeLLM *f = handle;
    if (!f) return -1;
    f->abort_flag = 1;
    if (f->has_worker) pthread_join(f->worker, NULL);
    fake_log("destroy");
    for (int i = 0; i < f->n_tokens; i++) free(f->tokens[i]);
    free(f->tokens);
    free(f->prompt);
    free(f->model_path);
    pthread_mutex_destroy(&f->mu);
    free(f);
    return 0;
}

/* Declared in the header; not used by edgebot, so the fake only refuses them. */
int rkllm_load_lora(LLMHandle handle, RKLLMLoraAdapter *lora_adapter) { (void)handle; (void)lora_adapter; return -1; }
int rkllm_load_prompt_cache(LLMHandle handle, const char *path) { (void)handle; (void)path; return -1; }
int rkllm_release_prompt_cache(LLMHandle handle) { (void)handle; return -1; }
int rkllm_set_function_tools(LLMHandle handle, const char *system_prompt, const char *tools,
                             const char *tool_response_str) {
    (void)handle; (void)system_prompt; (void)tools; (void)tool_response_str;
    return -1;
}
int rkllm_set_cross_attn_params(LLMHandle handle, RKLLMCrossAttnParam *p) { (void)handle; (void)p; return -1; }

/* Fake-only: the header's struct sizes and field offsets as gcc lays them out for this ABI, so the
 * tests can compare them with the ctypes declarations. Unknown names return (size_t)-1. */
#define SIZE(T) if (strcmp(name, #T) == 0) return sizeof(T);
size_t fake_rkllm_sizeof(const char *name) {
    SIZE(RKLLMExtendParam) SIZE(RKLLMParam) SIZE(RKLLMLoraAdapter) SIZE(RKLLMEmbedInput) SIZE(RKLLMTokenInput)
    SIZE(RKLLMMultiModalInput) SIZE(RKLLMInput) SIZE(RKLLMLoraParam) SIZE(RKLLMPromptCacheParam)
    SIZE(RKLLMCrossAttnParam) SIZE(RKLLMSamplingParam) SIZE(RKLLMInferParam) SIZE(RKLLMResultLastHiddenLayer)
    SIZE(RKLLMResultLogits) SIZE(RKLLMPerfStat) SIZE(RKLLMResult) SIZE(RKLLMCallback)
    return (size_t)-1;
}

#define OFF(T, F) if (strcmp(type, #T) == 0 && strcmp(field, #F) == 0) return offsetof(T, F);
size_t fake_rkllm_offsetof(const char *type, const char *field) {
    OFF(RKLLMExtendParam, enabled_cpus_mask) OFF(RKLLMExtendParam, n_batch) OFF(RKLLMExtendParam, reserved)
    OFF(RKLLMParam, max_context_len) OFF(RKLLMParam, top_p) OFF(RKLLMParam, mirostat_eta)
    OFF(RKLLMParam, skip_special_token) OFF(RKLLMParam, ignore_eos_token) OFF(RKLLMParam, is_async)
    OFF(RKLLMParam, extend_param)
    OFF(RKLLMInput, enable_thinking) OFF(RKLLMInput, input_type) OFF(RKLLMInput, prompt_input)
    OFF(RKLLMMultiModalInput, image) OFF(RKLLMMultiModalInput, video)
    OFF(RKLLMInferParam, lora_params) OFF(RKLLMInferParam, sampling_params) OFF(RKLLMInferParam, keep_history)
    OFF(RKLLMInferParam, max_new_tokens)
    OFF(RKLLMResult, token_id) OFF(RKLLMResult, last_hidden_layer) OFF(RKLLMResult, logits) OFF(RKLLMResult, perf)
    OFF(RKLLMPerfStat, memory_usage_mb)
    OFF(RKLLMCallback, tokenizer_callback) OFF(RKLLMCallback, embed_callback) OFF(RKLLMCallback, embed_userdata)
    OFF(RKLLMSamplingParam, mirostat_eta)
    return (size_t)-1;
}
