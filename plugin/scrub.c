/* Scrubbing server text of secrets: the secret set, its derived forms and window index (scrub.h). */
#include <stdlib.h>
#include <string.h>
#include <openssl/crypto.h>

#include "scrub.h"

#define MARK_LEN (sizeof CX_SCRUB_MARK - 1)

/* ---- a hash set of 8-byte keys (open addressing, linear probing, load <= 1/2) ---- */

static uint64_t mix(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

static uint64_t key8(const char *p)
{
    uint64_t k;
    memcpy(&k, p, 8);
    return k;
}

static uint64_t key4(const char *p)
{
    uint32_t k;
    memcpy(&k, p, 4);
    return k;
}

#define FILTER_WORDS (1u << 10) /* 1 << 16 bits */

static void keyset_free(cx_keyset *s)
{
    if (s->slot) {
        OPENSSL_cleanse(s->slot, s->cap * sizeof *s->slot); /* the keys are pieces of secrets */
        free(s->slot);
    }
    if (s->bits) {
        OPENSSL_cleanse(s->bits, FILTER_WORDS * sizeof *s->bits);
        free(s->bits);
    }
    memset(s, 0, sizeof *s);
}

static int keyset_has(const cx_keyset *s, uint64_t k)
{
    if (k == 0) return s->zero;
    if (!s->count) return 0;
    uint64_t h = mix(k);
    if (!(s->bits[h >> 54] & (1ULL << ((h >> 48) & 63)))) return 0;
    size_t m = s->cap - 1;
    for (size_t i = (size_t)h & m;; i = (i + 1) & m) {
        if (s->slot[i] == k) return 1;
        if (s->slot[i] == 0) return 0;
    }
}

static void keyset_put(uint64_t *slot, size_t cap, uint64_t k)
{
    size_t m = cap - 1;
    size_t i = (size_t)mix(k) & m;
    while (slot[i] != 0 && slot[i] != k) i = (i + 1) & m;
    slot[i] = k;
}

static int keyset_add(cx_keyset *s, uint64_t k)
{
    if (k == 0) { s->zero = 1; return 0; }
    if (keyset_has(s, k)) return 0;
    if (!s->bits && !(s->bits = calloc(FILTER_WORDS, sizeof *s->bits))) return -1;
    if ((s->count + 1) * 2 > s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        if (cap > SIZE_MAX / sizeof(uint64_t) / 2) return -1;
        uint64_t *slot = calloc(cap, sizeof *slot);
        if (!slot) return -1;
        for (size_t i = 0; i < s->cap; i++)
            if (s->slot[i]) keyset_put(slot, cap, s->slot[i]);
        if (s->slot) {
            OPENSSL_cleanse(s->slot, s->cap * sizeof *s->slot);
            free(s->slot);
        }
        s->slot = slot;
        s->cap = cap;
    }
    uint64_t h = mix(k);
    s->bits[h >> 54] |= 1ULL << ((h >> 48) & 63);
    keyset_put(s->slot, s->cap, k);
    s->count++;
    return 0;
}

/* ---- the forms of a secret ---- */

static const char HEXU[] = "0123456789ABCDEF", HEXL[] = "0123456789abcdef";

/* JSON string contents (no quotes) as our encoder (json.c) writes them; with ascii, every
 * non-ASCII character of valid UTF-8 as \uXXXX (surrogate pairs above U+FFFF), in the case of
 * hex. Invalid UTF-8 is written as is. */
static void form_json(cxone_buf *b, const unsigned char *s, size_t n, int ascii, const char *hex)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) {
            if (c >= 0x20 && c != '"' && c != '\\' && c != 0x7f) cxone_buf_addc(b, (char)c);
            else if (c == '"') cxone_buf_add(b, "\\\"", 2);
            else if (c == '\\') cxone_buf_add(b, "\\\\", 2);
            else if (c == '\n') cxone_buf_add(b, "\\n", 2);
            else if (c == '\r') cxone_buf_add(b, "\\r", 2);
            else if (c == '\t') cxone_buf_add(b, "\\t", 2);
            else {
                char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
                cxone_buf_add(b, e, 6);
            }
            i++;
            continue;
        }
        unsigned k = 0, cp = 0;
        if (c >= 0xC2 && c <= 0xDF) { k = 1; cp = c & 0x1F; }
        else if (c >= 0xE0 && c <= 0xEF) { k = 2; cp = c & 0x0F; }
        else if (c >= 0xF0 && c <= 0xF4) { k = 3; cp = c & 0x07; }
        int ok = ascii && k && n - i > k;
        for (unsigned j = 1; ok && j <= k; j++) {
            if ((s[i + j] & 0xC0) != 0x80) ok = 0;
            else cp = (cp << 6) | (s[i + j] & 0x3F);
        }
        if (ok && ((k == 2 && cp < 0x800) || (k == 3 && (cp < 0x10000 || cp > 0x10FFFF))
                   || (cp >= 0xD800 && cp <= 0xDFFF)))
            ok = 0;
        if (!ok) { cxone_buf_addc(b, (char)c); i++; continue; }
        unsigned u[2] = {cp, 0}, nu = 1;
        if (cp >= 0x10000) {
            u[0] = 0xD800 + ((cp - 0x10000) >> 10);
            u[1] = 0xDC00 + ((cp - 0x10000) & 0x3FF);
            nu = 2;
        }
        for (unsigned j = 0; j < nu; j++) {
            char e[6] = {'\\', 'u', hex[(u[j] >> 12) & 15], hex[(u[j] >> 8) & 15],
                         hex[(u[j] >> 4) & 15], hex[u[j] & 15]};
            cxone_buf_add(b, e, 6);
        }
        i += k + 1;
    }
}

/* Percent-encoding of every byte outside the unreserved set; plus: a space as '+'. */
static void form_url(cxone_buf *b, const unsigned char *s, size_t n, const char *hex, int plus)
{
    for (size_t i = 0; i < n; i++) {
        unsigned c = s[i];
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'
            || c == '.' || c == '_' || c == '~')
            cxone_buf_addc(b, (char)c);
        else if (plus && c == ' ')
            cxone_buf_addc(b, '+');
        else {
            char e[3] = {'%', hex[c >> 4], hex[c & 15]};
            cxone_buf_add(b, e, 3);
        }
    }
}

/* The base64 characters that s[0..n) alone determines when it starts `align` bytes after a
 * 3-byte boundary of the encoded text: character j covers bits [6j, 6j+6) of the stream and
 * the secret bits [8*align, 8*(align+n)). */
static void form_b64(cxone_buf *b, const unsigned char *s, size_t n, size_t align, int url)
{
    const char *al = url ? "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
                         : "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t lo = 8 * align, hi = 8 * (align + n);
    for (size_t j = (lo + 5) / 6; 6 * j + 6 <= hi; j++) {
        unsigned v = 0;
        for (size_t bit = 6 * j; bit < 6 * j + 6; bit++) {
            size_t byte = bit / 8 - align;
            v = (v << 1) | ((s[byte] >> (7 - bit % 8)) & 1);
        }
        cxone_buf_addc(b, al[v]);
    }
}

static int set_fail(cx_secrets *set)
{
    set->oom = 1;
    return -1;
}

/* Registers the form text[off..end) (the last thing appended to set->text), unless it is
 * too short or repeats an earlier form of the same secret (from first_form on). */
static int add_form(cx_secrets *set, size_t off, size_t first_form, int is_b64)
{
    if (set->text.oom) return set_fail(set);
    size_t n = set->text.len - off;
    const char *p = set->text.p + off;
    int drop = n < CX_SCRUB_MIN || (is_b64 && n < CX_SCRUB_WINDOW);
    for (size_t i = first_form; !drop && i < set->nform; i++)
        if (set->form[i].n == n && memcmp(set->text.p + set->form[i].off, p, n) == 0) drop = 1;
    if (drop) {
        OPENSSL_cleanse(set->text.p + off, n);
        set->text.len = off;
        return 0;
    }
    if (set->nform == set->capform) {
        size_t cap = set->capform ? set->capform * 2 : 16;
        struct cx_form *f = realloc(set->form, cap * sizeof *f); /* offsets only: no secret */
        if (!f) return set_fail(set);
        set->form = f;
        set->capform = cap;
    }
    set->form[set->nform++] = (struct cx_form){off, n};
    if (n > set->maxlen) set->maxlen = n;
    if (n < CX_SCRUB_WINDOW) return keyset_add(&set->shortk, key4(p)) ? set_fail(set) : 0;
    if (keyset_add(&set->head, key8(p))) return set_fail(set);
    for (size_t i = 0; i + CX_SCRUB_WINDOW <= n; i++)
        if (keyset_add(&set->win, key8(p + i))) return set_fail(set);
    for (size_t i = 0; i + 4 <= n; i++)
        if (keyset_add(&set->gram, key4(p + i))) return set_fail(set);
    return 0;
}

void cx_secrets_init(cx_secrets *set)
{
    memset(set, 0, sizeof *set);
    cxone_buf_init(&set->text);
}

int cx_secrets_add(cx_secrets *set, const char *p, size_t n)
{
    if (set->oom) return -1;
    if (n < CX_SCRUB_MIN) return 0;
    const unsigned char *s = (const unsigned char *)p;
    size_t first = set->nform;
    /* kinds: raw, JSON x3, URL x3, base64 x6 */
    for (int kind = 0; kind < 13; kind++) {
        size_t off = set->text.len;
        switch (kind) {
        case 0: cxone_buf_add(&set->text, p, n); break;
        case 1: form_json(&set->text, s, n, 0, HEXL); break;
        case 2: form_json(&set->text, s, n, 1, HEXL); break;
        case 3: form_json(&set->text, s, n, 1, HEXU); break;
        case 4: form_url(&set->text, s, n, HEXU, 0); break;
        case 5: form_url(&set->text, s, n, HEXL, 0); break;
        case 6: form_url(&set->text, s, n, HEXU, 1); break;
        default: form_b64(&set->text, s, n, (size_t)(kind - 7) % 3, kind >= 10); break;
        }
        if (add_form(set, off, first, kind >= 7)) return -1;
    }
    set->nsecrets++;
    return 0;
}

int cx_secrets_add_str(cx_secrets *set, const char *s)
{
    return s ? cx_secrets_add(set, s, strlen(s)) : 0;
}

size_t cx_secrets_count(const cx_secrets *set) { return set->nsecrets; }

void cx_secrets_free(cx_secrets *set)
{
    cxone_buf_free(&set->text); /* wiped */
    if (set->form) OPENSSL_cleanse(set->form, set->capform * sizeof *set->form); /* offsets only */
    free(set->form);
    keyset_free(&set->win);
    keyset_free(&set->gram);
    keyset_free(&set->head);
    keyset_free(&set->shortk);
    cx_secrets_init(set);
}

/* ---- scrubbing ---- */

static const char *form_p(const cx_secrets *set, size_t i) { return set->text.p + set->form[i].off; }

/* The length of the longest whole form of under 8 bytes at s[0..n) (0 if none). */
static size_t short_hit(const cx_secrets *set, const char *s, size_t n)
{
    size_t best = 0;
    if (n < CX_SCRUB_MIN || !keyset_has(&set->shortk, key4(s))) return 0;
    for (size_t i = 0; i < set->nform; i++) {
        size_t fn = set->form[i].n;
        if (fn < CX_SCRUB_WINDOW && fn <= n && fn > best && memcmp(s, form_p(set, i), fn) == 0)
            best = fn;
    }
    return best;
}

/* Whether s[0..k) is a proper start of a form (k >= CX_SCRUB_TAIL_MIN). */
static int is_start(const cx_secrets *set, const char *s, size_t k)
{
    if (k >= CX_SCRUB_WINDOW && !keyset_has(&set->head, key8(s))) return 0;
    for (size_t i = 0; i < set->nform; i++)
        if (set->form[i].n > k && memcmp(s, form_p(set, i), k) == 0) return 1;
    return 0;
}

/* The length of the longest proper start of a form, of kmin..kmax bytes, that ends s[0..n). */
static size_t tail_start(const cx_secrets *set, const char *s, size_t n, size_t kmin, size_t kmax)
{
    if (kmax > n) kmax = n;
    if (set->maxlen && kmax > set->maxlen - 1) kmax = set->maxlen - 1;
    for (size_t k = kmax; k >= kmin && k > 0; k--)
        if (is_start(set, s + n - k, k)) return k;
    return 0;
}

/* Whether s[q..q+4) is a 4-gram of a form. */
static int gram_at(const cx_secrets *set, const char *s, size_t n, size_t q)
{
    return q + 4 <= n && keyset_has(&set->gram, key4(s + q));
}

long cx_scrub(const cx_secrets *set, const char *s, size_t n, cxone_buf *out)
{
    if (!set || set->nform == 0) {
        cxone_buf_add(out, s, n);
        return out->oom ? -1 : 0;
    }
    if (set->oom) {
        cxone_buf_add(out, CX_SCRUB_MARK, MARK_LEN);
        return -1;
    }
    long marks = 0;
    size_t run = 0;          /* s[run..) is not written yet */
    size_t hs = 0, he = 0;   /* the hit being extended: s[hs..he), none when he == 0 */
    int shorts = set->shortk.count || set->shortk.zero;
    /* A window s[i..i+8) of a form holds the 4-gram at each multiple of 4 q in [i, i+4]: the
     * window is looked up only when one of those is a 4-gram of a form. gc = G(cq) and
     * gn = G(cq + 4), cq = i rounded up to a multiple of 4, each G computed once. */
    size_t cq = 0;
    int gc = gram_at(set, s, n, 0), gn = gram_at(set, s, n, 4);
    for (size_t i = 0; i < n; i++) {
        size_t end = 0;
        size_t c = (i + 3) & ~(size_t)3;
        if (c != cq) { /* c == cq + 4 */
            cq = c;
            gc = gn;
            gn = gram_at(set, s, n, c + 4);
        }
        int cand = gc || ((i & 3) == 0 && gn);
        if (cand && n - i >= CX_SCRUB_WINDOW && keyset_has(&set->win, key8(s + i)))
            end = i + CX_SCRUB_WINDOW;
        if (shorts) {
            size_t k = short_hit(set, s + i, n - i);
            if (k && i + k > end) end = i + k;
        }
        if (!end) continue;
        if (he && i <= he) { /* overlaps or touches the current hit */
            if (end > he) he = end;
            continue;
        }
        if (he) {
            cxone_buf_add(out, s + run, hs - run);
            cxone_buf_add(out, CX_SCRUB_MARK, MARK_LEN);
            marks++;
            run = he;
        }
        hs = i;
        he = end;
    }
    /* a start cut off by the end of the text (8+ bytes of one are runs, found above) */
    size_t k = tail_start(set, s, n, CX_SCRUB_TAIL_MIN, CX_SCRUB_WINDOW - 1);
    if (k) {
        if (he && n - k <= he) he = n;
        else {
            if (he) {
                cxone_buf_add(out, s + run, hs - run);
                cxone_buf_add(out, CX_SCRUB_MARK, MARK_LEN);
                marks++;
                run = he;
            }
            hs = n - k;
            he = n;
        }
    }
    if (he) {
        cxone_buf_add(out, s + run, hs - run);
        cxone_buf_add(out, CX_SCRUB_MARK, MARK_LEN);
        marks++;
        run = he;
    }
    cxone_buf_add(out, s + run, n - run);
    return out->oom ? -1 : marks;
}

int cx_scrub_cut(const cx_secrets *set, const char *s, size_t *n)
{
    if (!set || set->nform == 0 || set->oom) return 0;
    int cut = 0;
    for (;;) { /* until no start ends it: what a cut uncovers may be one too */
        size_t k = tail_start(set, s, *n, CX_SCRUB_TAIL_MIN, set->maxlen);
        if (!k) return cut;
        *n -= k;
        cut = 1;
    }
}

/* Copies the scrubbed text b into out[0..cap), cut with cx_scrub_cut. */
static size_t copy_cut(const cx_secrets *set, const cxone_buf *b, char *out, size_t cap)
{
    size_t m = b->len;
    if (m > cap - 1) {
        m = cap - 1;
        cx_scrub_cut(set, b->p, &m);
    }
    if (m) memcpy(out, b->p, m);
    out[m] = '\0';
    return m;
}

static size_t fail_closed(char *out, size_t cap)
{
    size_t m = MARK_LEN < cap - 1 ? MARK_LEN : cap - 1;
    memcpy(out, CX_SCRUB_MARK, m);
    out[m] = '\0';
    return m;
}

size_t cx_scrub_message(const cx_secrets *set, const char *s, size_t n, char *out, size_t cap)
{
    if (cap == 0) return 0;
    cxone_buf a, b;
    cxone_buf_init(&a);
    cxone_buf_init(&b);
    size_t m;
    if (cx_scrub(set, s, n, &a) < 0) {
        m = fail_closed(out, cap);
    } else {
        for (size_t i = 0; i < a.len; i++) {
            unsigned char ch = (unsigned char)a.p[i];
            if (ch < 0x20 || ch >= 0x7f) a.p[i] = '?';
        }
        if (cx_scrub(set, a.p, a.len, &b) < 0) m = fail_closed(out, cap);
        else m = copy_cut(set, &b, out, cap);
    }
    cxone_buf_free(&a); /* wiped */
    cxone_buf_free(&b);
    return m;
}

int cx_scrub_inplace(const cx_secrets *set, char *s, size_t cap)
{
    if (cap == 0) return 0;
    size_t n = strnlen(s, cap);
    if (n == cap) n = cap - 1; /* not terminated: the buffer's end is the text's */
    cxone_buf b;
    cxone_buf_init(&b);
    int rc = 0;
    if (cx_scrub(set, s, n, &b) < 0) {
        fail_closed(s, cap);
        rc = -1;
    } else {
        copy_cut(set, &b, s, cap);
    }
    cxone_buf_free(&b);
    return rc;
}

/* ---- the span interface ---- */

static int set_of(cx_secrets *set, const cxone_span *secrets, size_t ns)
{
    cx_secrets_init(set);
    for (size_t i = 0; i < ns; i++)
        if (secrets[i].p && cx_secrets_add(set, secrets[i].p, secrets[i].n) != 0) return -1;
    return 0;
}

void cxone_scrub_into(cxone_buf *out, const char *s, size_t n, const cxone_span *secrets, size_t ns)
{
    cx_secrets set;
    set_of(&set, secrets, ns); /* on failure the set is marked and cx_scrub fails closed */
    cx_scrub(&set, s, n, out);
    cx_secrets_free(&set);
}

int cxone_scrub_cut(const char *s, size_t *n, const cxone_span *secrets, size_t ns)
{
    cx_secrets set;
    int cut;
    if (set_of(&set, secrets, ns) != 0) {
        cut = *n > 0;
        *n = 0;
    } else {
        cut = cx_scrub_cut(&set, s, n);
    }
    cx_secrets_free(&set);
    return cut;
}

void cxone_scrub_message(const char *s, size_t n, const cxone_span *secrets, size_t ns, char *out,
                         size_t cap)
{
    cx_secrets set;
    set_of(&set, secrets, ns);
    cx_scrub_message(&set, s, n, out, cap);
    cx_secrets_free(&set);
}
