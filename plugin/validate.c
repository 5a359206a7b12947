/* validate: placeholder until written. */
#include "cxone.h"

void cxone_validate_open(lua_State *L) { (void)L; }
