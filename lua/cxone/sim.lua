--- `cxone sim`: runs cxone-sim, the emulator of the CXone API, in place of the command itself
-- (exec, same process id), so a signal sent to `cxone sim` (Ctrl-C, `kill`, a closed terminal)
-- reaches the emulator and nothing is left running when it ends.
-- Works under Lua 5.1 (LuaJIT), 5.3 and 5.4 (the command runs it under 5.4).
-- @module cxone.sim

local M = {}

local function exists(path)
    local f = io.open(path, "rb")
    if f then f:close() end
    return f ~= nil
end

--- Where cxone-sim is: CXONE_SIM_BIN; else beside the running command (PREFIX/bin of
-- `cmake --install`, or the rock's bin directory under luarocks' wrapper); else the source tree's
-- build (build/lua5.4/sim/cxone-sim); else "cxone-sim", looked up in PATH.
-- @tparam[opt] string argv0 the command's path (default arg[0])
-- @treturn string
function M.find(argv0)
    local bin = require("cxone.env").get("sim_bin")
    if bin then return bin end
    argv0 = argv0 or (arg and arg[0])
    local here = argv0 and argv0:match("^(.*)/[^/]+$")
    local candidates = {}
    if here then candidates[#candidates + 1] = here .. "/cxone-sim" end
    local src = debug.getinfo(1, "S").source
    local root = src:match("^@(.*)/lua/cxone/sim%.lua$")
    if root then candidates[#candidates + 1] = root .. "/build/lua5.4/sim/cxone-sim" end
    for _, c in ipairs(candidates) do
        if exists(c) then return c end
    end
    return "cxone-sim"
end

--- Runs cxone-sim with args in place of this process; returns only when it cannot be run.
-- @tparam table args the emulator's flags
-- @treturn number exit status 1 (after saying why on stderr)
function M.command(args)
    local bin = M.find()
    io.stdout:flush()
    io.stderr:flush()
    local _, err = require("cxone.core").exec(bin, args)
    io.stderr:write("cxone sim: ", tostring(err), " (set CXONE_SIM_BIN to the emulator's path)\n")
    return 1
end

return M
