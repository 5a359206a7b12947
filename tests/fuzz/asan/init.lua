-- LUA_INIT_5_4 of the sanitizer tree's lua5.4 (see lua5.4 beside this file). Under ctest's spec
-- environment (CXONE_BUILD set) it loads cxone.core from that tree, and fails loudly if it
-- cannot, before bin/cxone could pick another (uninstrumented) build. Shell commands run
-- without the ASan preload (`lua5.4` in them comes back through the wrapper).
local build = os.getenv("CXONE_BUILD")
if build then
    local path = package.searchpath("cxone.core", package.cpath)
    assert(path and path:sub(1, #build + 1) == build .. "/",
        "asan/init.lua: cxone.core is not found in CXONE_BUILD=" .. build .. " (LUA_CPATH?)")
    require("cxone.core")
end
local UNSET = "unset LD_PRELOAD; "
local execute, popen = os.execute, io.popen
os.execute = function(cmd, ...)
    if cmd == nil then return execute() end
    return execute(UNSET .. cmd, ...)
end
io.popen = function(cmd, ...) return popen(UNSET .. cmd, ...) end
