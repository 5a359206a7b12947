/* rand: random ids and seeds from OpenSSL's CSPRNG (rand.h). */
#include <openssl/rand.h>

#include "rand.h"

int cx_uuid4(char out[37])
{
    unsigned char b[16];
    static const char hex[] = "0123456789abcdef";
    if (RAND_bytes(b, sizeof b) != 1) return -1;
    b[6] = (unsigned char)((b[6] & 0x0F) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3F) | 0x80);
    char *o = out;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) *o++ = '-';
        *o++ = hex[b[i] >> 4];
        *o++ = hex[b[i] & 15];
    }
    *o = '\0';
    return 0;
}

int cx_seed(uint64_t *out)
{
    return RAND_bytes((unsigned char *)out, sizeof *out) == 1 ? 0 : -1;
}
