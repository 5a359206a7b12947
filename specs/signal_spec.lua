-- core.signal_* and core.monotonic: signals counted instead of fatal, polled, restored; the
-- record a second signal appends (in a child process, which it ends); argument errors.
-- (The signals are sent with os.execute("kill ..."), and system() ignores SIGINT in its caller
-- while the command runs: so TERM and HUP here; interrupt_spec sends real SIGINTs.)
-- Lua 5.1-compatible (LuaJIT, 5.3, 5.4).
local core = require("cxone.core")
local simlib = require("support.sim")
local q = simlib.shquote

local function self_pid()
    local f = assert(io.open("/proc/self/stat", "r"))
    local pid = tonumber(f:read("*l"):match("^(%d+)"))
    f:close()
    return pid
end

-- The interpreter running this spec, for a child: by name for Lua 5.4, so that PATH's wrapper
-- applies (the sanitizer tree preloads ASan through it), else the one that runs us.
local function child_lua()
    if _VERSION == "Lua 5.4" and not rawget(_G, "jit") then return "lua5.4" end
    return arg and arg[-1] or "lua"
end

describe("core.signal_*", function()
    after_each(function() core.signal_restore() end)

    it("counts armed signals instead of dying of them, until restored", function()
        assert.is_true(core.signal_arm({ "TERM", "HUP" }, { restart = true }))
        assert.equals(0, (core.signal_poll()))
        local pid = self_pid()
        os.execute("kill -TERM " .. pid)
        os.execute("kill -HUP " .. pid)
        local n, name, signo = core.signal_poll()
        assert.equals(2, n)
        assert.equals("TERM", name)
        assert.equals(15, signo)
        assert.is_true(core.signal_restore())
        assert.equals(0, (core.signal_poll()))
        -- arming again starts from 0
        assert.is_true(core.signal_arm({ "SIGHUP" }))
        os.execute("kill -HUP " .. pid)
        assert.equals(1, (core.signal_poll()))
    end)

    it("raises argument errors for what is not a signal list", function()
        assert.has_error(function() core.signal_arm("INT") end)
        assert.has_error(function() core.signal_arm({ "KILL" }) end, "bad argument #1 to 'signal_arm' (unknown signal 'KILL' (INT, TERM, HUP, XFSZ, PIPE))")
        assert.has_error(function() core.signal_arm({ "INT" }, { ignore = "XFSZ" }) end)
        assert.has_error(function() core.signal_arm({ "INT" }, { note = 3 }) end)
        assert.has_error(function() core.signal_last_words("/tmp/x", "line", -1) end)
        assert.has_error(function() core.signal_last_words("/tmp/x") end)
    end)

    it("with `second`, a second signal and no last words: that text on stderr, exit 128+signo", function()
        local dir = simlib.tmpdir()
        local child = dir .. "/child.lua"
        simlib.write_file(child, [[
local core = require("cxone.core")
io.stdout:setvbuf("no")
core.signal_arm({ "TERM" }, { second = "BYE\n" })
local f = io.open("/proc/self/stat"); local pid = f:read("*l"):match("^(%d+)"); f:close()
os.execute("kill -TERM " .. pid)
io.stdout:write("after one\n")
os.execute("kill -TERM " .. pid)
io.stdout:write("after two\n")
os.exit(0)
]])
        local lua = child_lua()
        local out = simlib.capture("LUA_CPATH=" .. q(package.cpath) .. " " .. lua .. " " .. q(child)
            .. " 2>" .. q(dir .. "/err") .. "; echo \"exit=$?\"")
        assert.equals("143", out:match("exit=(%d+)"))
        assert.matches("after one", out, 1, true)
        assert.is_nil(out:find("after two", 1, true))
        assert.equals("BYE\n", simlib.read_file(dir .. "/err"))
        os.execute("rm -rf " .. q(dir))
    end)

    it("a monotonic clock that never goes back", function()
        local a = core.monotonic()
        local b = core.monotonic()
        assert.is_number(a)
        assert.is_true(b >= a)
    end)

    it("a second signal appends the registered line when the file has the size given, then exits 128+signo", function()
        local dir = simlib.tmpdir()
        local path = dir .. "/trail"
        simlib.write_file(path, "first\n")
        local child = dir .. "/child.lua"
        simlib.write_file(child, ([[
local core = require("cxone.core")
core.signal_arm({ "TERM" }, { note = "NOTE-ONE\n" })
core.signal_last_words(%q, "LAST-WORDS\n", %d, "NOTE-TWO\n")
local f = io.open("/proc/self/stat"); local pid = f:read("*l"):match("^(%%d+)"); f:close()
os.execute("kill -TERM " .. pid)
os.execute("kill -TERM " .. pid)
io.stdout:write("still running\n")
os.exit(0)
]]):format(path, 6))
        local lua = child_lua()
        local out = simlib.capture("LUA_CPATH=" .. q(package.cpath) .. " " .. lua .. " " .. q(child)
            .. " 2>" .. q(dir .. "/err") .. "; echo \"exit=$?\"")
        assert.equals("143", out:match("exit=(%d+)"))
        assert.is_nil(out:find("still running", 1, true))
        assert.equals("first\nLAST-WORDS\n", simlib.read_file(path))
        assert.equals("NOTE-ONE\nNOTE-TWO\n", simlib.read_file(dir .. "/err"))
        -- a file that changed size since the line was prepared is left alone
        simlib.write_file(path, "first\nsomeone else\n")
        out = simlib.capture("LUA_CPATH=" .. q(package.cpath) .. " " .. lua .. " " .. q(child)
            .. " 2>/dev/null; echo \"exit=$?\"")
        assert.equals("143", out:match("exit=(%d+)"))
        assert.equals("first\nsomeone else\n", simlib.read_file(path))
        os.execute("rm -rf " .. q(dir))
    end)
end)
