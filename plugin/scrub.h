/* Scrubbing text that comes from a server of every piece of our secrets (no Lua, no I/O). */
#ifndef CXONE_SCRUB_H
#define CXONE_SCRUB_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"

/* The rule. A server may echo what we sent it (a masked value, the client secret, the token),
 * whole or in part, raw or encoded. In text from a server:
 * - any run of at least CX_SCRUB_WINDOW (8) bytes of a secret *form* is scrubbed;
 * - a form shorter than that, but of at least CX_SCRUB_MIN (4) bytes, is scrubbed whole
 *   (secrets under 4 bytes are ignored: scrubbing every "ab" would destroy the text and hide
 *   nothing worth hiding);
 * - a text that ends with the start of a form (at least CX_SCRUB_TAIL_MIN = 4 bytes of it) is
 *   scrubbed there too: the text was cut inside the secret (a start of 8 bytes or more is
 *   already a run of the first rule).
 * The forms of a secret: as is; JSON-escaped as our encoder writes it and with every non-ASCII
 * character as \uXXXX (lower- and upper-case hex); URL-encoded (every byte outside A-Z a-z 0-9
 * - . _ ~ as %XX, upper- and lower-case hex; and form-style with '+' for a space); base64,
 * standard and URL-safe, at each of the three byte alignments the secret can have inside a
 * longer encoded text (only the characters the secret's bytes determine: a base64 form is kept
 * only when that is at least 8 characters, so base64 catches secrets of 6 bytes or more).
 * Each run of scrubbed bytes (overlapping or adjacent hits merged) becomes one CX_SCRUB_MARK.
 * Our own plain text is never given to these functions (the caller scrubs server text only).
 * Everything works on bytes: any encoding, NULs included. */
#define CX_SCRUB_MARK "[redacted]"
#define CX_SCRUB_WINDOW 8
#define CX_SCRUB_MIN 4
#define CX_SCRUB_TAIL_MIN 4

/* Hash set of 8-byte keys with a 64 Kibit filter in front of it (private to scrub.c). */
typedef struct {
    uint64_t *slot; /* 0 = empty; the key 0 itself is `zero` */
    uint64_t *bits; /* 1 << 16 bits: one per hash value's top 16 bits present */
    size_t cap, count;
    int zero;
} cx_keyset;

/* The secrets of one call, with their derived forms and an index of all their 8-byte windows,
 * so that scrubbing a text costs O(text length) whatever the number of secrets. Build it once
 * per call (or once per client for the client secret and token) and scrub many texts with it.
 * The set copies what it is given and owns the copies; cx_secrets_free wipes every byte that
 * held a secret or a piece of one (forms and index alike) before releasing it. Fields are
 * private. A zeroed struct is an empty set (cx_secrets_init makes one). */
typedef struct {
    cxone_buf text;    /* every form, back to back */
    struct cx_form { size_t off, n; } *form;
    size_t nform, capform;
    size_t nsecrets;   /* secrets added (of at least CX_SCRUB_MIN bytes) */
    cx_keyset win;     /* every CX_SCRUB_WINDOW-byte window of every form of >= 8 bytes */
    cx_keyset gram;    /* every 4-byte piece of those forms: a text position is looked up in
                          `win` only when a 4-gram at a nearby multiple of 4 is in here */
    cx_keyset head;    /* the first 8 bytes of each of those forms (starts at a cut) */
    cx_keyset shortk;  /* the first 4 bytes of each form of 4..7 bytes */
    size_t maxlen;     /* the longest form */
    int oom;           /* memory ran out while adding: the set fails closed (see cx_scrub) */
} cx_secrets;

void cx_secrets_init(cx_secrets *set);
/* Adds the secret p[0..n) (copied) and its forms. Returns 0, or -1 when memory ran out: the
 * set is then marked failed and every cx_scrub with it hides the whole text. A secret under
 * CX_SCRUB_MIN bytes is ignored (returns 0). */
int cx_secrets_add(cx_secrets *set, const char *p, size_t n);
/* Same for a NUL-terminated secret; NULL is ignored. */
int cx_secrets_add_str(cx_secrets *set, const char *s);
/* The number of secrets added (ignored ones not counted). */
size_t cx_secrets_count(const cx_secrets *set);
/* Wipes and releases everything; the set is empty (and usable) again. */
void cx_secrets_free(cx_secrets *set);

/* Appends s[0..n) to out with the rule above applied. Returns the number of markers written,
 * or -1 when the set had run out of memory (then out gets one CX_SCRUB_MARK in place of the
 * whole text: fail closed) or out did (out->oom set: the caller reports it; out must then not
 * be shown). set may be NULL (no secrets: s is copied as is). */
long cx_scrub(const cx_secrets *set, const char *s, size_t n, cxone_buf *out);
/* For text about to be cut at *n: shortens *n, repeatedly, while s[0..*n) ends with a proper
 * start (of at least CX_SCRUB_TAIL_MIN bytes) of a form, so that the cut leaves no piece of a
 * secret's start. Returns 1 if it shortened, else 0. No allocation. */
int cx_scrub_cut(const cx_secrets *set, const char *s, size_t *n);
/* A server's text made fit for a message into out[0..cap) (cap >= 1), always NUL-terminated:
 * scrubbed whole first, then made printable ASCII (other bytes as '?') and scrubbed again (a
 * '?' may complete a form containing one), then cut to cap-1 bytes with cx_scrub_cut. On
 * memory failure out is CX_SCRUB_MARK (cut to cap-1). Returns the length of out. */
size_t cx_scrub_message(const cx_secrets *set, const char *s, size_t n, char *out, size_t cap);
/* In place on the NUL-terminated text in s[0..cap) (cap >= 1): the text is scrubbed, then cut
 * to cap-1 bytes with cx_scrub_cut. Returns 0, or -1 when memory ran out (s is then
 * CX_SCRUB_MARK cut to cap-1: fail closed). */
int cx_scrub_inplace(const cx_secrets *set, char *s, size_t cap);

/* ---- the older span interface, kept for its callers: each call builds a cx_secrets from the
 * spans (so the same rule and forms apply) and frees it. ---- */
typedef struct {
    const char *p;
    size_t n;
} cxone_span;
#define CXONE_SCRUB_PREFIX_MIN CX_SCRUB_WINDOW /* no run this long of a secret survives */
/* cx_scrub with the spans as secrets (memory failure: out->oom or a lone marker). */
void cxone_scrub_into(cxone_buf *out, const char *s, size_t n, const cxone_span *secrets, size_t ns);
/* cx_scrub_cut with the spans as secrets; on memory failure *n becomes 0 and it returns 1. */
int cxone_scrub_cut(const char *s, size_t *n, const cxone_span *secrets, size_t ns);
/* cx_scrub_message with the spans as secrets. */
void cxone_scrub_message(const char *s, size_t n, const cxone_span *secrets, size_t ns, char *out,
                         size_t cap);

#endif
