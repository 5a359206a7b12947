-- Prints `cxone completion SHELL` from the source tree, for the build to install
-- (doc/CMakeLists.txt): the command's own code path (cxone.cli, lua-argparse's generators).
-- The grammar needs nothing native, so cxone.core is a stub here: the build then works in
-- trees whose module cannot be loaded by a plain lua5.4 (e.g. built with -DCXONE_SANITIZE=ON).
-- usage: lua5.4 doc/completion.lua SRC_DIR bash|zsh|fish > FILE
local src, shell = arg[1], arg[2]
if not (src and shell) then
    io.stderr:write("usage: lua5.4 doc/completion.lua SRC_DIR bash|zsh|fish\n")
    os.exit(2)
end
package.path = src .. "/lua/?.lua;" .. src .. "/lua/?/init.lua;" .. package.path
package.preload["cxone.core"] = function()
    return { isatty = function() return false end, no_core_dumps = function() end,
             _VERSION = "(completion generator)" }
end
os.exit(require("cxone.cli").main({ "completion", shell }))
