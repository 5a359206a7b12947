-- The command line's grammar and its errors, run as `lua5.4 bin/cxone ...` against cxone-sim:
-- unknown or extra arguments are usage errors (exit 64 in every command, never 2) naming the
-- argument and suggesting one that exists; `cxone help COMMAND`; local action id checks before any
-- request; `audit verify` of a missing file; JSON documents on failure; errors that say what to
-- do (an unset env() secret, bad credentials once, what a 404 or a TLS failure tried, no
-- "conflict: conflict").
-- Lua 5.1-compatible (the spec runs under LuaJIT and 5.3 too; the CLI is always lua5.4).
local json = require("cjson.safe")
local simlib = require("support.sim")
local D = simlib.DEMO
local A1 = D.actions[1]
local q = simlib.shquote
local cxone, sim_env, write_file = simlib.cxone, simlib.sim_env, simlib.write_file

local VARS = "/api/v2/integration/actions/" .. A1 .. "/environments/staging/variables"

describe("cxone CLI grammar", function()
    local sim, dir, env
    simlib.suite({ env = "once", files = {
        ["book.lua"] = ([[return { { action = %q, tier = "staging", variables = { TIMEOUT_MS = "3100" } } }]]):format(A1),
    } }, function(s) sim, dir, env = s.sim, s.dir, s.env end)

    it("every usage error exits 64 (never 2), naming the argument", function()
        local cases = {
            { { "plan", "-out", "x.lua" }, "unknown option '-out' for plan: did you mean '--out'?" },
            { { "plan", "--ot", "p.json", "x.lua" }, "did you mean '--out'?" },
            { { "apply", "--yse", "x.lua" }, "did you mean '--yes'?" },
            { { "plan", "--yes", "x.lua" }, "unknown option '--yes' for plan (it belongs to cxone apply)" },
            { { "apply", "--out", "p.json", "x.lua" }, "(it belongs to cxone plan)" },
            { { "drift", "--ignroe", "A", A1, "staging", "prod" }, "did you mean '--ignore'?" },
            { { "vars", A1, "prod", "extra" }, "unexpected argument 'extra': cxone vars takes ACTION TIER" },
            { { "validate", "a.json", "b.json" }, "unexpected argument 'b.json'" },
            { { "plan", "a.lua", "b.lua" }, "unexpected argument 'b.lua'" },
            { { "plan" }, "missing argument: cxone plan takes PLAYBOOK.lua" },
            { { "vars", A1 }, "missing argument: cxone vars takes ACTION TIER" },
            { { "drift", A1, "staging" }, "cxone drift takes ACTION BASELINE TARGET, or PLAYBOOK.lua, not 2 arguments" },
            { { "repl", "x" }, "unexpected argument 'x'" },
            { { "plna", "x.lua" }, "unknown command 'plna': did you mean 'plan'?" },
            { { "audit", "verify" }, "missing argument" },
            { { "audit", "check", "f" }, "usage: cxone audit verify" },
            { { "audit", "verify", "--head", "xyz", "f" }, "--head must be a hash of 64 hex digits" },
            { { "drift", "--format", "xml", A1, "staging", "prod" }, "'text', 'json', 'markdown'" },
            { { "help", "frob" }, "no help for unknown command 'frob'" },
            { { "completion", "tcsh" }, "unknown shell 'tcsh': cxone completion takes bash, zsh or fish" },
            { {}, "usage: cxone <command>" },
        }
        for _, c in ipairs(cases) do
            local code, out, err = cxone(c[1], env)
            local what = table.concat(c[1], " ")
            assert.equals(64, code, what)
            assert.equals("", out, what)
            assert.matches(c[2], err, 1, true)
        end
        -- with --json a usage error is a document too
        local code, out = cxone({ "vars", "--json", A1, "prod", "extra" }, env)
        assert.equals(64, code)
        local doc = assert(json.decode(out))
        assert.is_false(doc.ok)
        assert.equals("usage", doc.code)
        assert.matches("'extra'", doc.error, 1, true)
    end)

    it("cxone help COMMAND prints the command's help, as COMMAND --help does", function()
        for _, c in ipairs({ "plan", "apply", "validate", "drift", "vars", "audit", "sim", "repl", "completion", "help" }) do
            local code, out = cxone({ "help", c })
            assert.equals(0, code, c)
            assert.matches("usage: cxone " .. c, out, 1, true)
            if c ~= "sim" and c ~= "help" then
                local code2, out2 = cxone({ c, "--help" })
                assert.equals(0, code2)
                assert.equals(out, out2)
            end
        end
        local code, out = cxone({ "help" })
        assert.equals(0, code)
        assert.matches("commands:", out, 1, true)
        assert.matches("64 usage error", out, 1, true)
        code, out = cxone({ "help", "drift" })
        assert.matches("--expect-differ NAME", out, 1, true)
    end)

    it("a malformed action id is refused before any request, named", function()
        local before = sim:count("GET")
        local code, out, err = cxone({ "vars", "not-a-uuid", "prod" }, env)
        assert.equals(1, code)
        assert.equals("", out)
        assert.matches('action id "not-a-uuid" is not a UUID', err, 1, true)
        code, _, err = cxone({ "drift", A1 .. "0", "staging", "prod" }, env)
        assert.equals(1, code)
        assert.matches('action id "' .. A1 .. '0" is not a UUID', err, 1, true)
        code, out = cxone({ "vars", "--json", "nope", "prod" }, env)
        assert.equals(1, code)
        assert.equals("invalid", assert(json.decode(out)).code)
        write_file(dir .. "/badid.lua", [[return { { action = "crm", tier = "staging", variables = { X = "1" } } }]])
        code, _, err = cxone({ "drift", dir .. "/badid.lua" }, env)
        assert.equals(1, code)
        assert.matches('step 1: action id "crm" is not a UUID', err, 1, true)
        assert.equals(before, sim:count("GET"))
    end)

    it("audit verify of a missing file is an error about the file (exit 1), not BROKEN", function()
        local path = dir .. "/no-such-trail.jsonl"
        local code, out, err = cxone({ "audit", "verify", path }, env)
        assert.equals(1, code)
        assert.equals("", out)
        assert.matches("cannot read audit trail " .. path .. ": No such file or directory", err, 1, true)
        assert.is_nil(err:find("BROKEN", 1, true))
        code, out = cxone({ "audit", "verify", "--json", path }, env)
        assert.equals(1, code)
        local doc = assert(json.decode(out))
        assert.is_false(doc.ok)
        assert.equals("io", doc.code)
    end)

    it("JSON documents on failure: plan preflight, vars, validate violations as {path, code, message}", function()
        write_file(dir .. "/bad.lua", ([[return { { action = %q, tier = "staging", variables = { lower = "1" } } }]]):format(A1))
        local code, out = cxone({ "plan", "--json", dir .. "/bad.lua" }, env)
        assert.equals(1, code)
        local doc = assert(json.decode(out))
        assert.is_false(doc.ok)
        assert.is_true(doc.preflight_failed)
        assert.matches("preflight failed", doc.error, 1, true)
        code, out = cxone({ "plan", "--json", dir .. "/absent.lua" }, env)
        assert.equals(1, code)
        assert.is_false(assert(json.decode(out)).ok)
        code, out = cxone({ "vars", "--json", "0f8e7d6c-5b4a-4392-8170-6a5b4c3d2e10", "prod" }, env)
        assert.equals(1, code)
        doc = assert(json.decode(out))
        assert.is_false(doc.ok)
        assert.equals("not_found", doc.code)
        code, out = cxone({ "vars", "--json", A1, "prod" }, env)
        assert.equals(0, code)
        assert.is_true(assert(json.decode(out)).ok)
        write_file(dir .. "/bad.json", '{"actionId":"nope","environmentId":"qa","variables":[{"name":"bad","value":1}]}')
        code, out = cxone({ "validate", "--json", dir .. "/bad.json" }, env)
        assert.equals(1, code)
        doc = assert(json.decode(out))
        assert.is_false(doc.valid)
        assert.is_true(#doc.violations >= 3)
        for _, v in ipairs(doc.violations) do
            assert.is_string(v.path)
            assert.is_string(v.code)
            assert.is_string(v.message)
        end
        local paths = {}
        for _, v in ipairs(doc.violations) do paths[v.path] = true end
        assert.is_true(paths.actionId)
        write_file(dir .. "/broken.json", "{not json")
        code, out = cxone({ "validate", "--json", dir .. "/broken.json" }, env)
        assert.equals(1, code)
        doc = assert(json.decode(out))
        assert.equals("format", doc.violations[1].code)
        write_file(dir .. "/good.json", json.encode({ actionId = A1, environmentId = "prod",
            variables = { { name = "A", value = "1", masked = false } } }))
        code, out = cxone({ "validate", "--json", dir .. "/good.json" }, env)
        assert.equals(0, code)
        assert.matches('"violations":[]', out, 1, true)
    end)

    it("an unset env() secret names the variable and the step; nothing is read or written", function()
        write_file(dir .. "/secret.lua", ([[
return {
    { action = %q, tier = "staging", variables = { TIMEOUT_MS = "1" } },
    { action = %q, tier = "production", variables = { CRM_API_KEY = { value = env("CXONE_TEST_UNSET_KEY"), masked = true },
                                                      PLAIN = env("CXONE_TEST_UNSET_PLAIN") } },
}
]]):format(A1, A1))
        local e = sim_env(sim, dir)
        e.CXONE_TEST_UNSET_KEY, e.CXONE_TEST_UNSET_PLAIN = false, false
        local before = sim:count("GET")
        local code, _, err = cxone({ "plan", dir .. "/secret.lua" }, e)
        assert.equals(1, code)
        assert.matches("step 2 (" .. A1 .. " production): variables.CRM_API_KEY.value: environment variable "
            .. "CXONE_TEST_UNSET_KEY is not set", err, 1, true)
        assert.matches("variables.PLAIN: environment variable CXONE_TEST_UNSET_PLAIN is not set", err, 1, true)
        assert.equals(before, sim:count("GET"))
        -- used in an expression, it says so rather than "attempt to concatenate"
        write_file(dir .. "/concat.lua", ([[return { { action = %q, tier = "staging", variables = { U = "x" .. env("CXONE_TEST_UNSET_KEY") } } }]]):format(A1))
        code, _, err = cxone({ "plan", dir .. "/concat.lua" }, e)
        assert.equals(1, code)
        assert.matches("concat.lua:1: environment variable CXONE_TEST_UNSET_KEY is not set", err, 1, true)
        -- a default is used when given; a set variable is used
        write_file(dir .. "/default.lua", ([[return { { action = %q, tier = "staging", variables = { TIMEOUT_MS = env("CXONE_TEST_UNSET_KEY", "3000") } } }]]):format(A1))
        code = cxone({ "plan", dir .. "/default.lua" }, e)
        assert.equals(0, code)
    end)

    it("bad credentials are reported once, not once per step", function()
        local e = sim_env(sim, dir)
        e.CXONE_CLIENT_SECRET = "wrong-secret-0000000000"
        local code, out, err = cxone({ "plan", simlib.ROOT .. "/examples/promote.lua" }, e)
        assert.equals(1, code)
        assert.equals("", out)
        local _, n = err:gsub("token request refused", "")
        assert.equals(1, n)
        assert.matches("every step (3): token request refused (HTTP 401", err, 1, true)
        assert.is_nil(err:find("wrong-secret", 1, true))
    end)

    it("a 404 names the URL tried", function()
        local missing = "0f8e7d6c-5b4a-4392-8170-6a5b4c3d2e10"
        local code, _, err = cxone({ "vars", missing, "production" }, env)
        assert.equals(1, code)
        assert.matches("(tried GET " .. sim.url .. "/api/v2/integration/actions/" .. missing
            .. "/environments/prod/variables)", err, 1, true)
        write_file(dir .. "/nf.lua", ([[return { { action = %q, tier = "staging", variables = { X = "1" } } }]]):format(missing))
        code, _, err = cxone({ "plan", dir .. "/nf.lua" }, env)
        assert.equals(1, code)
        assert.matches("(tried GET " .. sim.url .. "/api/v2/integration/actions/" .. missing
            .. "/environments/staging/variables)", err, 1, true)
    end)

    it("a conflict's message names its code once", function()
        sim:fault{ method = "PATCH", path = VARS, kind = "status", status = 412 }
        local code, out, err = cxone({ "apply", "--yes", dir .. "/book.lua" }, env)
        assert.equals(1, code)
        assert.matches("conflict (HTTP 412)", out .. err, 1, true)
        assert.is_nil((out .. err):find("conflict: conflict", 1, true))
    end)
end)

describe("cxone CLI over TLS", function()
    local sim, dir
    setup(function()
        dir = simlib.tmpdir()
        local run = simlib.run
        local ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2"
        -- the server's self-signed certificate, and another CA that did not sign it
        run("openssl req -x509 " .. ec .. " -keyout " .. q(dir .. "/srv.key") .. " -out " .. q(dir .. "/srv.pem")
            .. " -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1")
        run("openssl req -x509 " .. ec .. " -keyout " .. q(dir .. "/other.key") .. " -out " .. q(dir .. "/other.pem")
            .. " -subj '/CN=another CA'")
        sim = simlib.start{ args = { "--tls-cert", dir .. "/srv.pem", "--tls-key", dir .. "/srv.key" } }
    end)
    teardown(function()
        if sim then sim:stop() end
        os.execute("rm -rf " .. q(dir))
    end)

    it("a TLS failure names the CA file it tried", function()
        local e = sim_env(sim, dir)
        e.CXONE_CA_FILE = dir .. "/other.pem"
        local code, _, err = cxone({ "vars", A1, "prod" }, e)
        assert.equals(1, code)
        assert.matches("(tried " .. sim.url .. " with CA file: " .. dir .. "/other.pem (CXONE_CA_FILE))", err, 1, true)
        code, _, err = cxone({ "drift", A1, "staging", "prod" }, e)
        assert.equals(1, code)
        assert.matches("(tried " .. sim.url .. " with CA file: " .. dir .. "/other.pem (CXONE_CA_FILE))", err, 1, true)
        -- and with the right one it works
        e.CXONE_CA_FILE = dir .. "/srv.pem"
        code = cxone({ "vars", A1, "prod" }, e)
        assert.equals(0, code)
    end)
end)
