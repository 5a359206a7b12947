/* The growable byte buffer every layer uses (no Lua, no libcurl: the bottom layer). */
#ifndef CXONE_BUF_H
#define CXONE_BUF_H

#include <stddef.h>

/* Growable byte buffer, independent of Lua so that libcurl callbacks, the call engine and code
 * holding resources can use it without risking a longjmp. On allocation failure `oom` is set,
 * later appends are ignored, and the caller reports it once. Its memory is wiped before it is
 * released (it may hold masked values). A zeroed struct is an empty buffer. */
typedef struct {
    char *p;
    size_t len, cap;
    int oom;
} cxone_buf;

void cxone_buf_init(cxone_buf *b);
/* Wipes and releases the memory; the buffer is empty (and usable) again. */
void cxone_buf_free(cxone_buf *b);
void cxone_buf_add(cxone_buf *b, const void *s, size_t n);
void cxone_buf_addstr(cxone_buf *b, const char *s);
void cxone_buf_addc(cxone_buf *b, char c);
void cxone_buf_addf(cxone_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Ensures a NUL after the content (not counted in len); returns 0, or -1 on oom. */
int cxone_buf_cstr(cxone_buf *b);

#endif
