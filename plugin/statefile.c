/* statefile: small state files shared by concurrent runs (the masked-value ledger): a lock file,
 * durable appends, and atomic replacement through a unique temp file. */
#include "cxone.h"
void cxone_statefile_open(lua_State *L) { (void)L; }
