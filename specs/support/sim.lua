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

return M
