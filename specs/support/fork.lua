-- fork, wait, _exit and dup2 for specs: lua-posix (posix.unistd, posix.sys.wait) where Debian builds it
-- (Lua 5.1-5.3), else a few lines of C (forkshim.c) compiled on first use against the headers
-- of the Lua running the spec (Debian's lua-posix has no 5.4 build).
-- M.run(fn): runs fn in a forked child that never returns into the caller (it leaves through
-- _exit, so no atexit handler, stdio flush or garbage collection of the parent's objects runs
-- there); returns true, or false and the child's error message.
local M = {}

local ok_u, unistd = pcall(require, "posix.unistd")
local ok_w, wait = pcall(require, "posix.sys.wait")
if ok_u and ok_w then
    M.fork, M.wait, M._exit, M.dup2, M.via = unistd.fork, wait.wait, unistd._exit, unistd.dup2, "lua-posix"
else
    local function sh(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
    local pkg = ({ ["Lua 5.4"] = "lua5.4", ["Lua 5.3"] = "lua5.3" })[_VERSION]
    if not pkg and type(jit) == "table" then pkg = "luajit" end
    assert(pkg, "no lua-posix and no known Lua headers for " .. _VERSION)
    local src = debug.getinfo(1, "S").source:gsub("^@", ""):gsub("fork%.lua$", "forkshim.c")
    local p = io.popen("mktemp -d")
    local dir = p:read("*l")
    p:close()
    local so = dir .. "/forkshim.so"
    local cmd = "cc -shared -fPIC -O1 $(pkg-config --cflags " .. pkg .. ") -o " .. sh(so) .. " "
        .. sh(src) .. " 2>&1"
    p = io.popen(cmd)
    local out = p:read("*a")
    p:close()
    local open = package.loadlib(so, "luaopen_forkshim")
    os.execute("rm -rf " .. sh(dir)) -- the mapping stays valid after the file is gone
    assert(open, "cannot build specs/support/forkshim.c: " .. out)
    local m = open()
    M.fork, M.wait, M._exit, M.dup2, M.via = m.fork, m.wait, m._exit, m.dup2, "forkshim"
end

function M.run(fn)
    local msgfile = os.tmpname()
    io.stdout:flush()
    io.stderr:flush()
    local pid = assert(M.fork())
    if pid == 0 then
        local ok, err = pcall(fn)
        local f = io.open(msgfile, "w")
        if f then
            f:write(ok and "" or tostring(err))
            f:close()
        end
        M._exit(ok and 0 or 1)
    end
    local _, how, status = M.wait(pid)
    local f = io.open(msgfile, "r")
    local msg = f and f:read("*a") or ""
    if f then f:close() end
    os.remove(msgfile)
    if how == "exited" and status == 0 then return true end
    return false, ("child %s %s: %s"):format(tostring(how), tostring(status), msg)
end

return M
