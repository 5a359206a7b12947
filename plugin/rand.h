/* rand: random ids and seeds from OpenSSL's CSPRNG (no Lua, no libcurl): distinct across forked
 * processes, never a guessed fallback. */
#ifndef CXONE_RAND_H
#define CXONE_RAND_H

#include <stdint.h>

/* A random UUID version 4 (37 bytes with NUL); 0, or -1 if the generator failed. */
int cx_uuid4(char out[37]);
/* 64 random bits (a backoff-jitter seed); 0, or -1 if the generator failed. */
int cx_seed(uint64_t *out);

#endif
