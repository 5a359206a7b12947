-- Starts cxone-sim on a free loopback port for a spec, talks to its /_sim endpoints with the
-- curl command (an independent client), and stops it. Works under Lua 5.4, 5.3 and LuaJIT.
local json = require("cjson.safe").new()

local M = {}
local Sim = {}
Sim.__index = Sim

local function shquote(s)
    return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
M.shquote = shquote

--- Starts the simulator. opts.args: extra command-line flags; opts.stderr: a file for its log;
-- opts.env: extra environment variables (a map, as for M.with_env).
function M.start(opts)
    opts = opts or {}
    local bin = os.getenv("CXONE_SIM_BIN")
    assert(bin and bin ~= "", "CXONE_SIM_BIN is not set (run the specs through ctest)")
    local args = { "--listen", "127.0.0.1:0" }
    if not opts.stderr then args[#args + 1] = "--quiet" end
    for _, a in ipairs(opts.args or {}) do args[#args + 1] = a end
    local quoted = {}
    for i, a in ipairs(args) do quoted[i] = shquote(a) end
    -- `exec` keeps the shell's pid, so the pid printed first is the simulator's own.
    local cmd = "echo $$; exec " .. (opts.env and M.with_env(opts.env) .. " " or "") .. shquote(bin) .. " "
        .. table.concat(quoted, " ")
        .. " 2>" .. shquote(opts.stderr or "/dev/null")
    local proc = assert(io.popen(cmd, "r"))
    local pid = proc:read("*l")
    local url = proc:read("*l")
    assert(pid and url and url:match("^https?://"), "cxone-sim did not start: " .. tostring(url))
    return setmetatable({ pid = tonumber(pid), url = url, proc = proc }, Sim)
end

--- Sends a signal (default TERM) and waits for the process to exit.
function Sim:stop(signal)
    if not self.proc then return end
    os.execute("kill -" .. (signal or "TERM") .. " " .. self.pid .. " 2>/dev/null")
    self.proc:read("*a")
    self.proc:close()
    self.proc = nil
end

--- Runs curl against the sim; returns status, body (a string).
function Sim:curl(method, path, body, headers)
    local parts = { "curl -s -S -o - -w '\\n%{http_code}' -X", shquote(method) }
    for _, h in ipairs(headers or {}) do parts[#parts + 1] = "-H " .. shquote(h) end
    if body then
        parts[#parts + 1] = "-H 'Content-Type: application/json' --data-binary @-"
    end
    parts[#parts + 1] = shquote(self.url .. path)
    local cmd = table.concat(parts, " ")
    local out
    if body then
        local tmp = os.tmpname()
        local f = assert(io.open(tmp, "wb"))
        f:write(type(body) == "string" and body or assert(json.encode(body)))
        f:close()
        local p = assert(io.popen(cmd .. " <" .. shquote(tmp), "r"))
        out = p:read("*a")
        p:close()
        os.remove(tmp)
    else
        local p = assert(io.popen(cmd, "r"))
        out = p:read("*a")
        p:close()
    end
    local resp, code = out:match("^(.*)\n(%d+)$")
    return tonumber(code), resp
end

--- GET a /_sim endpoint and decode it.
function Sim:get_json(path)
    local status, body = self:curl("GET", path)
    assert(status == 200, "GET " .. path .. " -> " .. tostring(status))
    return assert(json.decode(body))
end

--- POST JSON to a /_sim endpoint; returns status and the decoded answer (or raw body).
function Sim:post_json(path, tbl)
    local status, body = self:curl("POST", path, tbl)
    return status, json.decode(body) or body
end

--- Arms a fault (see sim/README.md for the fields).
function Sim:fault(spec)
    local status = self:post_json("/_sim/faults", spec)
    assert(status == 200 or status == 201, "arming fault failed: " .. tostring(status))
end

function Sim:stats() return self:get_json("/_sim/stats") end
function Sim:state() return self:get_json("/_sim/state") end

--- A fresh temporary directory (the caller removes it).
function M.tmpdir()
    local p = io.popen("mktemp -d")
    local d = p:read("*l")
    p:close()
    return d
end

--- The whole content of a file, or nil when it cannot be opened.
function M.read_file(path)
    local f = io.open(path, "rb")
    if not f then return nil end
    local s = f:read("*a")
    f:close()
    return s
end

function M.write_file(path, s)
    local f = assert(io.open(path, "wb"))
    f:write(s)
    f:close()
end

--- Wall-clock seconds with sub-second precision (os.time is whole seconds, os.clock is CPU).
function M.now()
    local p = io.popen("date +%s.%N")
    local t = tonumber(p:read("*l"))
    p:close()
    return t
end

--- Runs a shell command and returns its stdout.
function M.capture(cmd)
    local p = assert(io.popen(cmd, "r"))
    local s = p:read("*a")
    p:close()
    return s
end

-- The source tree (specs run from it, but do not assume the working directory).
do
    local src = debug.getinfo(1, "S").source:gsub("^@", "")
    local root = src:match("^(.*)/specs/support/[^/]*$") or "."
    if root:sub(1, 1) ~= "/" then root = M.capture("pwd"):gsub("%s+$", "") .. "/" .. root end
    M.ROOT = root
end

-- Builds `env -u A B=b ... CMD` for a map of variables (false unsets).
local function with_env(env)
    local parts, sets = { "env" }, {}
    for k, v in pairs(env or {}) do -- env wants its -u options before the assignments
        if v == false then parts[#parts + 1] = "-u " .. k else sets[#sets + 1] = shquote(k .. "=" .. v) end
    end
    for _, s in ipairs(sets) do parts[#parts + 1] = s end
    return table.concat(parts, " ")
end
M.with_env = with_env

--- The command line that runs bin/cxone with args.
function M.cxone_cmd(args)
    local parts = { "lua5.4 " .. shquote(M.ROOT .. "/bin/cxone") }
    for _, a in ipairs(args) do parts[#parts + 1] = shquote(a) end
    return table.concat(parts, " ")
end

--- Runs `lua5.4 bin/cxone ARGS` with env (a map; false unsets); returns code, stdout, stderr.
function M.cxone(args, env, stdin)
    local dir = M.tmpdir()
    local cmd = with_env(env) .. " " .. M.cxone_cmd(args) .. " <" .. shquote(stdin or "/dev/null")
        .. " >" .. shquote(dir .. "/out") .. " 2>" .. shquote(dir .. "/err") .. "; echo $?"
    local code = tonumber((M.capture(cmd):match("(%d+)")))
    local out, err = M.read_file(dir .. "/out"), M.read_file(dir .. "/err")
    os.execute("rm -rf " .. shquote(dir))
    return code, out, err
end

--- The CXONE_* environment for a CLI run against sim, with the audit trail in dir.
function M.sim_env(sim, dir)
    return {
        CXONE_BASE_URL = sim.url, CXONE_CLIENT_ID = M.DEMO.client_id, CXONE_CLIENT_SECRET = M.DEMO.client_secret,
        CXONE_AUDIT_LOG = dir .. "/audit.jsonl", CXONE_TOKEN_URL = false, CXONE_ACCESS_KEY_ID = false,
        CXONE_ACCESS_KEY_SECRET = false, CXONE_WEBHOOK_URL = false, CXONE_CA_FILE = false, NO_COLOR = "1",
        CXONE_AUDIT_KEY = false, CXONE_STATE_FILE = false, CXONE_DEBUG = false,
    }
end

--- Runs `cxone ARGS` on a pseudo-terminal (specs/support/pty_run.py) with env; opts.expect and
-- opts.send answer a prompt (opts.hook: a command run before the answer). Returns the exit code
-- and what the terminal showed.
function M.cxone_pty(args, env, opts)
    opts = opts or {}
    local cmd = with_env(env) .. " python3 " .. shquote(M.ROOT .. "/specs/support/pty_run.py")
    if opts.expect then cmd = cmd .. " --expect " .. shquote(opts.expect) end
    if opts.hook then cmd = cmd .. " --hook " .. shquote(opts.hook) end
    if opts.send then cmd = cmd .. " --send " .. shquote(opts.send) end
    local out = M.capture(cmd .. " -- " .. M.cxone_cmd(args) .. "; echo \"exit=$?\"")
    return tonumber(out:match("exit=(%d+)%s*$")), out
end

--- Polls until pred() holds (an observable event), for at most `limit` seconds (default 30), and
-- returns what it returned; the short pause between polls only spares the CPU.
function M.wait_for(pred, what, limit)
    local polls = math.floor((limit or 30) / 0.02)
    for _ = 1, polls do
        local v = pred()
        if v then return v end
        os.execute("sleep 0.02")
    end
    error("timed out waiting for " .. what)
end

--- Starts `cxone ARGS` with env in the background, stdin from /dev/null, its files (pid, out,
-- err, rc) in d (default: a fresh temporary directory). The handle has the process id (pid),
-- kill(sig), err() (stderr so far), done() (the exit status once it exited, else nil) and wait()
-- (the exit code, stdout and stderr, once it exited).
function M.spawn(args, env, d)
    d = d or M.tmpdir()
    local function f(name) return shquote(d .. "/" .. name) end
    local inner = "echo $$ >" .. f("pid.tmp") .. "; mv " .. f("pid.tmp") .. " " .. f("pid")
        .. "; exec " .. M.cxone_cmd(args)
    os.execute("(" .. with_env(env) .. " sh -c " .. shquote(inner) .. " </dev/null >" .. f("out")
        .. " 2>" .. f("err") .. "; echo $? >" .. f("rc.tmp") .. "; mv " .. f("rc.tmp") .. " " .. f("rc")
        .. ") >/dev/null 2>&1 &")
    local h = { dir = d }
    h.pid = tonumber(M.wait_for(function() return M.read_file(d .. "/pid") end, "the process id"))
    function h.kill(sig) os.execute("kill -" .. sig .. " " .. h.pid) end
    function h.err() return M.read_file(d .. "/err") or "" end
    function h.done() return M.read_file(d .. "/rc") end
    function h.wait()
        local rc = M.wait_for(h.done, "the exit status", 60)
        return tonumber(rc), M.read_file(d .. "/out") or "", h.err()
    end
    return h
end

--- A playbook's text: `return { STEP, ... }`, or with a concurrency
-- `return { concurrency = N, steps = { STEP, ... } }`; steps are Lua source strings.
function M.book(steps, concurrency)
    local out = { concurrency and ("return { concurrency = " .. concurrency .. ", steps = {") or "return {" }
    for _, s in ipairs(steps) do out[#out + 1] = "  " .. s .. "," end
    out[#out + 1] = concurrency and "} }" or "}"
    return table.concat(out, "\n") .. "\n"
end

--- The variables of one action's environment in a /_sim/state document, by name.
function M.env_vars(state, action, env)
    for _, a in ipairs(state.actions) do
        if a.id == action then
            local by = {}
            for _, v in ipairs((a.environments[env] or {}).variables or {}) do by[v.name] = v end
            return by
        end
    end
end

--- The records of an audit trail (none when the file is missing). A line that is not JSON is
-- skipped, or with keep_torn kept as { torn = LINE }.
function M.audit_records(path, keep_torn)
    local out = {}
    for line in (M.read_file(path) or ""):gmatch("[^\n]+") do
        local rec = json.decode(line)
        if rec == nil and keep_torn then rec = { torn = line } end
        out[#out + 1] = rec
    end
    return out
end

--- A bearer token for the demo client, asked for with curl (not our client).
function Sim:token()
    return json.decode(M.capture("curl -s -d grant_type=client_credentials -d client_id=" .. M.DEMO.client_id
        .. " -d client_secret=" .. M.DEMO.client_secret .. " " .. shquote(self.url .. "/oauth/token"))).access_token
end

--- A foreign writer: PATCHes vars (a list of { name, value, masked }) through curl; returns the status.
function Sim:foreign_patch(action, env, vars)
    return (self:curl("PATCH", "/api/v2/integration/actions/" .. action .. "/environments/" .. env .. "/variables",
        { actionId = action, environmentId = env, variables = vars }, { "Authorization: Bearer " .. self:token() }))
end

--- Runs a shell command quietly and raises when it fails.
function M.run(cmd)
    local ok = os.execute(cmd .. " >/dev/null 2>&1")
    assert(ok == true or ok == 0, "failed: " .. cmd)
end

--- Makes a test CA with the openssl CLI in dir (ca.pem, ca.key) and a server certificate it
-- signed (srv.pem, srv.key) whose subject is names[1] and whose subjectAltName lists every name
-- (IPv4 addresses as IP:, the rest as DNS:). ca_name: the CA's common name.
function M.test_ca(dir, names, ca_name)
    local function f(name) return shquote(dir .. "/" .. name) end
    local ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
    M.run("openssl req -x509 " .. ec .. " -keyout " .. f("ca.key") .. " -out " .. f("ca.pem")
        .. " -days 2 -subj " .. shquote("/CN=" .. (ca_name or "cxone-overrides test CA"))
        .. " -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign")
    M.run("openssl req " .. ec .. " -keyout " .. f("srv.key") .. " -out " .. f("srv.csr")
        .. " -subj " .. shquote("/CN=" .. names[1]))
    local alt = {}
    for i, n in ipairs(names) do alt[i] = (n:match("^%d+%.%d+%.%d+%.%d+$") and "IP:" or "DNS:") .. n end
    M.write_file(dir .. "/ext.cnf", "subjectAltName=" .. table.concat(alt, ",") .. "\nextendedKeyUsage=serverAuth\n")
    M.run("openssl x509 -req -in " .. f("srv.csr") .. " -CA " .. f("ca.pem") .. " -CAkey " .. f("ca.key")
        .. " -CAcreateserial -out " .. f("srv.pem") .. " -days 2 -extfile " .. f("ext.cnf"))
end

--- The options for M.start that serve https with dir's srv.pem and srv.key (see M.test_ca).
function M.tls_args(dir)
    return { args = { "--tls-cert", dir .. "/srv.pem", "--tls-key", dir .. "/srv.key" } }
end

--- For the enclosing describe block: a temporary directory holding a test CA and a server
-- certificate (M.test_ca with names and ca_name), a sim serving https with it (s.tls) and, with
-- plain, one serving http (s.plain); all gone after the block. bind(s) as for M.suite.
function M.tls_suite(names, ca_name, plain, bind)
    local busted = require("busted")
    local s = {}
    busted.setup(function()
        s.dir = M.tmpdir()
        M.test_ca(s.dir, names, ca_name)
        if plain then s.plain = M.start() end
        s.tls = M.start(M.tls_args(s.dir))
        bind(s)
    end)
    busted.teardown(function()
        if s.plain then s.plain:stop() end
        if s.tls then s.tls:stop() end
        if s.dir then os.execute("rm -rf " .. shquote(s.dir)) end
    end)
    return s
end

--- For the enclosing describe block: a fresh temporary directory for each test, removed after
-- it; bind(dir) is called with each one.
function M.tmpdir_each(bind)
    local busted = require("busted")
    local dir
    busted.before_each(function()
        dir = M.tmpdir()
        bind(dir)
    end)
    busted.after_each(function() os.execute("rm -rf " .. shquote(dir)) end)
end

--- The set-up most specs share, for the enclosing describe block (call it inside one): a sim
-- started once (opts.start: options for M.start) and a temporary directory (none with
-- opts.dir = false), both gone after the block. opts.files (name -> text) are written into the
-- directory at set-up. Before each test the sim is reset as opts.reset says ("state", the
-- default: POST /_sim/reset, which must answer 200; "faults": DELETE /_sim/faults; false:
-- nothing) and the directory cleared as opts.clean says ("files" removes what `dir/*` names,
-- "all" dot files too, a list removes those names, nil nothing). opts.env: "each" builds the
-- CLI's environment (M.sim_env) before each test, "once" at set-up, nil never. bind(s) is called
-- each time s.sim, s.dir or s.env change, so that a spec can keep them in its own locals.
-- Returns s; s.restart() stops the sim and starts a fresh one (for a test that leaves it unusable).
function M.suite(opts, bind)
    opts = opts or {}
    bind = bind or function() end
    local busted, luassert = require("busted"), require("luassert")
    local reset = opts.reset == nil and "state" or opts.reset
    local s = {}
    function s.restart()
        s.sim:stop()
        s.sim = M.start(opts.start)
        if opts.env == "once" then s.env = M.sim_env(s.sim, s.dir) end
        bind(s)
    end
    busted.setup(function()
        s.sim = M.start(opts.start)
        if opts.dir ~= false then s.dir = M.tmpdir() end
        for name, text in pairs(opts.files or {}) do M.write_file(s.dir .. "/" .. name, text) end
        if opts.env == "once" then s.env = M.sim_env(s.sim, s.dir) end
        bind(s)
    end)
    busted.teardown(function()
        if s.sim then s.sim:stop() end
        if s.dir then os.execute("rm -rf " .. shquote(s.dir)) end
    end)
    if not (reset or opts.clean or opts.env == "each") then return s end
    busted.before_each(function()
        if reset == "state" then
            luassert.equals(200, (s.sim:post_json("/_sim/reset", {})))
        elseif reset == "faults" then
            s.sim:curl("DELETE", "/_sim/faults")
        end
        if opts.clean == "files" then
            os.execute("rm -rf " .. shquote(s.dir) .. "/*")
        elseif opts.clean == "all" then
            os.execute("rm -rf " .. shquote(s.dir) .. "/* " .. shquote(s.dir) .. "/.[!.]*")
        elseif type(opts.clean) == "table" then
            for _, name in ipairs(opts.clean) do os.remove(s.dir .. "/" .. name) end
        end
        if opts.env == "each" then s.env = M.sim_env(s.sim, s.dir) end
        bind(s)
    end)
    return s
end

--- The options of a client of sim as the demo client: base_url, client_id and client_secret, then
-- each table given (nil ones skipped) laid over them in turn.
function M.client_opts(sim, ...)
    local opts = { base_url = sim.url, client_id = M.DEMO.client_id, client_secret = M.DEMO.client_secret }
    for i = 1, select("#", ...) do
        for k, v in pairs((select(i, ...)) or {}) do opts[k] = v end
    end
    return opts
end

--- The number of API requests the sim answered for one route ("PATCH", "GET", "POST build").
function Sim:count(which)
    local routes = {
        GET = "GET /api/v2/integration/actions/{actionId}/environments/{envId}/variables",
        PATCH = "PATCH /api/v2/integration/actions/{actionId}/environments/{envId}/variables",
        BUILD = "POST /api/v2/integration/actions/{actionId}/build",
    }
    local r = self:stats().routes[routes[which] or which]
    local n = 0
    for _, c in pairs(r or {}) do n = n + c end
    return n
end

-- Demo credentials built into the simulator.
M.DEMO = {
    client_id = "demo-client",
    client_secret = "demo-secret-0123456789",
    readonly_id = "readonly-client",
    readonly_secret = "readonly-secret-0123456789",
    access_key_id = "demo-access-key-id",
    access_key_secret = "demo-access-key-secret-0123456789",
    actions = {
        "a1b2c3d4-e5f6-4890-abcd-ef1234567890", -- crm-lookup
        "0f8e7d6c-5b4a-4392-8170-6a5b4c3d2e1f", -- payment-gateway
        "5c4b3a29-1807-46f5-a4d3-c2b1a0918273", -- ticket-sync
    },
}

-- The data set of examples/promote-many.lua: action i's id, and a sim state of n such actions
-- whose staging holds what that playbook promotes (names prefixed with `prefix`).
function M.many_action_id(i) return ("%08x-0000-4000-8000-%012x"):format(i, i) end

function M.many_actions_state(n, prefix)
    local actions = {}
    for i = 1, n do
        actions[i] = { id = M.many_action_id(i), name = prefix .. i, environments = {
            staging = { variables = { { name = "RELEASE", value = "2026.11", masked = false },
                                      { name = "SHARD", value = tostring(i % 8), masked = false } } } } }
    end
    return { clients = { { client_id = M.DEMO.client_id, client_secret = M.DEMO.client_secret,
                           scopes = { "integration:actions:read", "integration:actions:write",
                                      "integration:actions:admin" } } },
             actions = actions }
end

return M
