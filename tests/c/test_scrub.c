/* C tests of plugin/scrub.c: every form, partial echoes at every offset, merging, the cut rule,
 * plain text untouched, wiping, and linear cost on hostile input (built without Lua). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "scrub.h"

/* free is wrapped (-Wl,--wrap=free) so that a test can see whether memory went back to the
 * allocator still holding a secret. */
void __real_free(void *p);
static const char *canary;
static size_t canary_n;
static volatile int canary_released;
/* blocks of interest are found by content: only the first bytes of each freed block that the
 * test knows the size of are inspected, via malloc_usable_size */
#include <malloc.h>
void __wrap_free(void *p)
{
    if (p && canary) {
        size_t n = malloc_usable_size(p);
        if (n >= canary_n && memmem(p, n, canary, canary_n)) canary_released++;
    }
    __real_free(p);
}

static int passed, failed;
#define CHECK(cond)                                                              \
    do {                                                                         \
        if (cond) passed++;                                                      \
        else { failed++; fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); } \
    } while (0)

/* scrubs s with set into a fresh string (caller frees) */
static char *scrub(const cx_secrets *set, const char *s, size_t n, size_t *outn, long *marks)
{
    cxone_buf b;
    cxone_buf_init(&b);
    long m = cx_scrub(set, s, n, &b);
    if (marks) *marks = m;
    char *r = malloc(b.len + 1);
    if (!r) abort();
    if (b.len) memcpy(r, b.p, b.len);
    r[b.len] = '\0';
    *outn = b.len;
    cxone_buf_free(&b);
    return r;
}

static int scrubs_to(const cx_secrets *set, const char *in, size_t n, const char *want, size_t wn)
{
    size_t on;
    char *o = scrub(set, in, n, &on, NULL);
    int ok = on == wn && memcmp(o, want, wn) == 0;
    if (!ok) fprintf(stderr, "  scrubbed to [%.*s], want [%.*s]\n", (int)on, o, (int)wn, want);
    free(o);
    return ok;
}
#define SCRUBS(set, in, want) scrubs_to(set, in, sizeof in - 1, want, sizeof want - 1)

/* the bytes outside "[redacted]" markers contain no window of 8 bytes of needle[0..nn) */
static int no_window_outside_marks(const char *o, size_t on, const char *needle, size_t nn)
{
    char *mask = calloc(on + 1, 1);
    if (!mask) abort();
    const size_t ml = sizeof CX_SCRUB_MARK - 1;
    for (size_t i = 0; i + ml <= on; i++)
        if (memcmp(o + i, CX_SCRUB_MARK, ml) == 0) memset(mask + i, 1, ml);
    int ok = 1;
    for (size_t i = 0; ok && i + 8 <= on; i++) {
        int clean = 1;
        for (size_t k = 0; k < 8; k++) clean &= !mask[i + k];
        if (!clean) continue;
        for (size_t j = 0; j + 8 <= nn; j++)
            if (memcmp(o + i, needle + j, 8) == 0) { ok = 0; break; }
    }
    free(mask);
    return ok;
}

static void test_raw_and_partial(void)
{
    static const char sec[] = "Zq8-secret-Value-0123456789";
    size_t sn = sizeof sec - 1;
    cx_secrets set;
    cx_secrets_init(&set);
    CHECK(cx_secrets_add(&set, sec, sn) == 0 && cx_secrets_count(&set) == 1);
    CHECK(SCRUBS(&set, "x Zq8-secret-Value-0123456789 y", "x [redacted] y"));
    /* every substring of 8 bytes or more, at every offset, is scrubbed whole into one marker,
     * in the middle of text and at its edges */
    int all = 1;
    for (size_t off = 0; off < sn; off++)
        for (size_t len = 8; off + len <= sn; len++) {
            char in[128], want[128];
            int n = snprintf(in, sizeof in, "pre(%.*s)post", (int)len, sec + off);
            int wn = snprintf(want, sizeof want, "pre([redacted])post");
            all &= scrubs_to(&set, in, (size_t)n, want, (size_t)wn);
            all &= scrubs_to(&set, sec + off, len, "[redacted]", 10);
        }
    CHECK(all);
    /* 7 bytes in the middle of text stay (below the window), as do unrelated words */
    CHECK(SCRUBS(&set, "a secret- b", "a secret- b"));
    CHECK(SCRUBS(&set, "plain text about a secret value", "plain text about a secret value"));
    /* two echoes, adjacent: one marker; apart: two */
    size_t on;
    long marks;
    char *o = scrub(&set, "Zq8-secret-Vsecret-Value-01", 27, &on, &marks);
    CHECK(marks == 1 && strcmp(o, "[redacted]") == 0);
    free(o);
    o = scrub(&set, "Zq8-secret-V and 0123456789", 27, &on, &marks);
    CHECK(marks == 2 && strcmp(o, "[redacted] and [redacted]") == 0);
    free(o);
    /* NUL bytes around and a secret containing NULs */
    CHECK(SCRUBS(&set, "\0Zq8-secret-V\0", "\0[redacted]\0"));
    static const char nul[] = "ab\0cd\0ef\0gh\0ij";
    CHECK(cx_secrets_add(&set, nul, sizeof nul - 1) == 0);
    CHECK(SCRUBS(&set, "<\0cd\0ef\0gh>", "<[redacted]>"));
    cx_secrets_free(&set);
    CHECK(cx_secrets_count(&set) == 0);
    /* after free: no secrets, text as is */
    CHECK(SCRUBS(&set, "Zq8-secret-Value", "Zq8-secret-Value"));
    CHECK(SCRUBS(NULL, "Zq8-secret-Value", "Zq8-secret-Value"));
}

static void test_short_and_tail(void)
{
    cx_secrets set;
    cx_secrets_init(&set);
    CHECK(cx_secrets_add(&set, "tok", 3) == 0 && cx_secrets_count(&set) == 0); /* ignored */
    CHECK(cx_secrets_add_str(&set, "pa55w") == 0 && cx_secrets_count(&set) == 1);
    CHECK(cx_secrets_add_str(&set, NULL) == 0);
    CHECK(SCRUBS(&set, "tok stays", "tok stays"));
    CHECK(SCRUBS(&set, "a pa55w b pa55wpa55w", "a [redacted] b [redacted]"));
    CHECK(SCRUBS(&set, "pa55 and a55w stay", "pa55 and a55w stay")); /* short: whole only */
    /* the tail: a text cut inside a secret, from CX_SCRUB_TAIL_MIN bytes of it */
    CHECK(SCRUBS(&set, "cut at pa55", "cut at [redacted]"));
    CHECK(SCRUBS(&set, "cut at pa5", "cut at pa5"));
    CHECK(cx_secrets_add_str(&set, "s3cr\xc3\xa9t-value-01") == 0);
    CHECK(SCRUBS(&set, "cut at s3cr\xc3\xa9t-v", "cut at [redacted]"));
    CHECK(SCRUBS(&set, "cut at s3cr\xc3\xa9", "cut at [redacted]"));
    CHECK(SCRUBS(&set, "cut at s3cr", "cut at [redacted]"));
    CHECK(SCRUBS(&set, "cut at s3c", "cut at s3c"));
    /* a tail that touches a hit merges with it */
    CHECK(SCRUBS(&set, "x value-01s3cr", "x [redacted]"));
    /* cx_scrub_cut: no start of a form ends the text, repeatedly */
    static const char twice[] = "0123456789s3cr\xc3\xa9t-vs3cr\xc3\xa9t-va";
    size_t n = sizeof twice - 1;
    CHECK(cx_scrub_cut(&set, twice, &n) == 1 && n == 10);
    n = 12;
    CHECK(cx_scrub_cut(&set, "0123456789ab", &n) == 0 && n == 12);
    n = 14;
    CHECK(cx_scrub_cut(&set, "0123456789pa55", &n) == 1 && n == 10);
    /* a whole secret at the end is not a start: cut leaves it (cx_scrub removes it) */
    n = 15;
    CHECK(cx_scrub_cut(&set, "0123456789pa55w", &n) == 0 && n == 15);
    cx_secrets_free(&set);
}

/* Each encoded form of a secret, whole and in part. */
static void test_forms(void)
{
    /* a secret with a space, a quote, a backslash, a slash, a control character, é and 😀 */
    static const char sec[] = "Ab c\"d\\e/f\x01g\xc3\xa9h\xf0\x9f\x98\x80ij";
    static const char *const forms[] = {
        "Ab%20c%22d%5Ce%2Ff%01g%C3%A9h%F0%9F%98%80ij",          /* URL, upper */
        "Ab%20c%22d%5ce%2ff%01g%c3%a9h%f0%9f%98%80ij",          /* URL, lower */
        "Ab+c%22d%5Ce%2Ff%01g%C3%A9h%F0%9F%98%80ij",            /* form */
        "Ab c\\\"d\\\\e/f\\u0001g\xc3\xa9h\xf0\x9f\x98\x80ij",  /* JSON as our encoder writes it */
        "Ab c\\\"d\\\\e/f\\u0001g\\u00e9h\\ud83d\\ude00ij",     /* JSON, ASCII, lower */
        "Ab c\\\"d\\\\e/f\\u0001g\\u00E9h\\uD83D\\uDE00ij",     /* JSON, ASCII, upper */
    };
    cx_secrets set;
    cx_secrets_init(&set);
    CHECK(cx_secrets_add(&set, sec, sizeof sec - 1) == 0);
    for (size_t f = 0; f < sizeof forms / sizeof *forms; f++) {
        size_t fn = strlen(forms[f]);
        int all = 1;
        for (size_t off = 0; off + 8 <= fn; off++)
            for (size_t len = 8; off + len <= fn; len++) {
                char in[256];
                int n = snprintf(in, sizeof in, "<%.*s>", (int)len, forms[f] + off);
                all &= scrubs_to(&set, in, (size_t)n, "<[redacted]>", 12);
            }
        if (!all) fprintf(stderr, "  form %zu\n", f);
        CHECK(all);
    }
    cx_secrets_free(&set);
}

static void b64(const unsigned char *s, size_t n, int url, char *out)
{
    const char *al = url ? "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
                         : "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t j = 0;
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)s[i] << 16 | (i + 1 < n ? (unsigned)s[i + 1] << 8 : 0)
                   | (i + 2 < n ? s[i + 2] : 0);
        out[j++] = al[v >> 18 & 63];
        out[j++] = al[v >> 12 & 63];
        out[j++] = i + 1 < n ? al[v >> 6 & 63] : '=';
        out[j++] = i + 2 < n ? al[v & 63] : '=';
    }
    out[j] = '\0';
}

/* base64: a secret inside a longer encoded text (Basic credentials "id:secret", a JWT-like
 * blob), at each alignment, in both alphabets; any 8+ characters of it are scrubbed. */
static void test_base64(void)
{
    static const char sec[] = "\xfb\xff\xbe-secret~?>-0123";
    cx_secrets set;
    cx_secrets_init(&set);
    CHECK(cx_secrets_add(&set, sec, sizeof sec - 1) == 0);
    int all = 1, url_differs = 0;
    for (int url = 0; url < 2; url++)
        for (size_t pre = 0; pre < 6; pre++) {
            unsigned char plain[64];
            char enc[128];
            memcpy(plain, "client:", pre);
            memcpy(plain + pre, sec, sizeof sec - 1);
            memcpy(plain + pre + sizeof sec - 1, "+tail", 5);
            size_t pn = pre + sizeof sec - 1 + 5;
            b64(plain, pn, url, enc);
            if (url && strpbrk(enc, "-_")) url_differs = 1;
            size_t on;
            char *o = scrub(&set, enc, strlen(enc), &on, NULL);
            /* the characters the secret determines are gone: none of its 3 encodings' windows */
            all &= strstr(o, "[redacted]") != NULL;
            for (size_t a = 0; a < 3; a++) {
                unsigned char al[64];
                char e2[128];
                memset(al, 0, a);
                memcpy(al + a, sec, sizeof sec - 1);
                b64(al, a + sizeof sec - 1, url, e2);
                /* inner characters only (those not touching the unknown neighbours) */
                size_t first = (8 * a + 5) / 6, last = (8 * (a + sizeof sec - 1)) / 6;
                all &= no_window_outside_marks(o, on, e2 + first, last - first);
            }
            /* and partial echoes of the encoded text: every 8-char substring of the part the
             * secret determines */
            size_t first = (8 * pre + 5) / 6 + 0, last = (8 * (pre + sizeof sec - 1)) / 6;
            for (size_t i = first; i + 8 <= last; i++) {
                char *p = scrub(&set, enc + i, 8, &on, NULL);
                all &= strcmp(p, "[redacted]") == 0;
                free(p);
            }
            free(o);
        }
    CHECK(all);
    CHECK(url_differs); /* the URL-safe alphabet was really exercised */
    /* a base64 blob that is not of the secret stays */
    CHECK(SCRUBS(&set, "aGVsbG8gd29ybGQgaGVsbG8gd29ybGQ=", "aGVsbG8gd29ybGQgaGVsbG8gd29ybGQ="));
    cx_secrets_free(&set);
}

/* Several secrets: hits of different secrets overlapping or touching merge into one marker. */
static void test_across_secrets(void)
{
    cx_secrets set;
    cx_secrets_init(&set);
    CHECK(cx_secrets_add_str(&set, "AAAA-first-secret") == 0);
    CHECK(cx_secrets_add_str(&set, "second-secret-BBBB") == 0);
    CHECK(cx_secrets_add_str(&set, "1234") == 0);
    size_t on;
    long marks;
    /* the end of one and the start of the other, overlapping on "secret" */
    char *o = scrub(&set, "[first-secret-BBBB]", 19, &on, &marks);
    CHECK(marks == 1 && strcmp(o, "[[redacted]]") == 0);
    free(o);
    o = scrub(&set, "x first-secret1234second-se y", 29, &on, &marks);
    CHECK(marks == 1 && strcmp(o, "x [redacted] y") == 0);
    free(o);
    o = scrub(&set, "1234 AAAA-fi 1234", 17, &on, &marks);
    CHECK(marks == 2 && strcmp(o, "[redacted] AAAA-fi [redacted]") == 0);
    free(o);
    cx_secrets_free(&set);
}

/* The message form and the in-place form. */
static void test_message_inplace(void)
{
    cx_secrets set;
    cx_secrets_init(&set);
    CHECK(cx_secrets_add_str(&set, "tOkEn-0123456789-abcdef") == 0);
    CHECK(cx_secrets_add_str(&set, "sec?ret!X") == 0);
    char out[32];
    static const char msg[] = "bad token tOkEn-0123456789\n\x1b[31m";
    size_t n = cx_scrub_message(&set, msg, sizeof msg - 1, out, sizeof out);
    CHECK(strcmp(out, "bad token [redacted]??[31m") == 0 && n == strlen(out));
    /* a non-printable byte that becomes '?' completes a secret: scrubbed in the second pass */
    cx_scrub_message(&set, "x sec\x01ret!X y", 13, out, sizeof out);
    CHECK(strcmp(out, "x [redacted] y") == 0);
    /* cut to cap-1, never ending with a secret's start */
    char small[16];
    cx_scrub_message(&set, "Hello worl tOkE and more", 24, small, sizeof small);
    CHECK(strcmp(small, "Hello worl ") == 0);
    cx_scrub_message(&set, "anything", 8, small, 1);
    CHECK(small[0] == '\0');
    /* fail closed: a set that ran out of memory hides everything */
    cx_secrets broken;
    cx_secrets_init(&broken);
    broken.oom = 1;
    broken.nform = 1;
    cx_scrub_message(&broken, "text", 4, out, sizeof out);
    CHECK(strcmp(out, "[redacted]") == 0);
    CHECK(cx_secrets_add_str(&broken, "whatever-secret") == -1);
    /* in place */
    char buf[40] = "Bearer tOkEn-0123456789-abcdef ok";
    CHECK(cx_scrub_inplace(&set, buf, sizeof buf) == 0 && strcmp(buf, "Bearer [redacted] ok") == 0);
    char tight[14] = "ab tOkEn-01234";  /* not terminated: the whole buffer is the text */
    memcpy(tight, "ab tOkEn-01234", 14);
    CHECK(cx_scrub_inplace(&set, tight, sizeof tight) == 0 && strcmp(tight, "ab [redacted]") == 0);
    char grow[12] = "ab 1 tOkEn";   /* the marker is longer than what it hides: cut at cap-1 */
    CHECK(cx_scrub_inplace(&set, grow, sizeof grow) == 0 && strcmp(grow, "ab 1 [redac") == 0);
    cx_secrets_free(&set);
}

/* The span interface keeps its callers' behaviour on the new rule. */
static void test_spans(void)
{
    static const char sec1[] = "s3cr\xc3\xa9t-value-01";
    const cxone_span spans[] = {{sec1, sizeof sec1 - 1}, {"tok", 3}, {"abcd", 4}, {NULL, 0}};
    cxone_buf b;
    cxone_buf_init(&b);
    static const char in[] = "x s3cr\xc3\xa9t-v y abcd";
    cxone_scrub_into(&b, in, sizeof in - 1, spans, 4);
    CHECK(b.len == 25 && memcmp(b.p, "x [redacted] y [redacted]", 25) == 0);
    cxone_buf_free(&b);
    size_t n = 16;
    CHECK(cxone_scrub_cut("0123456789s3cr\xc3\xa9", &n, spans, 4) == 1 && n == 10);
    char out[64];
    cxone_scrub_message("value-01 tok", 12, spans, 4, out, sizeof out);
    CHECK(strcmp(out, "[redacted] tok") == 0);
}

/* A freed set leaves no secret, form or window in released memory. */
static void test_wiped(void)
{
    static const char sec[] = "W1pe-me-canary-5ecret-value";
    cx_secrets set;
    cx_secrets_init(&set);
    for (int i = 0; i < 40; i++) { /* enough to grow every table a few times */
        char s[64];
        snprintf(s, sizeof s, "%s-%02d", sec, i);
        CHECK(cx_secrets_add_str(&set, s) == 0);
    }
    canary = "5ecret-v"; /* one 8-byte window: in the forms text and (as a key) in the index */
    canary_n = 8;
    canary_released = 0;
    cx_secrets_free(&set);
    int text_seen = canary_released;
    canary = NULL;
    CHECK(text_seen == 0);
    /* the watcher does see an unwiped block (so the check above can fail) */
    char *p = calloc(64, 1);
    if (!p) abort();
    memcpy(p, "xx5ecret-vxx", 13);
    canary = "5ecret-v";
    canary_released = 0;
    void (*volatile release)(void *) = free; /* not elided with the allocation */
    release(p);
    CHECK(canary_released == 1);
    canary = NULL;
}

static double secs(void)
{
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t); /* CPU time: the machine may be shared */
    return (double)t.tv_sec + t.tv_nsec / 1e9;
}

/* Hostile input: text made of repeated starts of a secret, and of a secret's bytes with one
 * wrong, costs time linear in the text: doubling the text at most about doubles the time.
 * (This checks the growth with a large margin, not a speed.) Also prints the speed on a
 * large body with 40 secrets (bench material, not asserted). */
static void test_linear(size_t body)
{
    cx_secrets set;
    cx_secrets_init(&set);
    static const char a[] = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab";
    CHECK(cx_secrets_add_str(&set, a) == 0);
    CHECK(cx_secrets_add_str(&set, "aaab") == 0);
    CHECK(cx_secrets_add_str(&set, "aaaaaaab") == 0);
    double t[2];
    size_t sizes[2] = {1u << 18, 1u << 20};
    for (int r = 0; r < 2; r++) {
        char *s = malloc(sizes[r]);
        if (!s) abort();
        for (size_t i = 0; i < sizes[r]; i++) s[i] = (i % 47 == 46) ? 'c' : 'a';
        cxone_buf b;
        cxone_buf_init(&b);
        double t0 = secs();
        long m = cx_scrub(&set, s, sizes[r], &b);
        t[r] = secs() - t0;
        CHECK(m >= 0 && !b.oom);
        size_t cut = sizes[r];
        t0 = secs();
        cx_scrub_cut(&set, s, &cut);
        CHECK(cut < sizes[r]); /* it ended with a start of the long secret */
        memset(s, 'a', sizes[r]); /* all starts: each cut uncovers another */
        cut = sizes[r];
        cx_scrub_cut(&set, s, &cut);
        CHECK(cut < 7);
        t[r] += secs() - t0;
        cxone_buf_free(&b);
        free(s);
    }
    /* 4x the text: under 16x the time (quadratic would be 16x) */
    fprintf(stderr, "  hostile: %.1f ms for 256 KiB, %.1f ms for 1 MiB\n", t[0] * 1e3, t[1] * 1e3);
    CHECK(t[1] < 16 * t[0] + 0.05);
    cx_secrets_free(&set);

    /* speed: a JSON-ish body, 40 secrets of 32 bytes (figures for bench, not asserted) */
    cx_secrets_init(&set);
    unsigned long long x = 0x9e3779b97f4a7c15ULL;
    for (int i = 0; i < 40; i++) { /* random tokens of 32 base64url characters */
        char s[33];
        for (int k = 0; k < 32; k++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            s[k] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[x >> 58];
        }
        s[32] = '\0';
        CHECK(cx_secrets_add_str(&set, s) == 0);
    }
    size_t n = body;
    char *s = malloc(n);
    if (!s) abort();
    static const char rec[] = "{\"name\":\"Var_%06zu\",\"value\":\"some value %zu\",\"masked\":false},";
    size_t at = 0;
    for (size_t i = 0; at + 100 < n; i++) at += (size_t)snprintf(s + at, n - at, rec, i, i * 7);
    cxone_buf b;
    cxone_buf_init(&b);
    double t0 = secs();
    for (int r = 0; r < 4; r++) {
        b.len = 0;
        cx_scrub(&set, s, at, &b);
    }
    double dt = (secs() - t0) / 4;
    CHECK(!b.oom && b.len == at && memcmp(b.p, s, at) == 0); /* our plain text: untouched */
    fprintf(stderr, "  speed: %.0f MB/s (%zu bytes, 40 secrets, %zu windows indexed)\n",
            at / dt / 1e6, at, set.win.count);
    cxone_buf_free(&b);
    free(s);
    cx_secrets_free(&set);
}

/* test_scrub [--bench MiB]: the speed figure on a body of that size (default 1 MiB). */
int main(int argc, char **argv)
{
    size_t body = 1u << 20;
    if (argc == 3 && strcmp(argv[1], "--bench") == 0) body = (size_t)atoi(argv[2]) << 20;
    test_raw_and_partial();
    test_short_and_tail();
    test_forms();
    test_base64();
    test_across_secrets();
    test_message_inplace();
    test_spans();
    test_wiped();
    test_linear(body);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
