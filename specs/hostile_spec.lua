-- Hostile input (issue 9): servers, webhook receivers and caller tables that misbehave on
-- purpose must never corrupt memory, crash the process, or make a secret appear in output.
-- Each case is a regression test of a defect found by fuzzing and by a hostile cxone-sim.
local core = require "cxone.core"
local simlib = require "support.sim"
local D = simlib.DEMO
local A1 = D.actions[1]
local VARS = "/api/v2/integration/actions/*/environments/*/variables"
local sh = simlib.shquote

-- the same answer through the embedded hosts' path (core.engine under cxone.transport.wire)
local function embedded_get(st, body, extra)
    local o = { base_url = "http://127.0.0.1:9", client_id = D.client_id, client_secret = "embedded-secret",
                backoff_base = 0, backoff_cap = 0 }
    for k, v in pairs(extra or {}) do o[k] = v end
    local clock = 0
    local host = { now = function() return clock end, sleep = function(_, sec) clock = clock + sec end,
        request = function(_, req)
            if req.kind == "token" then return 200, {}, '{"access_token":"tok-0123456789","expires_in":3600}' end
            return st, {}, body
        end }
    return assert(require("cxone.transport.wire").new(o, host)):get(A1, "dev")
end

-- The body that crashed `cxone vars` (exit 134) on Lua 5.4.4: 100 "[", a quote, 2000 "\n".
local CRASH_BODY = ("["):rep(100) .. '"' .. ("\\n"):rep(2000)

-- A masked UTF-8 canary: the old scrub ran after non-ASCII was replaced, so it escaped.
local CANARY = "Zürich-canary-\xc3\xbf-pass\tw0rd-7731"

-- Every substring of s of n bytes (to prove no 8-byte piece of a secret is shown).
local function pieces(s, n)
    local out = {}
    for i = 1, #s - n + 1 do out[#out + 1] = s:sub(i, i + n - 1) end
    return out
end

local function assert_no_piece(text, secret, what)
    for _, p in ipairs(pieces(secret, 8)) do
        assert.is_nil(text:find(p, 1, true), what .. " shows a piece of the secret: " .. p)
    end
end

-- Runs lua/cxone/cli.lua with this build tree's cxone.core (bin/cxone would load the main
-- build/lua5.4 tree): returns exit code, stdout, stderr.
local function cli(args, env)
    local dir = simlib.tmpdir()
    local wrapper = dir .. "/cxone.lua"
    simlib.write_file(wrapper, ([[
package.cpath = %q .. "/?.so;" .. package.cpath
package.path = %q .. "/lua/?.lua;" .. %q .. "/lua/?/init.lua;" .. package.path
os.exit(require("cxone.cli").main(arg))
]]):format(os.getenv("CXONE_BUILD"), simlib.ROOT, simlib.ROOT))
    local parts = { simlib.with_env(env), os.getenv("CXONE_LUA") or "lua5.4", sh(wrapper) }
    for _, a in ipairs(args) do parts[#parts + 1] = sh(a) end
    local cmd = table.concat(parts, " ") .. " </dev/null >" .. sh(dir .. "/out") .. " 2>" .. sh(dir .. "/err")
        .. "; echo $?"
    local code = tonumber((simlib.capture(cmd):match("(%d+)")))
    local out, err = simlib.read_file(dir .. "/out"), simlib.read_file(dir .. "/err")
    os.execute("rm -rf " .. sh(dir))
    return code, out, err
end

describe("hostile input", function()
    local sim, dir
    local function client(extra)
        local opts = { base_url = sim.url, client_id = D.client_id, client_secret = D.client_secret,
                       backoff_base = 0.01, backoff_cap = 0.05, retries = 0 }
        for k, v in pairs(extra or {}) do opts[k] = v end
        return assert(core.client(opts))
    end
    local function masked_payload(value, env)
        return { actionId = A1, environmentId = env or "dev",
                 variables = { { name = "HOSTILE_KEY", value = value, masked = true },
                               { name = "PLAIN", value = "visible", masked = false } } }
    end

    setup(function()
        sim = simlib.start()
        dir = simlib.tmpdir()
    end)
    teardown(function()
        sim:stop()
        os.execute("rm -rf " .. sh(dir))
    end)
    before_each(function() sim:curl("DELETE", "/_sim/faults") end)

    describe("a malformed error body", function()
        it("json_decode fails cleanly inside a long escaped string, at any stack depth", function()
            -- deeper and deeper Lua frames, so that some failure lands where the stack must grow
            local function at_depth(n, ...)
                if n > 0 then return at_depth(n - 1, n, ...) end
                return core.json_decode(CRASH_BODY)
            end
            for depth = 0, 120 do
                local v, msg, code = at_depth(depth)
                assert.is_nil(v)
                assert.equals("format", code)
                assert.matches("unterminated string", msg)
            end
            collectgarbage()
            collectgarbage()
            -- and a complete version of it decodes
            local v = assert(core.json_decode(CRASH_BODY .. '"' .. ("]"):rep(100)))
            for _ = 1, 100 do v = v[1] end
            assert.equals(("\n"):rep(2000), v)
        end)

        it("a 400 with it is an `invalid` failure of the client, not a crash", function()
            local c = client()
            sim:fault{ method = "GET", path = VARS, kind = "status", status = 400, body = CRASH_BODY }
            local r, msg, code = c:get(A1, "dev")
            assert.is_nil(r)
            assert.equals("invalid", code)
            assert.matches("HTTP 400", msg)
        end)

        it("`cxone vars` reports it and exits 1 (it aborted with exit 134)", function()
            sim:fault{ method = "GET", path = VARS, kind = "status", status = 400, body = CRASH_BODY }
            local code, out, err = cli({ "vars", A1, "development" }, simlib.sim_env(sim, dir))
            assert.equals(1, code, err)
            assert.matches("HTTP 400", err)
            assert.equals("", out)
        end)

        it("the same body from a webhook receiver is a failure value", function()
            local c = client()
            sim:fault{ method = "POST", path = "/hooks/ci", kind = "status", status = 400, body = CRASH_BODY }
            local ok, msg, code = c:webhook(sim.url .. "/hooks/ci", { event = "applied" })
            assert.is_nil(ok)
            assert.equals("invalid", code)
            assert.matches("webhook was rejected %(HTTP 400%)", msg)
        end)
    end)

    describe("caller tables with metamethods are read raw, once", function()
        local function proxy(t, calls)
            return setmetatable({}, { __index = function(_, k)
                calls.n = calls.n + 1
                local v = t[k]
                -- a fresh string each time, as a hostile __index would make them
                return type(v) == "string" and (v .. "x"):sub(1, -2) or v
            end })
        end

        it("drift: entries whose fields come from __index are refused, no metamethod runs", function()
            local calls = { n = 0 }
            local base = { proxy({ name = "A", value = "1", masked = false }, calls) }
            local r, msg, code = core.drift(base, { { name = "A", value = "2", masked = false } })
            assert.is_nil(r)
            assert.equals("invalid", code)
            assert.matches("baseline%[1%] has no string name", msg)
            assert.equals(0, calls.n)
        end)

        it("drift: the strings it keeps survive collections while it runs", function()
            local b, t = {}, {}
            for i = 1, 2000 do
                b[i] = { name = ("V%04d"):format(i), value = ("b"):rep(40) .. i, masked = i % 3 == 0 }
                t[i] = { name = ("V%04d"):format(i), value = ("t"):rep(40) .. i, masked = i % 3 == 0 }
            end
            collectgarbage("step")
            local items = assert(core.drift(b, t))
            assert.equals(2000, #items)
            assert.equals("V0001", items[1].variable)
            assert.equals(("b"):rep(40) .. "1", items[1].baseline)
            assert.equals("***", items[3].baseline)
        end)

        it("batch: an entry whose fields come from __index raises, no metamethod runs", function()
            local c = client()
            local calls = { n = 0 }
            local entry = proxy({ op = "get", action = A1, env = "dev" }, calls)
            local ok, err = pcall(c.batch, c, { entry })
            assert.is_false(ok)
            assert.matches("request #1: 'op' must be a string, got nil", err)
            assert.equals(0, calls.n)
        end)

        it("batch: a payload read once; a flipping __index cannot reach the request", function()
            local c = client()
            local calls = { n = 0 }
            local flip = 0
            local payload = setmetatable({ actionId = A1, environmentId = "dev", variables = {} }, {
                __index = function() calls.n = calls.n + 1; flip = flip + 1; return flip end })
            local res = c:batch({ { op = "patch", payload = payload } })
            assert.is_true(res[1].ok, res[1].error)
            assert.equals(0, calls.n)
        end)

        it("client options are read raw", function()
            local calls = { n = 0 }
            local opts = proxy({ client_id = D.client_id, client_secret = D.client_secret,
                                 base_url = sim.url }, calls)
            local c, err, code = core.client(opts)
            assert.is_nil(c)
            assert.equals("config", code)
            assert.matches("client_id", err)
            assert.equals(0, calls.n)
        end)
    end)

    describe("a server that echoes a masked value", function()
        it("the echo (422 quoting the body) shows no piece of a UTF-8 masked value", function()
            local c = client()
            sim:fault{ method = "PATCH", path = VARS, kind = "echo" }
            local r, msg, code = c:patch(masked_payload(CANARY))
            assert.is_nil(r)
            assert.equals("invalid", code)
            assert.matches("HTTP 422", msg)
            assert.matches("[redacted]", msg, 1, true)
            assert.matches("PLAIN", msg, 1, true) -- the rest of the echo is still shown
            assert_no_piece(msg, CANARY, "the message")
        end)

        it("a secret that straddles the 240-byte cut leaves no prefix", function()
            local c = client()
            for _, secret in ipairs{ "ascii-canary-secret-0123456789", CANARY } do
                local body = '{"error":"bad","message":"' .. ("m"):rep(230) .. secret:gsub("\t", "\\t") .. '"}'
                sim:fault{ method = "PATCH", path = VARS, kind = "status", status = 422, body = body }
                local r, msg = c:patch(masked_payload(secret))
                assert.is_nil(r)
                assert.matches(("m"):rep(200), msg)
                assert_no_piece(msg, secret, "the message")
            end
        end)

        it("an echo re-encoded to ASCII JSON (\\u00fc) is scrubbed too", function()
            local c = client()
            for _, hex in ipairs{ "%02x", "%02X" } do
                local ascii = CANARY:gsub("\t", "\\t"):gsub("\xc3([\x80-\xbf])", function(b)
                    return "\\u00" .. hex:format(0xC0 + b:byte() - 0x80)
                end)
                assert.matches("\\u00", ascii, 1, true)
                -- the message holds the escaped text itself (its backslashes escaped in the body)
                local body = '{"message":"rejected: {\\"value\\":\\"' .. ascii:gsub("\\", "\\\\") .. '\\"}"}'
                sim:fault{ method = "PATCH", path = VARS, kind = "status", status = 422, body = body }
                local r, msg = c:patch(masked_payload(CANARY))
                assert.is_nil(r)
                assert.matches("rejected: {\"value\":\"[redacted]\"}", msg, 1, true)
            end
        end)

        it("a server text cut inside a secret leaves no prefix of it", function()
            local c = client()
            local body = '{"message":"value was ' .. CANARY:sub(1, 12) .. '"}'
            sim:fault{ method = "PATCH", path = VARS, kind = "status", status = 422, body = body }
            local r, msg = c:patch(masked_payload(CANARY))
            assert.is_nil(r)
            assert.matches("value was [redacted]", msg, 1, true)
            assert_no_piece(msg, CANARY, "the message")
        end)

        it("the client secret in a 403's required_scope is scrubbed, encoded or not", function()
            local c = client()
            local body = '{"required_scope":"x' .. D.client_secret .. 'y"}'
            sim:fault{ method = "GET", path = VARS, kind = "status", status = 403, body = body }
            local r, msg, code = c:get(A1, "dev")
            assert.is_nil(r)
            assert.equals("scope", code)
            assert.is_nil(msg:find(D.client_secret, 1, true))
            assert.matches("x[redacted]y", msg, 1, true)
        end)

        it("`cxone apply` against an echoing server: stdout, stderr and the audit trail stay clean", function()
            local work = simlib.tmpdir()
            simlib.write_file(work .. "/book.lua", ([[
return { { action = %q, tier = "development",
           variables = { HOSTILE_KEY = { value = env("HOSTILE_SECRET"), masked = true }, PLAIN = "x" } } }
]]):format(A1))
            sim:fault{ method = "PATCH", path = VARS, kind = "echo", count = 5 }
            local env = simlib.sim_env(sim, work)
            env.HOSTILE_SECRET = CANARY
            local code, out, err = cli({ "apply", "--yes", work .. "/book.lua" }, env)
            local audit = simlib.read_file(work .. "/audit.jsonl") or ""
            os.execute("rm -rf " .. sh(work))
            assert.equals(1, code, err)
            assert.matches("HTTP 422", out .. err)
            assert.matches("apply.finished", audit, 1, true)
            for what, text in pairs{ stdout = out, stderr = err, audit = audit } do
                assert_no_piece(text, CANARY, what)
            end
        end)
    end)

    describe("ETags", function()
        local GOOD = '{"actionId":"' .. A1 .. '","environmentId":"dev","variables":[]}'

        it("an ETag over 255 bytes is a `format` failure, never silently dropped", function()
            local c = client()
            sim:fault{ method = "GET", path = VARS, kind = "status", status = 200, body = GOOD,
                       headers = { ETag = '"' .. ("e"):rep(300) .. '"' } }
            local r, msg, code = c:get(A1, "dev")
            assert.is_nil(r)
            assert.equals("format", code)
            assert.matches("ETag", msg)
        end)

        it("a malformed ETag (unquoted, spaces, control characters) is a `format` failure", function()
            local c = client()
            for _, bad in ipairs{ "abc", '"a b"', '"a\1b"', 'W/abc', '"' } do
                sim:fault{ method = "GET", path = VARS, kind = "status", status = 200, body = GOOD,
                           headers = { ETag = bad } }
                local r, _, code = c:get(A1, "dev")
                assert.is_nil(r, bad)
                assert.equals("format", code, bad)
            end
        end)

        it("a 255-byte ETag is kept whole and usable as If-Match", function()
            local c = client()
            local tag = 'W/"' .. ("t"):rep(251) .. '"'
            assert.equals(255, #tag)
            sim:fault{ method = "GET", path = VARS, kind = "status", status = 200, body = GOOD,
                       headers = { ETag = tag } }
            local r, err, meta = c:get(A1, "dev")
            assert.is_table(r, err)
            assert.equals(tag, meta.etag)
            -- the sim's own ETag differs, so the conditional write is refused: it was sent
            local ok, _, code = c:patch({ actionId = A1, environmentId = "dev", variables = {} },
                                        { if_match = tag })
            assert.is_nil(ok)
            assert.equals("conflict", code)
        end)

        it("`cxone apply` writes nothing when the target's ETag is unusable", function()
            local work = simlib.tmpdir()
            simlib.write_file(work .. "/book.lua", ([[
return { { action = %q, tier = "development", variables = { ETAG_TEST = "1" } } }
]]):format(A1))
            local patches = sim:count("PATCH")
            sim:fault{ method = "GET", path = VARS, kind = "status", status = 200, body = GOOD, count = 10,
                       headers = { ETag = '"' .. ("e"):rep(400) .. '"' } }
            local code, out, err = cli({ "apply", "--yes", work .. "/book.lua" }, simlib.sim_env(sim, work))
            os.execute("rm -rf " .. sh(work))
            assert.equals(1, code, out .. err)
            assert.matches("ETag", out .. err)
            assert.equals(patches, sim:count("PATCH"))
        end)
    end)

    it("the debug trace prints no raw control characters", function()
        sim:fault{ method = "POST", path = "/oauth/token", kind = "status", status = 400,
                   body = '{"error":"invalid_client\\u001b[2J"}', headers = { ["X-Evil"] = "a\27[2Jb\7" } }
        local env = simlib.sim_env(sim, dir)
        env.CXONE_DEBUG = "1"
        env.CXONE_CLIENT_ID = "id\27[31mred"
        local code, out, err = cli({ "vars", A1, "development" }, env)
        assert.equals(1, code)
        assert.matches("X-Evil", err, 1, true) -- the header was traced ...
        assert.is_nil(err:find("[%z\1-\8\11-\31\127]"), "raw control character in: " .. err) -- ... cleaned
        assert.is_nil(out:find("\27", 1, true))
    end)

    describe("a rejected write with many variables", function()
        -- the scrubber walks every variable of the payload: a walk that popped one value too
        -- many per unmasked variable overwrote the caller's stack (a crash at 200 variables)
        for _, n in ipairs{ 1, 2, 300, 3000 } do
            it(("keeps the stack whole and the masked value out (%d unmasked)"):format(n), function()
                local c = client()
                local vars = { { name = "SECRET_ONE", value = CANARY, masked = true } }
                for i = 1, n do vars[#vars + 1] = { name = "PLAIN_" .. i, value = "v" .. i, masked = false } end
                local body = core.json_encode({ message = "rejected " .. CANARY, error = "x",
                                                required_scope = "scope " .. CANARY })
                local sentinel = { "kept" }
                for _, st in ipairs{ 422, 403 } do
                    sim:fault{ method = "PATCH", path = VARS, kind = "status", status = st, body = body }
                    local r, msg, code = c:patch({ actionId = A1, environmentId = "dev", variables = vars })
                    assert.is_nil(r)
                    assert.equals(st == 422 and "invalid" or "scope", code)
                    assert_no_piece(msg, CANARY, "message")
                end
                assert.same({ "kept" }, sentinel)
                assert.equals(n + 1, #vars)
            end)
        end
    end)

    describe("2xx answers are read once", function()
        -- the shape check and the decoded table come from the same reading, so a repeated key
        -- cannot pass the check with one value and reach the caller with another
        local function pack(...) return { n = select("#", ...), ... } end
        local OBJ = '{"actionId":"' .. A1 .. '","environmentId":"dev","variables":{"name":"X"}}'
        local DUP_BAD = '{"variables":[],"variables":{"name":"X"}}'
        local DUP_GOOD = '{"variables":{"name":"X"},"variables":[{"name":"K","value":"v","masked":false}]}'

        it("a 'variables' object, or an array repeated as an object, is a format failure", function()
            local c = client()
            for _, body in ipairs{ OBJ, DUP_BAD, '[{"variables":[]}]', '{"x":{"variables":[]}}' } do
                sim:fault{ method = "GET", path = VARS, kind = "status", status = 200, body = body }
                local out = pack(c:get(A1, "dev"))
                assert.same({ n = 3, nil, out[2], "format" }, out, body)
                assert.matches("'variables' array", out[2], 1, true)
                assert.equals(200, c:last_meta().status)
                local wout = pack(embedded_get(200, body))
                assert.same({ n = 3, nil, out[2], "format" }, wout, body) -- the same words
            end
        end)

        it("the last of a repeated key decides, as in the decoded table", function()
            local c = client()
            sim:fault{ method = "GET", path = VARS, kind = "status", status = 200, body = DUP_GOOD }
            local r, err, meta = c:get(A1, "dev")
            assert.is_table(r, err)
            assert.is_nil(err)
            assert.equals("K", r.variables[1].name)
            assert.same(meta, c:last_meta())
            assert.equals("K", assert(embedded_get(200, DUP_GOOD)).variables[1].name)
            sim:fault{ method = "POST", path = "/api/v2/integration/actions/*/build", kind = "status",
                       status = 202, body = '{"buildId":7,"buildId":"b-1"}' }
            assert.equals("b-1", assert(c:build(A1)).buildId)
            sim:fault{ method = "POST", path = "/api/v2/integration/actions/*/build", kind = "status",
                       status = 202, body = '{"buildId":"b-1","buildId":7}' }
            local _, _, code = c:build(A1)
            assert.equals("format", code)
        end)

        it("a bad 2xx answer stops a stop_on_failure batch like any failure", function()
            local c = client()
            assert(c:authenticate())
            sim:fault{ method = "GET", path = VARS, kind = "status", status = 200, body = "not json", count = 1 }
            local reqs = {}
            for i = 1, 6 do reqs[i] = { op = "get", action = A1, env = "dev" } end
            local res = c:batch(reqs, { concurrency = 1, stop_on_failure = true })
            assert.same({ false, "format" }, { res[1].ok, res[1].code })
            assert.equals(200, res[1].meta.status)
            for i = 2, 6 do assert.is_true(res[i].skipped, i) end
        end)
    end)

    it("the libcurl client and the embedded transports say the same for the same answer", function()
        -- one engine (plugin/engine.c) behind cxone.Client and the embedded hosts' driver
        local c = client({ retries = 1 })
        local cases = {
            { 401, "{}" }, { 403, '{"required_scope":"integration:actions:admin"}' }, { 404, "{}" },
            { 412, "{}" }, { 422, '{"message":"","error":"too many variables"}' },
            { 400, '{"message":"bad name"}' }, { 429, "{}" }, { 503, "{}" }, { 302, "{}" },
            { 200, '{"variables":{}}' },
        }
        for _, case in ipairs(cases) do
            local st, body = case[1], case[2]
            sim:fault{ method = "GET", path = VARS, kind = "status", status = st, body = body, count = 2 }
            if st == 401 then -- one refresh and one retry: answer both
                sim:fault{ method = "GET", path = VARS, kind = "status", status = st, body = body, count = 2 }
            end
            local r, msg, code = c:get(A1, "dev")
            local meta = c:last_meta()
            assert.is_nil(r, st)
            local _, wmsg, wcode = embedded_get(st, body, { retries = 1 })
            assert.same({ code, msg }, { wcode, wmsg })
            assert.is_number(meta.attempts)
            sim:curl("DELETE", "/_sim/faults")
        end
    end)

    describe("webhooks", function()
        local wr = dofile(simlib.ROOT .. "/examples/webhook_receiver.lua")

        it("are signed t=<unix>,v1=<HMAC of t.body>, and the example receiver verifies them", function()
            local c = client()
            local t0 = os.time()
            assert.is_true((c:webhook(sim.url .. "/_sim/webhooks/h2a", { event = "applied" }, { secret = "k3y" })))
            local ev = sim:get_json("/_sim/webhooks/h2a").events[1]
            local header = ev.headers["x-cxone-signature"]
            local t, sigs = wr.parse(header)
            assert.is_true(t >= t0 and t <= os.time(), header)
            local body = core.json_encode(ev.body)
            assert.equals(core.hmac_sha256("k3y", t .. "." .. body), sigs[1])
            assert.is_true(wr.verify("k3y", header, body))
        end)

        it("the receiver rejects a replay older than five minutes, a tampered body and a wrong key", function()
            local body = '{"event":"applied"}'
            local function header(t, key, b) return ("t=%d,v1=%s"):format(t, core.hmac_sha256(key, t .. "." .. b)) end
            local now = 1800000000
            assert.is_true(wr.verify("k", header(now - 299, "k", body), body, now))
            local ok, why = wr.verify("k", header(now - 301, "k", body), body, now)
            assert.is_nil(ok)
            assert.matches("too old", why)
            assert.is_nil((wr.verify("k", header(now, "k", body), body .. " ", now)))
            assert.is_nil((wr.verify("k", header(now, "other", body), body, now)))
            assert.is_nil((wr.verify("k", header(now + 301, "k", body), body, now)))
            -- the signed time cannot be moved without breaking the signature
            local h = header(now - 1000, "k", body):gsub("^t=%d+", "t=" .. now)
            assert.is_nil((wr.verify("k", h, body, now)))
            assert.is_nil((wr.verify("k", "sha256=" .. core.hmac_sha256("k", body), body, now)))
        end)

        it("the example receiver runs as a command", function()
            local t = os.time()
            local body = '{"event":"x"}'
            local path = dir .. "/body"
            simlib.write_file(path, body)
            local run = function(hdr)
                return simlib.capture(("LUA_CPATH=%s %s %s k %s < %s"):format(sh(os.getenv("CXONE_BUILD") .. "/?.so;;"),
                    os.getenv("CXONE_LUA") or "lua5.4", sh(simlib.ROOT .. "/examples/webhook_receiver.lua"), sh(hdr), sh(path)))
            end
            assert.equals("ok\n", run(("t=%d,v1=%s"):format(t, core.hmac_sha256("k", t .. "." .. body))))
            assert.matches("too old", run(("t=%d,v1=%s"):format(t - 600, core.hmac_sha256("k", (t - 600) .. "." .. body))))
        end)
    end)

    describe("core dumps", function()
        it("no_core_dumps sets RLIMIT_CORE to 0 for the process", function()
            local lua = os.getenv("CXONE_LUA") or "lua5.4"
            local out = simlib.capture(("LUA_CPATH=%s %s -e %s"):format(sh(os.getenv("CXONE_BUILD") .. "/?.so;;"), lua, sh([[
                local core = require "cxone.core"
                local before = io.open("/proc/self/limits"):read("*a"):match("Max core file size%s+(%S+)")
                assert(core.no_core_dumps())
                local soft, hard = io.open("/proc/self/limits"):read("*a"):match("Max core file size%s+(%S+)%s+(%S+)")
                io.write(before, "|", soft, " ", hard)
            ]])))
            assert.equals("|0 0", out:match("|.*$"))
        end)

        it("a running `cxone` has RLIMIT_CORE 0", function()
            -- the playbook runs inside the cxone process and reports its own limits
            local work = simlib.tmpdir()
            simlib.write_file(work .. "/probe.lua", ([[
local f = io.open("/proc/self/limits")
local line = f:read("*a"):match("Max core file size[^\n]*")
f:close()
local o = io.open(%q, "w")
o:write(line)
o:close()
return {}
]]):format(work .. "/limits"))
            cli({ "plan", work .. "/probe.lua" }, simlib.sim_env(sim, work))
            local line = simlib.read_file(work .. "/limits")
            os.execute("rm -rf " .. sh(work))
            assert.is_string(line)
            assert.matches("^Max core file size%s+0%s+0%s", line)
        end)
    end)

    it("validate never names a forbidden character of a value whose masked is not a boolean", function()
        for _, m in ipairs{ "yes", 1, {} } do
            local ok, v = core.validate({ actionId = A1, environmentId = "dev",
                variables = { { name = "K", value = "pa$$w0rd;secret", masked = m } } })
            assert.is_nil(ok)
            local text = tostring(v)
            assert.matches("variables%[1%]%.masked must be a boolean", text)
            local codes = {}
            for _, x in ipairs(v) do codes[x.code] = true end
            assert.is_true(codes.forbidden_char, text)
            assert.is_nil(codes.secret_too_short, text)
            assert.is_nil(text:find("contains $", 1, true), text)
            assert.is_nil(text:find("contains ;", 1, true), text)
        end
        -- masked = false: not a secret, so the characters are named (the message helps)
        local _, v = core.validate({ actionId = A1, environmentId = "dev",
            variables = { { name = "K", value = "a;b", masked = false } } })
        assert.matches("contains ;", tostring(v), 1, true)
    end)

    -- Under LuaJIT every number is a double and compat.h's range-checked lua_isinteger decides
    -- what is an integer (the unchecked cast was undefined beyond 2^63); Lua 5.3/5.4 have
    -- 64-bit integers beside their floats.
    it("json_encode writes whole floats beyond 2^53 as floats, and 2^53 exactly", function()
        assert.equals("1.152921504606847e+18", core.json_encode(2 ^ 60))
        assert.equals("-1.152921504606847e+18", core.json_encode(-(2 ^ 60)))
        assert.equals("9.223372036854776e+18", core.json_encode(2 ^ 63))
        assert.equals("1e+300", core.json_encode(1e300))
        assert.equals("9007199254740992", core.json_encode(2 ^ 53))
    end)

    if jit then
        it("json_encode under LuaJIT: whole doubles within 2^53 are integers, others floats", function()
            assert.equals("9007199254740991", core.json_encode(2 ^ 53 - 1))
            assert.equals("-9007199254740992", core.json_encode(-(2 ^ 53)))
            assert.equals("3", core.json_encode(3.0))
            assert.equals("0.5", core.json_encode(0.5))
        end)
    else
        it("json_encode under Lua 5.3+: integers are exact beyond 2^53", function()
            assert.equals("1152921504606846976", core.json_encode(math.tointeger(2 ^ 60)))
            assert.equals("9007199254740993", core.json_encode(math.tointeger(2 ^ 53) + 1))
            assert.equals("-9223372036854775808", core.json_encode(math.mininteger))
        end)
    end
end)

describe("an emptied audit trail (issue 21: fail closed)", function()
    local dir
    before_each(function() dir = simlib.tmpdir() end)
    after_each(function() os.execute("rm -rf " .. sh(dir)) end)

    it("an empty trail verified with a key fails and says why; without a key it holds no records", function()
        local path = dir .. "/audit.jsonl"
        simlib.write_file(path, "")
        local ok, msg, code = core.audit_verify(path, { key = "audit-key-1" })
        assert.is_nil(ok)
        assert.equals("tampered", code)
        assert.matches("holds no records: a keyed trail must hold at least its first record", msg, 1, true)
        local r = core.audit_verify(path, { key = "audit-key-1", report = true })
        assert.is_false(r.ok)
        -- unkeyed, an empty file is only "no records" (it detects accidents, not an attacker)
        r = assert(core.audit_verify(path))
        assert.equals(0, r.records)
        local ccode, out, err = cli({ "audit", "verify", path }, { CXONE_AUDIT_KEY = "audit-key-1" })
        assert.equals(1, ccode)
        assert.matches("BROKEN", err, 1, true)
        assert.matches("holds no records", err, 1, true)
        assert.is_nil(out:find("intact", 1, true))
    end)

    it("a keyed trail with its first record verifies, and emptying it afterwards is caught", function()
        local path = dir .. "/audit.jsonl"
        local a = assert(core.audit_open(path, { key = "audit-key-1" }))
        assert(a:append({ event = "apply.started", run_id = "r1", status = "started" }))
        a:close()
        local r = assert(core.audit_verify(path, { key = "audit-key-1" }))
        assert.equals(1, r.records)
        simlib.write_file(path, "")
        assert.is_nil((core.audit_verify(path, { key = "audit-key-1" })))
    end)
end)

describe("a server that echoes part of a secret, or bends the format (issue 21)", function()
    local sim
    setup(function() sim = simlib.start() end)
    teardown(function() sim:stop() end)
    before_each(function() assert.equals(200, (sim:post_json("/_sim/reset", {}))) end)

    -- the middle of the canary, 12 bytes, in several encodings a server might echo it in
    local MIDDLE = CANARY:sub(5, 16)
    local function json_ascii(s)
        return (s:gsub("[\128-\255][\128-\191]*", function(ch)
            local cp = ch:byte(1) % 32 * 64 + (ch:byte(2) or 0) % 64
            return ("\\u%04x"):format(cp)
        end):gsub("\t", "\\t"))
    end
    local function url(s)
        return (s:gsub("[^%w%-%._~]", function(ch) return ("%%%02X"):format(ch:byte()) end))
    end

    it("a piece of a masked value in an error never reaches stderr, --json or the audit trail", function()
        for _, echo in ipairs{ MIDDLE, json_ascii(MIDDLE), url(MIDDLE) } do
            local work = simlib.tmpdir()
            simlib.write_file(work .. "/book.lua", ([[
return { { action = %q, tier = "development",
           variables = { HOSTILE_KEY = { value = env("HOSTILE_SECRET"), masked = true } } } }
]]):format(A1))
            sim:fault{ method = "PATCH", path = VARS, kind = "status", status = 400,
                       body = '{"message":"value rejected near \'' .. echo .. '\' (check it)"}' }
            local env = simlib.sim_env(sim, work)
            env.HOSTILE_SECRET = CANARY
            local code, out, err = cli({ "apply", "--yes", "--json", work .. "/book.lua" }, env)
            local audit = simlib.read_file(work .. "/audit.jsonl") or ""
            os.execute("rm -rf " .. sh(work))
            assert.equals(1, code, err)
            assert.matches("value rejected near", out, 1, true) -- the rest of the message is shown
            assert.matches("[redacted]", out, 1, true)
            assert.matches("apply.finished", audit, 1, true)
            for what, text in pairs{ stdout = out, stderr = err, audit = audit } do
                assert_no_piece(text, CANARY, what)
                assert.is_nil(text:find(echo, 1, true), what .. " shows the echo " .. echo)
            end
        end
    end)

    it("`masked` that is not a JSON boolean makes the answer a format failure", function()
        local c = assert(core.client{ base_url = sim.url, client_id = D.client_id, client_secret = D.client_secret })
        for _, m in ipairs{ "0", "1", '"false"', '"true"', "null", "{}" } do
            sim:fault{ method = "GET", path = VARS, kind = "status", status = 200,
                       body = '{"actionId":"' .. A1 .. '","environmentId":"dev","variables":'
                           .. '[{"name":"K","value":"v","masked":' .. m .. '}]}' }
            local r, msg, code = c:get(A1, "dev")
            assert.is_nil(r, m)
            assert.equals("format", code, m)
            assert.matches("masked", msg, 1, true)
        end
        -- a boolean is fine, and so is a variable without `masked`
        sim:fault{ method = "GET", path = VARS, kind = "status", status = 200,
                   body = '{"actionId":"' .. A1 .. '","environmentId":"dev","variables":[{"name":"K","value":"v"}]}' }
        assert.is_table((c:get(A1, "dev")))
        sim:fault{ method = "GET", path = VARS, kind = "status", status = 200,
                   body = '{"actionId":"' .. A1 .. '","environmentId":"dev","variables":'
                       .. '[{"name":"K","value":"v","masked":false}]}' }
        assert.is_table((c:get(A1, "dev")))
    end)
end)
