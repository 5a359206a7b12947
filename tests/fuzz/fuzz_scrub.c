/* libFuzzer harness: plugin/scrub.c (cx_scrub, cx_scrub_message, cx_scrub_cut, cx_scrub_inplace)
 * against forms of the secrets computed here independently (JSON through json.c's encoder and
 * our own \uXXXX writer, URL-encoding, base64 written here). Input: byte 0: low 2 bits + 1 the
 * number of secrets, bit 2 puts the odd ones in a parent set the set is chained to; per secret
 * a length byte (% 48) and its bytes; then the text: a byte under 0xF0 is itself, 0xFF escapes
 * the next byte, and 0xF0..0xFE splices a piece of a secret's form (next bytes: secret, form,
 * start, length). Invariants: outside "[redacted]" markers no output holds 8 bytes of a form
 * of 8+ bytes, nor a whole form of 4..7 bytes; no output ends (outside a marker) with a 4+
 * byte proper start of a form (secrets under 4 bytes are ignored); messages are printable and
 * NUL-terminated within cap; a cut only shortens. */
#include <ctype.h>
#include <stdint.h>

#include "fuzz.h"
#include "scrub.h"

#define MAXS 4
#define NFORMS 13

typedef struct {
    cxone_buf f[NFORMS];
} forms_t;

static void url(cxone_buf *b, const unsigned char *s, size_t n, const char *hex, int plus)
{
    for (size_t i = 0; i < n; i++) {
        if (isalnum(s[i]) || (s[i] && strchr("-._~", s[i]))) cxone_buf_addc(b, (char)s[i]);
        else if (plus && s[i] == ' ') cxone_buf_addc(b, '+');
        else cxone_buf_addf(b, "%%%c%c", hex[s[i] >> 4], hex[s[i] & 15]);
    }
}

/* JSON with non-ASCII as \uXXXX: decode UTF-8 (valid sequences only) from our quote's text. */
static void json_ascii(cxone_buf *b, const unsigned char *s, size_t n, int upper)
{
    cxone_buf q;
    cxone_buf_init(&q);
    cxone_json_quote(&q, (const char *)s, n);
    FUZZ_CHECK(!q.oom, "oom");
    const char *fmt = upper ? "\\u%04X" : "\\u%04x";
    const unsigned char *p = (const unsigned char *)q.p + 1, *e = (const unsigned char *)q.p + q.len - 1;
    while (p < e) {
        if (*p < 0x80) {
            if (upper && e - p >= 6 && p[0] == '\\' && p[1] == 'u') { /* our encoder's \u00XX */
                cxone_buf_add(b, p, 4);
                cxone_buf_addc(b, (char)toupper(p[4]));
                cxone_buf_addc(b, (char)toupper(p[5]));
                p += 6;
                continue;
            }
            if (p[0] == '\\' && p + 1 < e) { cxone_buf_add(b, p, 2); p += 2; continue; }
            cxone_buf_addc(b, (char)*p++);
            continue;
        }
        size_t k = *p >= 0xF0 ? 3 : *p >= 0xE0 ? 2 : *p >= 0xC0 ? 1 : 0;
        if (k && (size_t)(e - p) > k && cxone_utf8_valid(p, k + 1)) {
            unsigned cp = *p & (0x3F >> k);
            for (size_t i = 1; i <= k; i++) cp = cp << 6 | (p[i] & 0x3F);
            if (cp >= 0x10000) {
                cxone_buf_addf(b, fmt, 0xD800 + ((cp - 0x10000) >> 10));
                cxone_buf_addf(b, fmt, 0xDC00 + ((cp - 0x10000) & 0x3FF));
            } else {
                cxone_buf_addf(b, fmt, cp);
            }
            p += k + 1;
        } else {
            cxone_buf_addc(b, (char)*p++);
        }
    }
    cxone_buf_free(&q);
}

/* the base64 characters of s that do not depend on `align` bytes before it nor on what follows */
static void b64_inner(cxone_buf *b, const unsigned char *s, size_t n, size_t align, int urlsafe)
{
    static const char std[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    static const char us[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    unsigned char buf[64];
    memset(buf, 0xA5, align);
    memcpy(buf + align, s, n);
    size_t tot = align + n;
    char enc[128];
    size_t j = 0;
    for (size_t i = 0; i < tot; i += 3) {
        unsigned v = (unsigned)buf[i] << 16 | (i + 1 < tot ? (unsigned)buf[i + 1] << 8 : 0)
                   | (i + 2 < tot ? buf[i + 2] : 0);
        for (int c = 0; c < 4; c++) enc[j++] = (urlsafe ? us : std)[v >> (18 - 6 * c) & 63];
    }
    size_t first = (8 * align + 5) / 6, last = 8 * tot / 6;
    if (last > first) cxone_buf_add(b, enc + first, last - first);
}

static void make_forms(forms_t *F, const unsigned char *s, size_t n)
{
    for (int i = 0; i < NFORMS; i++) cxone_buf_init(&F->f[i]);
    if (n < CX_SCRUB_MIN) return; /* ignored, forms and all */
    cxone_buf_add(&F->f[0], s, n);
    cxone_buf q;
    cxone_buf_init(&q);
    cxone_json_quote(&q, (const char *)s, n);
    cxone_buf_add(&F->f[1], q.p + 1, q.len - 2);
    cxone_buf_free(&q);
    json_ascii(&F->f[2], s, n, 0);
    json_ascii(&F->f[3], s, n, 1);
    url(&F->f[4], s, n, "0123456789ABCDEF", 0);
    url(&F->f[5], s, n, "0123456789abcdef", 0);
    url(&F->f[6], s, n, "0123456789ABCDEF", 1);
    for (int k = 0; k < 6; k++) b64_inner(&F->f[7 + k], s, n, (size_t)k % 3, k >= 3);
    for (int i = 0; i < NFORMS; i++) FUZZ_CHECK(!F->f[i].oom, "oom");
}

static void free_forms(forms_t *F)
{
    for (int i = 0; i < NFORMS; i++) cxone_buf_free(&F->f[i]);
}

/* marks the bytes of o that belong to a "[redacted]", or to the start of one that a cut ended */
static unsigned char *marks_of(const char *o, size_t on)
{
    unsigned char *m = calloc(on + 1, 1);
    FUZZ_CHECK(m != NULL, "oom");
    const size_t ml = sizeof CX_SCRUB_MARK - 1;
    for (size_t i = 0; i + ml <= on; i++)
        if (memcmp(o + i, CX_SCRUB_MARK, ml) == 0) memset(m + i, 1, ml);
    for (size_t k = ml - 1; k >= 1; k--)
        if (k <= on && memcmp(o + on - k, CX_SCRUB_MARK, k) == 0) { memset(m + on - k, 1, k); break; }
    return m;
}

static int clean_run(const unsigned char *m, size_t i, size_t k)
{
    for (size_t j = 0; j < k; j++)
        if (m[i + j]) return 0;
    return 1;
}

static int cmp64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* every 8-byte window of every form of 8+ bytes, sorted */
static uint64_t *windows_of(forms_t *F, size_t ns, size_t *nw)
{
    size_t cnt = 0;
    for (size_t s = 0; s < ns; s++)
        for (int f = 0; f < NFORMS; f++)
            if (F[s].f[f].len >= 8) cnt += F[s].f[f].len - 7;
    uint64_t *w = malloc((cnt + 1) * sizeof *w);
    FUZZ_CHECK(w != NULL, "oom");
    size_t k = 0;
    for (size_t s = 0; s < ns; s++)
        for (int f = 0; f < NFORMS; f++)
            for (size_t j = 0; j + 8 <= F[s].f[f].len; j++) memcpy(&w[k++], F[s].f[f].p + j, 8);
    qsort(w, cnt, sizeof *w, cmp64);
    *nw = cnt;
    return w;
}

static void check_out(const char *what, const char *o, size_t on, forms_t *F, size_t ns,
                      const uint64_t *win, size_t nw)
{
    unsigned char *m = marks_of(o, on);
    for (size_t i = 0; i + 8 <= on; i++) {
        if (!clean_run(m, i, 8)) continue;
        uint64_t k;
        memcpy(&k, o + i, 8);
        FUZZ_CHECK(!bsearch(&k, win, nw, sizeof k, cmp64), "%s: 8 bytes of a secret's form at %zu (of %zu)",
                   what, i, on);
    }
    for (size_t s = 0; s < ns; s++)
        for (int f = 0; f < NFORMS; f++) {
            const char *fp = F[s].f[f].p;
            size_t fn = F[s].f[f].len;
            if (fn < CX_SCRUB_MIN || (f >= 7 && fn < CX_SCRUB_WINDOW)) continue;
            if (fn < CX_SCRUB_WINDOW) /* short forms: never whole */
                for (size_t i = 0; i + fn <= on; i++)
                    FUZZ_CHECK(!clean_run(m, i, fn) || memcmp(o + i, fp, fn) != 0,
                               "%s: form %d of secret %zu whole at %zu", what, f, s, i);
            /* the end: no proper start of 4+ bytes (outside a marker) */
            for (size_t k = CX_SCRUB_TAIL_MIN; k < fn && k <= on; k++)
                if (clean_run(m, on - k, k))
                    FUZZ_CHECK(memcmp(o + on - k, fp, k) != 0,
                               "%s: ends with %zu bytes of the start of form %d of secret %zu", what, k, f, s);
        }
    free(m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    size_t at = 0, ns = 1 + (data[at++] & 3);
    const unsigned char *sec[MAXS];
    size_t sl[MAXS];
    size_t have = 0;
    for (size_t i = 0; i < ns && at < size; i++) {
        size_t l = data[at++] % 48;
        if (l > size - at) l = size - at;
        sec[have] = data + at;
        sl[have++] = l;
        at += l;
    }
    ns = have;
    forms_t F[MAXS];
    cx_secrets set, parent; /* odd secrets go to a parent the set is chained to (when bit 2) */
    cx_secrets_init(&set);
    cx_secrets_init(&parent);
    int chained = data[0] & 4;
    if (chained) cx_secrets_chain(&set, &parent);
    for (size_t i = 0; i < ns; i++) {
        make_forms(&F[i], sec[i], sl[i]);
        cx_secrets *to = chained && (i & 1) ? &parent : &set;
        FUZZ_CHECK(cx_secrets_add(to, (const char *)sec[i], sl[i]) == 0, "add failed");
    }
    /* the text */
    cxone_buf text;
    cxone_buf_init(&text);
    while (at < size && text.len < 4096) {
        uint8_t op = data[at++];
        if (op < 0xF0) { cxone_buf_addc(&text, (char)op); continue; }
        if (op == 0xFF) { if (at < size) cxone_buf_addc(&text, (char)data[at++]); continue; }
        if (size - at < 4 || ns == 0) break;
        const cxone_buf *f = &F[data[at] % ns].f[data[at + 1] % NFORMS];
        size_t st = f->len ? data[at + 2] % f->len : 0, ln = data[at + 3];
        at += 4;
        if (ln > f->len - st) ln = f->len - st;
        if (f->len) cxone_buf_add(&text, f->p + st, ln);
    }
    FUZZ_CHECK(!text.oom, "oom");
    const char *t = text.p ? text.p : "";
    size_t nw;
    uint64_t *win = windows_of(F, ns, &nw);

    cxone_buf out;
    cxone_buf_init(&out);
    long marks = cx_scrub(&set, t, text.len, &out);
    FUZZ_CHECK(marks >= 0 && !out.oom, "cx_scrub failed");
    check_out("cx_scrub", out.p ? out.p : "", out.len, F, ns, win, nw);
    if (marks == 0)
        FUZZ_CHECK(out.len == text.len && (text.len == 0 || memcmp(out.p, t, text.len) == 0),
                   "cx_scrub changed a text it found nothing in");

    char msg[96];
    size_t cap = 1 + (text.len % sizeof msg);
    size_t ml = cx_scrub_message(&set, t, text.len, msg, cap);
    FUZZ_CHECK(ml < cap && msg[ml] == '\0' && strlen(msg) == ml, "message length");
    for (size_t i = 0; i < ml; i++) FUZZ_CHECK(msg[i] >= 0x20 && msg[i] < 0x7f, "message not printable");
    check_out("cx_scrub_message", msg, ml, F, ns, win, nw);

    size_t n = text.len;
    int cut = cx_scrub_cut(&set, t, &n);
    FUZZ_CHECK(n <= text.len && cut == (n != text.len), "cx_scrub_cut grew or misreported");

    char inplace[64];
    size_t il = text.len < sizeof inplace ? text.len : sizeof inplace - 1;
    memcpy(inplace, t, il);
    inplace[il] = '\0';
    FUZZ_CHECK(cx_scrub_inplace(&set, inplace, sizeof inplace) == 0, "in place failed");
    check_out("cx_scrub_inplace", inplace, strlen(inplace), F, ns, win, nw);

    free(win);
    cxone_buf_free(&out);
    cxone_buf_free(&text);
    cx_secrets_free(&set);
    cx_secrets_free(&parent);
    for (size_t i = 0; i < ns; i++) free_forms(&F[i]);
    return 0;
}
