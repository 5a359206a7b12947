-- cxone.repl: rendering, the history filter, completion and help in-process (every Lua), and
-- `cxone repl` itself against cxone-sim, driven through a pseudo-terminal and through a pipe
-- (under Lua 5.4 only: the command always runs under lua5.4, so once is enough).
local repl = require("cxone.repl")
local simlib = require("support.sim")
local D = simlib.DEMO
local A1 = D.actions[1]
local q = simlib.shquote
local capture, read_file, write_file = simlib.capture, simlib.read_file, simlib.write_file

local pack = table.pack or function(...) return { n = select("#", ...), ... } end

-- A session whose output is collected; returns session, a function giving (and clearing) the text.
local function session(opts)
    local buf = {}
    opts = opts or {}
    opts.out = function(s) buf[#buf + 1] = s end
    local s = repl.session(opts)
    return s, function()
        local t = table.concat(buf)
        buf = {}
        return t
    end
end

-- An offline client (no request is made before a call needs one).
local function offline_client()
    return assert(require("cxone.client").new({ base_url = "http://127.0.0.1:9", client_id = "spec-client",
        client_secret = "canary-client-secret-5150", audit_log = false, state_file = false }))
end

local function count(s, plain)
    local n, i = 0, 1
    while true do
        local a, b = s:find(plain, i, true)
        if not a then return n end
        n, i = n + 1, b + 1
    end
end

describe("cxone.repl rendering", function()
    it("a variable list prints one aligned row per variable, masked values as ***", function()
        local text = repl.render({ actionId = A1, environmentId = "prod", variables = {
            { name = "API_KEY", value = "canary-masked-9931", masked = true, description = "key" },
            { name = "TIMEOUT_MS", value = "2500", masked = false },
            { name = "LOG_LEVEL", value = "info", masked = false },
        } })
        assert.is_nil(text:find("canary-masked-9931", 1, true))
        assert.matches(A1 .. "  prod  3 variables", text, 1, true)
        local rows = {}
        for line in text:gmatch("[^\n]+") do rows[#rows + 1] = line end
        assert.equals(5, #rows) -- heading, column names, three variables
        assert.matches("^  NAME%s+VALUE%s+MASKED", rows[2])
        assert.matches("^  API_KEY%s+%*%*%*%s+yes%s+key$", rows[3])
        assert.matches('^  TIMEOUT_MS%s+"2500"%s+no$', rows[4])
        -- aligned: the value column starts at the same place on every row
        local col = rows[2]:find("VALUE", 1, true)
        assert.equals(col, rows[3]:find("***", 1, true))
        assert.equals(col, rows[4]:find('"2500"', 1, true))
    end)

    it("a failure prints as nil  \"message\"  (code); trailing nils are dropped", function()
        local text, failed = repl.render_results(pack(nil, "not found (HTTP 404)", "not_found", {}))
        assert.equals('nil  "not found (HTTP 404)"  (not_found)', text)
        assert.is_true(failed)
        text, failed = repl.render_results(pack({ 1 }, nil, nil))
        assert.equals("{ 1 }", text)
        assert.is_false(failed)
        assert.equals("nil", (repl.render_results(pack(nil))))
        assert.is_nil((repl.render_results(pack())))
    end)

    it("tables print as indented literals with a depth limit, cycles and masked fields", function()
        local t = { 1, 2, x = { y = { z = { w = 1 } } }, ["two words"] = true }
        t.self = t
        local text = repl.render(t)
        assert.matches("{… 1 entry}", text, 1, true)
        assert.matches("{…cycle}", text, 1, true)
        assert.matches('["two words"] = true', text, 1, true)
        local long = {}
        for i = 1, 30 do long["name" .. i] = ("v"):rep(10) end
        text = repl.render(long)
        assert.matches("^{\n  name1 = ", text)
        assert.matches("\n}$", text)
        text = repl.render({ value = "canary-masked-1234", masked = true, client_secret = "canary-setting-5678" })
        assert.is_nil(text:find("canary", 1, true))
        assert.equals(2, count(text, "***"))
        local many = {}
        for i = 1, 100 do many[i] = i end
        assert.matches("… 60 more", repl.render(many), 1, true)
    end)

    it("functions are named as they are typed; objects print through __tostring", function()
        local s, out = session({ client = offline_client() })
        assert.equals("ok", s:eval("client.plan"))
        assert.equals("function client:plan(step)\n", out())
        assert.equals("ok", s:eval("cxone.drift"))
        assert.matches("^function cxone%.drift%(", out())
        assert.equals("ok", s:eval("client"))
        local text = out()
        assert.matches("^cxone.PromoteClient %(", text)
        assert.equals("ok", s:eval("client.cfg"))
        text = out()
        assert.matches("client_secret = ***", text, 1, true)
        assert.is_nil(text:find("canary-client-secret-5150", 1, true))
        -- print scrubs the secrets the session knows
        assert.equals("ok", s:eval("print(client.cfg.client_secret)"))
        assert.equals("***\n", out())
    end)
end)

describe("cxone.repl evaluation", function()
    it("expressions need no return; statements and multi-line chunks work", function()
        local s, out = session({})
        assert.equals("ok", s:eval("1 + 1"))
        assert.equals("2\n", out())
        assert.equals("ok", s:eval("x = 40"))
        assert.equals("", out())
        assert.equals("ok", s:eval("=x + 2"))
        assert.equals("42\n", out())
        assert.equals("incomplete", s:eval("function f(a)"))
        assert.equals("ok", s:eval("function f(a)\nreturn a * 2\nend"))
        assert.equals("ok", s:eval("f(4)"))
        assert.equals("8\n", out())
        assert.is_nil(rawget(_G, "x")) -- the session's globals are its own
        assert.is_false(s.failed)
    end)

    it("errors and failures are reported and remembered", function()
        local s, out = session({})
        assert.equals("failed", s:eval("error('boom')"))
        assert.matches("^error: [^\n]*boom", out()) -- LuaJIT drops the position of a tail call
        assert.equals("failed", s:eval("x = = 1"))
        assert.matches("^error: ", out())
        s, out = session({})
        assert.equals("failed", s:eval("nil, 'no such thing', 'not_found'"))
        assert.equals('nil  "no such thing"  (not_found)\n', out())
        assert.is_true(s.failed)
    end)

    it("a secret typed once is scrubbed from what is printed later", function()
        local s, out = session({})
        assert.equals("ok", s:eval('step = { value = "canary-typed-4711", masked = true }'))
        assert.equals("ok", s:eval('step.value .. "!"'))
        assert.equals('"***!"\n', out())
    end)
end)

describe("cxone.repl history filter", function()
    it("keeps out masked values and secret-looking literals, and nothing else", function()
        local yes = {
            'x = { value = "s3cret", masked = true }',
            "client:plan{ variables = { K = { masked = true, value = 'abc' } } }",
            'CRM_API_KEY = "abc"',
            'local db_password = [[abc]]',
            't.client_secret = "abc"',
            'cfg = { ["WEBHOOK_TOKEN"] = "abc" }',
            'print("known-secret-value")',
        }
        local no = {
            'x = { value = env("CRM_KEY"), masked = true }',
            'client:vars(A, "production")',
            'if key == "abc" then end',
            'API_KEY = os.getenv("API_KEY")',
            'masked = true',
        }
        local known = { ["known-secret-value"] = true }
        for _, l in ipairs(yes) do assert.is_true(repl.secret_line(l, known), l) end
        for _, l in ipairs(no) do assert.is_false(repl.secret_line(l, known), l) end
    end)
end)

describe("cxone.repl completion", function()
    it("completes methods, fields, globals, tier names and action ids seen", function()
        local s, out = session({ client = offline_client() })
        assert.same({ "client:plan", "client:plan_all" }, s:complete("client:pl", "client:pl"))
        assert.same({ "x = client:vars" }, s:complete("x = client:va", "x = client:va"))
        local fields = s:complete("client.cf", "client.cf")
        assert.same({ "client.cfg" }, fields)
        assert.same({ "cxone.drift" }, s:complete("cxone.dri", "cxone.dri"))
        local g = s:complete("cl", "cl")
        assert.truthy(#g >= 1)
        assert.equals("client", g[1])
        assert.same({ "prod", "production" }, s:complete('client:vars(A, "pro', "pro", 17))
        assert.same({}, s:complete('client:vars("' .. A1:sub(1, 4), A1:sub(1, 4), 14))
        assert.equals("ok", s:eval(("A = %q"):format(A1)))
        out()
        assert.same({ A1 }, s:complete('client:vars("' .. A1:sub(1, 4), A1:sub(1, 4), 14))
        assert.same({}, s:complete("nosuch.x", "nosuch.x"))
    end)
end)

describe("cxone.repl help", function()
    it("help(f) prints the function's LDoc comment; help() lists the client's methods", function()
        local s, out = session({ client = offline_client() })
        assert.equals("ok", s:eval("help(client.plan)"))
        local text = out()
        assert.matches("^client:plan%(step%)\n\nPlans one step", text)
        assert.matches("Returns:\n  1. cxone.Plan", text, 1, true)
        -- the same words as the comment in the source
        local src = read_file(simlib.ROOT .. "/lua/cxone/client.lua")
        local comment = src:match("%-%-%- (Plans one step[^\n]*)\n[^\n]*\n[^\n]*\nfunction Client:plan%(")
        assert.is_string(comment)
        assert.matches(comment, text, 1, true)
        assert.equals("ok", s:eval("help()"))
        text = out()
        assert.matches("client:drift%(action, baseline, target%)%s+Compares two tiers", text)
        assert.matches(".exit or Ctrl-D quits", text, 1, true)
        assert.is_nil(text:find("canary-client-secret-5150", 1, true))
        assert.equals("ok", s:eval("help(cxone.core.sha256)"))
        assert.matches("^cxone.core.sha256 %(C%)\n\n%S", out()) -- the block in plugin/util.c
    end)
end)

if _VERSION ~= "Lua 5.4" or rawget(_G, "jit") then return end

-- Runs CMD on a pseudo-terminal, step by step: waits for each step's `expect` (a regex, searched
-- in what arrived since the previous send), then types its `send`. Prints the transcript and
-- exits with the command's status (124 on a timeout).
local DRIVER = [=[
import json, os, pty, re, select, sys, time
steps = json.loads(sys.argv[1])
cmd = sys.argv[2:]
pid, fd = pty.fork()
if pid == 0:
    os.execvp(cmd[0], cmd)
out, mark = b"", 0
def pump(deadline, pattern=None):
    global out
    while time.time() < deadline:
        if pattern is not None and re.search(pattern.encode(), out[mark:]):
            return True
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return pattern is None
            if not chunk:
                return pattern is None
            out += chunk
    return False
for st in steps:
    if st.get("expect") is not None and not pump(time.time() + 30, st["expect"]):
        os.kill(pid, 9)
        sys.stdout.write(out.decode(errors="replace") + "\n[timed out waiting for %r]\n" % st["expect"])
        sys.exit(124)
    mark = len(out)
    os.write(fd, st["send"].encode())
if not pump(time.time() + 30):
    os.kill(pid, 9)
    sys.stdout.write(out.decode(errors="replace") + "\n[timed out waiting for the end]\n")
    sys.exit(124)
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace"))
sys.exit(os.waitstatus_to_exitcode(status))
]=]

local PROMPT = "> $"

describe("cxone repl against cxone-sim", function()
    local sim, dir, env, driver, canary
    simlib.suite({ reset = false, env = "once" }, function(s) sim, dir, env = s.sim, s.dir, s.env end)
    setup(function()
        env.HOME = dir
        env.CXONE_HISTORY = dir .. "/history"
        env.TERM = "xterm"
        driver = dir .. "/driver.py"
        write_file(driver, DRIVER)
        -- the masked plaintext the sim holds for the development tier: it must never be shown
        for _, a in ipairs(sim:state().actions) do
            if a.id == A1 then
                for _, v in ipairs(a.environments.dev.variables) do
                    if v.masked then canary = v.value end
                end
            end
        end
        assert.is_string(canary)
    end)

    -- The command line of `cxone repl`, loading cxone.core from the tree under test.
    local function repl_cmd()
        local build, lua = os.getenv("CXONE_BUILD"), os.getenv("CXONE_LUA")
        local pre = ""
        if build and lua == "lua5.4" then
            pre = " -e " .. q(('package.preload["cxone.core"] = package.loadlib(%q, "luaopen_cxone_core")')
                :format(build .. "/cxone/core.so"))
        end
        return "lua5.4" .. pre .. " " .. q(simlib.ROOT .. "/bin/cxone") .. " repl"
    end

    local function pty(steps, extra_env)
        local e = {}
        for k, v in pairs(env) do e[k] = v end
        for k, v in pairs(extra_env or {}) do e[k] = v end
        local json = require("cjson.safe")
        local cmd = simlib.with_env(e) .. " python3 " .. q(driver) .. " " .. q(json.encode(steps)) .. " "
            .. repl_cmd() .. "; echo \"exit=$?\""
        local out = capture(cmd)
        local code = tonumber(out:match("exit=(%d+)%s*$"))
        return code, (out:gsub("\27%[[%d;?]*[%a]", ""):gsub("\r", ""))
    end

    local function piped(script)
        local path = dir .. "/script.lua"
        write_file(path, script)
        local cmd = simlib.with_env(env) .. " " .. repl_cmd() .. " <" .. q(path) .. " >" .. q(dir .. "/out")
            .. " 2>" .. q(dir .. "/err") .. "; echo $?"
        local code = tonumber((capture(cmd):match("(%d+)")))
        return code, read_file(dir .. "/out"), read_file(dir .. "/err")
    end

    it("client:pl<TAB> completes to client:plan; vars prints a row per variable, masked as ***", function()
        local code, out = pty({
            { expect = PROMPT, send = "client:pl\t" },
            { expect = "an", send = "\n" },
            { expect = PROMPT, send = ("A = %q\n"):format(A1) },
            { expect = PROMPT, send = 'client:vars(A, "developm\t' },
            { expect = "ent", send = ")\n" },
            { expect = PROMPT, send = "client.cfg\n" },
            { expect = PROMPT, send = "\4" },
        })
        assert.equals(0, code, out)
        assert.matches("function client:plan(step)", out, 1, true)
        for _, name in ipairs({ "CRM_API_KEY", "CRM_BASE_URL", "FEATURE_FUZZY_MATCH", "LOG_LEVEL", "TIMEOUT_MS" }) do
            assert.matches("\n  " .. name .. "%s+%S", out)
        end
        assert.matches("\n  CRM_API_KEY%s+%*%*%*%s+yes", out)
        assert.matches("client_secret = ***", out, 1, true)
        assert.is_nil(out:find(canary, 1, true))
        assert.is_nil(out:find(D.client_secret, 1, true))
    end)

    it("a failing call prints message and code; Ctrl-C clears the line; .exit ends with 0", function()
        local code, out = pty({
            { expect = PROMPT, send = 'client:vars("0000", "production")\n' },
            { expect = PROMPT, send = "error('typed then cancelled')\3" },
            { expect = nil, send = "6 * 7\n" },
            { expect = PROMPT, send = ".exit\n" },
        })
        assert.equals(0, code, out)
        assert.matches('nil  "[^"\n]+"  %(not_found%)', out)
        assert.matches("\n42\n", out)
        assert.is_nil(out:find("error: ", 1, true))
    end)

    it("a line with a masked value stays out of the history file, whose mode is 0600", function()
        write_file(dir .. "/history", "old_line = 0\n") -- a file from before, readable by all
        os.execute("chmod 644 " .. q(dir .. "/history"))
        local code, out = pty({
            { expect = PROMPT, send = "plain_line = 1\n" },
            { expect = PROMPT, send = 'step = { value = "canary-history-8086", masked = true }\n' },
            { expect = PROMPT, send = 'SERVICE_TOKEN = "canary-history-6502"\n' },
            { expect = PROMPT, send = "step.value\n" },
            { expect = PROMPT, send = "\4" },
        })
        assert.equals(0, code, out)
        local hist = read_file(dir .. "/history")
        assert.is_string(hist)
        assert.matches("plain_line = 1\n", hist, 1, true)
        assert.is_nil(hist:find("canary", 1, true))
        assert.equals("600", (capture("stat -c %a " .. q(dir .. "/history")):gsub("%s+", "")))
        assert.equals(1, count(out, "kept out of the history"))
        assert.matches('\n"***"\n', out, 1, true) -- the value typed is scrubbed from what prints
        -- the next session offers the saved line again (Up arrow) and still keeps no secret
        assert.equals("old_line = 0\nplain_line = 1\nstep.value\n", hist)
        code, out = pty({ { expect = PROMPT, send = "\27[A\27[A\n" }, { expect = PROMPT, send = "\4" } })
        assert.equals(0, code, out)
        assert.equals(2, count(read_file(dir .. "/history"), "plain_line = 1"))
        -- CXONE_HISTORY empty: no history at all
        os.remove(dir .. "/history")
        code = pty({ { expect = PROMPT, send = "kept_nowhere = 1\n" }, { expect = PROMPT, send = "\4" } },
            { CXONE_HISTORY = "" })
        assert.equals(0, code)
        assert.is_nil(read_file(dir .. "/history"))
        assert.is_nil(read_file(dir .. "/.cxone_history"))
    end)

    it("README.md's transcript is exactly what cxone repl prints for its input", function()
        -- the ```text block that starts with `$ bin/cxone repl`: a line "> INPUT" is typed (with
        -- "<Tab>" a Tab key press); "> KEYS  → LINE" types KEYS and shows LINE; the rest is output
        local readme = read_file(simlib.ROOT .. "/README.md")
        local block = readme:match("\n```text\n%$ bin/cxone repl\n(.-\n)```\n")
        assert.is_string(block, "no transcript of cxone repl in README.md")
        local steps, expected = {}, {}
        for line in block:gmatch("([^\n]*)\n") do
            local input = line:match("^> (.*)$")
            if input then
                local keys, shown = input:match("^(.-)%s+→ (.*)$")
                if not keys then keys, shown = input, input end
                assert.is_nil(shown:find("<Tab>", 1, true), line)
                steps[#steps + 1] = { expect = PROMPT, send = (keys:gsub("<Tab>", "\t")) .. "\n" }
                line = "> " .. shown
            end
            expected[#expected + 1] = line
        end
        assert.is_true(#steps >= 5, "too few input lines in the transcript")
        assert.equals(".exit\n", steps[#steps].send)
        local code, out = pty(steps)
        assert.equals(0, code, out)
        assert.equals(table.concat(expected, "\n") .. "\n", (out:gsub("exit=%d+%s*$", "")))
    end)

    it("piped stdin is evaluated line by line; the status says whether a line failed", function()
        local code, out, err = piped(("A = %q\nclient:drift(A, 'staging', 'production')\n#client:vars(A, 'prod').variables\n")
            :format(A1))
        assert.equals(0, code, err)
        assert.matches("drift staging → production", out, 1, true)
        assert.matches("\n4\n$", out)
        assert.equals("", err)
        code, out, err = piped("error('first')\nprint('still running')\n")
        assert.equals(1, code)
        assert.matches("error: stdin:1: first", err, 1, true)
        assert.equals("still running\n", out)
        code, out = piped("client:vars('0000', 'production')\n")
        assert.equals(1, code)
        assert.matches('^nil  ".-"  %(not_found%)\n$', out)
        code, _, err = piped("function f()\n")
        assert.equals(1, code)
        assert.matches("error: ", err, 1, true)
    end)
end)
