-- t.lua: the small harness the sim:* ctest scripts share: a test runner, assertions, and an
-- HTTP helper that drives cxone-sim with the curl command and returns status, headers, body.
local simlib = require("support.sim")
local json = require("cjson.safe").new()

local T = { json = json, simlib = simlib, DEMO = simlib.DEMO, shq = simlib.shquote }
local tests = {}

T.VARS = "/api/v2/integration/actions/%s/environments/%s/variables"
T.CRM = simlib.DEMO.actions[1]
T.PAY = simlib.DEMO.actions[2]
T.TKT = simlib.DEMO.actions[3]

function T.vars(action, env) return T.VARS:format(action, env) end

function T.test(name, fn) tests[#tests + 1] = { name = name, fn = fn } end

local function fmt(v)
    if type(v) == "string" then return string.format("%q", v) end
    return tostring(v)
end

function T.ok(cond, msg)
    if not cond then error("assertion failed: " .. (msg or "?"), 2) end
    return cond
end

function T.eq(got, want, msg)
    if got ~= want then
        error((msg or "values differ") .. ": expected " .. fmt(want) .. ", got " .. fmt(got), 2)
    end
end

-- file helpers shared with the busted specs
T.read, T.write = simlib.read_file, simlib.write_file

function T.sh(cmd)
    local p = assert(io.popen(cmd, "r"))
    local out = p:read("a")
    local _, _, code = p:close()
    return out, code
end

function T.tmpdir()
    return (T.sh("mktemp -d /tmp/cxone-sim-test.XXXXXX"):gsub("%s+$", ""))
end

--- request(sim, method, path, opts) -> { status, body, headers (lowercased), json, exit }
-- opts: headers (list of "Name: value"), body (string or table -> JSON), form (string),
-- basic ("id:secret"), token, max_time, extra (raw curl args string), url (overrides sim.url).
function T.request(s, method, path, opts)
    opts = opts or {}
    local hdr = os.tmpname()
    local parts = { "curl -s -o - -D", T.shq(hdr), "-X", T.shq(method), "--max-time",
                    tostring(opts.max_time or 10), "-w '\\n%{http_code}'" }
    for _, h in ipairs(opts.headers or {}) do parts[#parts + 1] = "-H " .. T.shq(h) end
    if opts.token then parts[#parts + 1] = "-H " .. T.shq("Authorization: Bearer " .. opts.token) end
    if opts.basic then parts[#parts + 1] = "-u " .. T.shq(opts.basic) end
    if opts.extra then parts[#parts + 1] = opts.extra end
    local tmp
    if opts.form then
        parts[#parts + 1] = "--data-raw " .. T.shq(opts.form)
    elseif opts.body then
        tmp = os.tmpname()
        T.write(tmp, type(opts.body) == "string" and opts.body or assert(json.encode(opts.body)))
        parts[#parts + 1] = "-H 'Content-Type: application/json' --data-binary @" .. T.shq(tmp)
    end
    parts[#parts + 1] = T.shq((opts.url or s.url) .. path)
    local out, code = T.sh(table.concat(parts, " "))
    if tmp then os.remove(tmp) end
    local r = { exit = code, headers = {} }
    local body, status = out:match("^(.*)\n(%d+)$")
    r.body, r.status = body or out, tonumber(status)
    -- Keep the headers of the last response block (skips "100 Continue").
    for line in (T.read(hdr) or ""):gmatch("[^\r\n]*") do
        if line:match("^HTTP/") then
            r.headers = {}
        else
            local k, v = line:match("^([^:]+):%s*(.-)%s*$")
            if k then r.headers[k:lower()] = v end
        end
    end
    os.remove(hdr)
    r.json = json.decode(r.body or "")
    return r
end

--- token(sim [, id, secret, scope]) -> access token via client_credentials
function T.token(s, id, secret, scope)
    local form = "grant_type=client_credentials&client_id=" .. (id or T.DEMO.client_id)
        .. "&client_secret=" .. (secret or T.DEMO.client_secret)
    if scope then form = form .. "&scope=" .. scope end
    local r = T.request(s, "POST", "/oauth/token", { form = form })
    T.eq(r.status, 200, "token request")
    return r.json.access_token
end

--- multi(url, n, token) -> list of status codes of n GETs made by ONE curl (one keep-alive connection)
function T.multi(url, n, token)
    local parts = { "curl -s -w '%{http_code}\\n'" }
    if token then parts[#parts + 1] = "-H " .. T.shq("Authorization: Bearer " .. token) end
    for _ = 1, n do parts[#parts + 1] = T.shq(url) .. " -o /dev/null" end
    local codes = {}
    for c in T.sh(table.concat(parts, " ")):gmatch("%d+") do codes[#codes + 1] = c end
    return codes
end

--- Finds a variable by name in a variables answer.
function T.var(answer, name)
    for _, v in ipairs(answer.variables or {}) do
        if v.name == name then return v end
    end
    return nil
end

--- start(opts) -> sim (a started simulator; see specs/support/sim.lua)
T.start = simlib.start

--- Runs every registered test with a fresh simulator from make_sim (or none); exits non-zero on failure.
function T.run(make_sim)
    local failed = 0
    for _, t in ipairs(tests) do
        local s = make_sim and make_sim() or nil
        local t0 = os.clock()
        local ok, e = xpcall(t.fn, debug.traceback, s)
        if s then s:stop() end
        if ok then
            print(("ok   %s"):format(t.name))
        else
            failed = failed + 1
            print(("FAIL %s\n     %s"):format(t.name, tostring(e):gsub("\n", "\n     ")))
        end
        local _ = t0
    end
    print(("%d/%d passed"):format(#tests - failed, #tests))
    os.exit(failed == 0 and 0 or 1)
end

return T
