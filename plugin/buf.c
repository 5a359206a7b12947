/* The growable byte buffer (declared in buf.h): no Lua here, so every layer can use it. */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/crypto.h>

#include "buf.h"

void cxone_buf_init(cxone_buf *b)
{
    b->p = NULL;
    b->len = b->cap = 0;
    b->oom = 0;
}

/* Buffers may hold masked values (request bodies, decoded answers): their memory is wiped
 * before it is freed, and growing copies into a new block and wipes the old one (realloc
 * would leave the old content in freed memory). */
void cxone_buf_free(cxone_buf *b)
{
    if (b->p) {
        OPENSSL_cleanse(b->p, b->cap);
        free(b->p);
    }
    cxone_buf_init(b);
}

static int buf_reserve(cxone_buf *b, size_t extra)
{
    if (b->oom) return -1;
    if (extra > SIZE_MAX - b->len - 1) { b->oom = 1; return -1; }
    size_t need = b->len + extra + 1;
    if (need <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need) cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    char *p = malloc(cap);
    if (!p) { b->oom = 1; return -1; }
    if (b->p) {
        memcpy(p, b->p, b->len);
        OPENSSL_cleanse(b->p, b->cap);
        free(b->p);
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

void cxone_buf_add(cxone_buf *b, const void *s, size_t n)
{
    if (n == 0 || buf_reserve(b, n) != 0) return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

void cxone_buf_addstr(cxone_buf *b, const char *s) { cxone_buf_add(b, s, strlen(s)); }

void cxone_buf_addc(cxone_buf *b, char c)
{
    if (buf_reserve(b, 1) != 0) return;
    b->p[b->len++] = c;
}

void cxone_buf_addf(cxone_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) { b->oom = 1; return; }
    if (buf_reserve(b, (size_t)n) != 0) return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

int cxone_buf_cstr(cxone_buf *b)
{
    if (buf_reserve(b, 0) != 0) return -1;
    b->p[b->len] = '\0';
    return 0;
}
