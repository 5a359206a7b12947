-- The cxone command line (bin/cxone), always run as a child `lua5.4 bin/cxone ...` process:
-- exit codes, --help, --json, refusing to apply without a terminal or --yes, the 100-action
-- playbook against a generated sim state, and scripts/demo.sh end to end.
-- Lua 5.1-compatible (the spec itself also runs under LuaJIT and 5.3).
local json = require("cjson.safe")
local simlib = require("support.sim")
local D = simlib.DEMO
local A1 = D.actions[1]
local q = simlib.shquote

local capture, ROOT = simlib.capture, simlib.ROOT
local read_file, write_file = simlib.read_file, simlib.write_file
local cxone, sim_env = simlib.cxone, simlib.sim_env

local PLAIN_BOOK = ([[
return {
    { action = %q, tier = "development", variables = { CLI_FLAG = "on", LOG_LEVEL = "debug" } },
    { action = %q, tier = "staging", baseline = "development", variables = { CLI_FLAG = "on" } },
}
]]):format(A1, A1)

describe("cxone CLI", function()
    local sim, dir, env
    simlib.suite({ env = "once", files = { ["plain.lua"] = PLAIN_BOOK }, clean = { "audit.jsonl" } },
        function(s) sim, dir, env = s.sim, s.dir, s.env end)

    it("--max-rps paces the client (and is checked: exit 64 when not a positive number)", function()
        local code, _, err = cxone({ "plan", "--max-rps", "0", dir .. "/plain.lua" }, env)
        assert.equals(64, code)
        assert.matches("--max-rps takes a number", err, 1, true)
        local denv = {}
        for k, v in pairs(env) do denv[k] = v end
        denv.CXONE_DEBUG = "1"
        code, _, err = cxone({ "plan", "--max-rps", "4", dir .. "/plain.lua" }, denv)
        assert.equals(2, code) -- changes pending
        -- the engine's trace: requests held by a limit of 4 per second (the flag reached it)
        assert.matches("by the rate limit (4.0 requests/s)", err, 1, true)
        -- CXONE_MAX_RPS too, the lower of the two winning
        denv.CXONE_MAX_RPS = "3"
        code, _, err = cxone({ "plan", "--max-rps", "4", dir .. "/plain.lua" }, denv)
        assert.equals(2, code)
        assert.matches("by the rate limit (3.0 requests/s)", err, 1, true)
    end)

    it("--help works for every command (exit 0, usage on stdout)", function()
        for _, c in ipairs{ "plan", "apply", "validate", "drift", "vars", "audit", "repl", "completion" } do
            local code, out = cxone({ c, "--help" })
            assert.equals(0, code, c)
            assert.matches("usage: cxone " .. c, out, 1, true)
        end
        local code, out = cxone({ "--help" })
        assert.equals(0, code)
        assert.matches("commands:", out, 1, true)
        code, _, err = cxone({ "frobnicate" })
        assert.equals(64, code)
        assert.matches("unknown command 'frobnicate'", err, 1, true)
    end)

    it("options are checked: unknown ones, missing values, --format choices (exit 64)", function()
        local code, _, err = cxone({ "plan", "--bogus", "x.lua" })
        assert.equals(64, code)
        assert.matches("unknown option '--bogus' for plan (it takes --config, --expires, --force, --format, --help, --json, --max-rps, --out) "
            .. "(see cxone plan --help)", err, 1, true)
        code, _, err = cxone({ "audit", "verify", "--head" })
        assert.equals(64, code)
        assert.matches("'--head' requires an argument", err, 1, true)
        code, _, err = cxone({ "drift", "--format", "xml", "a", "b", "c" })
        assert.equals(64, code)
        assert.matches("'text', 'json', 'markdown'", err, 1, true)
    end)

    it("completion bash prints a script bash accepts, completing commands and options", function()
        local code, out = cxone({ "completion", "bash" })
        assert.equals(0, code)
        write_file(dir .. "/complete.bash", out)
        local got = capture("bash -c " .. q("source " .. q(dir .. "/complete.bash")
            .. " && complete -p cxone && COMP_WORDS=(cxone pl) COMP_CWORD=1 && _cxone && echo \"${COMPREPLY[*]}\""
            .. " && COMP_WORDS=(cxone plan --f) COMP_CWORD=2 && _cxone && echo \"${COMPREPLY[*]}\"") .. " 2>&1")
        assert.matches("%-F _cxone cxone", got)
        assert.matches("\nplan\n", got, 1, true)
        assert.matches("--format", got, 1, true)
        for _, shell in ipairs{ "zsh", "fish" } do
            code, out = cxone({ "completion", shell })
            assert.equals(0, code)
            assert.matches("plan", out, 1, true)
        end
    end)

    it("--format markdown: tables for a pull request, masked values as ***", function()
        -- cells escape what would break a table (values here never hold a pipe: validate refuses it)
        local render = require("cxone.render")
        assert.equals("`` a\\|b`c ``", render.md_value("a|b`c"))
        assert.equals("a\\|b c", render.md_text("a|b\nc"))
        local canary = "md-canary-secret-42"
        write_file(dir .. "/md.lua", ([[
return { { action = %q, tier = "staging", variables = { MD_FLAG = "a b", MD_KEY = { value = %q, masked = true } } } }
]]):format(A1, canary))
        local code, out, err = cxone({ "plan", "--format", "markdown", dir .. "/md.lua" }, env)
        assert.equals(2, code, err)
        assert.matches("### cxone plan", out, 1, true)
        assert.matches("| # | Action | Tier | Status | Detail |", out, 1, true)
        assert.matches("| + | `MD_FLAG` | — | ` a b ` |", out, 1, true)
        assert.matches("| + | `MD_KEY` | — | `***` |", out, 1, true)
        assert.falsy((out .. err):find(canary, 1, true))
        code, out = cxone({ "drift", "--format=markdown", A1, "staging", "production" }, env)
        assert.equals(2, code)
        assert.matches("| ~ | `TIMEOUT_MS` | ` 3000 ` | ` 2500 ` | changed |", out, 1, true)
        code, out = cxone({ "apply", "--yes", "--format", "markdown", dir .. "/md.lua" }, env)
        assert.equals(0, code)
        assert.matches("### cxone apply", out, 1, true)
        assert.matches("Audit trail head: `", out, 1, true)
        assert.falsy(out:find(canary, 1, true))
    end)

    it("a missing setting is an error naming the environment variable", function()
        local e = sim_env(sim, dir)
        e.CXONE_BASE_URL = false
        local code, out, err = cxone({ "vars", A1, "dev" }, e)
        assert.equals(1, code)
        assert.equals("", out)
        assert.matches("CXONE_BASE_URL", err, 1, true)
    end)

    it("plan exits 2 with changes pending, apply --yes writes, then plan exits 0", function()
        local before = sim:state()
        local code, out = cxone({ "plan", dir .. "/plain.lua" }, env)
        assert.equals(2, code)
        assert.matches("+ CLI_FLAG", out, 1, true)
        assert.matches("Plan: 1 to add, 0 to change, 0 to set (masked), 1 unchanged.", out, 1, true)
        assert.falsy(out:find("\27[", 1, true))
        assert.same(before, sim:state())
        code, out = cxone({ "apply", "--yes", dir .. "/plain.lua" }, env)
        assert.equals(0, code)
        assert.matches("Promotion: 2 applied, 0 failed, 0 not attempted, 0 unchanged.", out, 1, true)
        code = cxone({ "plan", dir .. "/plain.lua" }, env)
        assert.equals(0, code)
        code, out = cxone({ "audit", "verify", dir .. "/audit.jsonl" }, env)
        assert.equals(0, code)
        assert.matches("audit trail intact: 6 records", out, 1, true) -- started, 2 intents, 2 steps, finished
    end)

    it("apply without a terminal and without --yes refuses and writes nothing", function()
        local before = sim:state()
        local code, out, err = cxone({ "apply", dir .. "/plain.lua" }, env)
        assert.equals(1, code)
        assert.matches("--yes", err, 1, true)
        assert.equals("", out)
        assert.same(before, sim:state())
        assert.is_nil(read_file(dir .. "/audit.jsonl"))
    end)

    it("--json output parses (plan, apply, vars, drift, validate, audit)", function()
        local code, out = cxone({ "plan", "--json", dir .. "/plain.lua" }, env)
        assert.equals(2, code)
        local doc = assert(json.decode(out))
        assert.equals(2, #doc.plans)
        assert.equals(2, doc.counts.planned)
        code, out = cxone({ "apply", "--yes", "--json", dir .. "/plain.lua" }, env)
        assert.equals(0, code)
        doc = assert(json.decode(out))
        assert.is_true(doc.ok)
        assert.equals(2, doc.counts.applied)
        assert.is_string(doc.steps[1].build_id)
        assert.is_number(doc.metrics.successes)
        code, out = cxone({ "vars", "--json", A1, "production" }, env)
        assert.equals(0, code)
        doc = assert(json.decode(out))
        local seen = false
        for _, v in ipairs(doc.variables) do
            if v.name == "CRM_API_KEY" then seen = true; assert.equals("***", v.value) end
        end
        assert.is_true(seen)
        assert.falsy(out:find("prd-crm-key", 1, true))
        code, out = cxone({ "drift", "--json", A1, "staging", "production" }, env)
        assert.equals(2, code)
        doc = assert(json.decode(out))
        assert.is_true(#doc.items >= 3)
        code, out = cxone({ "audit", "verify", "--json", dir .. "/audit.jsonl" }, env)
        assert.equals(0, code)
        assert.is_true(assert(json.decode(out)).ok)
    end)

    it("drift exits 2 with drift, 1 on error (exit 0: see the 100-action test)", function()
        local code, out = cxone({ "drift", A1, "staging", "prod" }, env)
        assert.equals(2, code)
        assert.matches("TIMEOUT_MS", out, 1, true)
        local err
        code, _, err = cxone({ "drift", A1, "staging", "qa" }, env)
        assert.equals(1, code)
        assert.matches("unknown tier", err, 1, true)
        -- the other form: a playbook's steps against their live targets
        code, out = cxone({ "drift", dir .. "/plain.lua" }, env)
        assert.equals(2, code)
        assert.matches("- CLI_FLAG  \"on\" → (absent)", out, 1, true) -- the playbook would add it
    end)

    it("validate lists every violation (exit 1) and accepts a good payload (exit 0)", function()
        write_file(dir .. "/good.json", json.encode({ actionId = A1, environmentId = "prod",
            variables = { { name = "A", value = "1", masked = false } } }))
        write_file(dir .. "/bad.json", '{"actionId":"nope","environmentId":"qa","variables":'
            .. '[{"name":"bad","value":1}]}')
        write_file(dir .. "/broken.json", "{not json")
        local code, out = cxone({ "validate", dir .. "/good.json" }, env)
        assert.equals(0, code)
        assert.matches("valid", out, 1, true)
        code, out = cxone({ "validate", "--json", dir .. "/bad.json" }, env)
        assert.equals(1, code)
        local doc = assert(json.decode(out))
        assert.is_false(doc.valid)
        assert.is_true(#doc.violations >= 4)
        code = cxone({ "validate", dir .. "/broken.json" }, env)
        assert.equals(1, code)
        code = cxone({ "validate", dir .. "/missing.json" }, env)
        assert.equals(1, code)
    end)

    it("audit verify exits 1 on a tampered trail", function()
        assert.equals(0, (cxone({ "apply", "--yes", dir .. "/plain.lua" }, env)))
        local text = read_file(dir .. "/audit.jsonl")
        write_file(dir .. "/tampered.jsonl", (text:gsub("CLI_FLAG", "CLI_FLAX", 1)))
        local code, _, err = cxone({ "audit", "verify", dir .. "/tampered.jsonl" }, env)
        assert.equals(1, code)
        assert.matches("BROKEN", err, 1, true)
    end)

    it("a playbook that fails preflight exits 1 and writes nothing", function()
        write_file(dir .. "/badbook.lua", ("return { { action = %q, tier = 'prod', variables = { x = '1' } } }"):format(A1))
        local before = sim:state()
        local code, _, err = cxone({ "apply", "--yes", dir .. "/badbook.lua" }, env)
        assert.equals(1, code)
        assert.matches("preflight failed", err, 1, true)
        assert.same(before, sim:state())
        write_file(dir .. "/syntax.lua", "return {")
        code, _, err = cxone({ "plan", dir .. "/syntax.lua" }, env)
        assert.equals(1, code)
        assert.matches("cannot load playbook", err, 1, true)
    end)

    describe("examples/promote-many.lua against 100 actions", function()
        local many
        setup(function()
            local actions = {}
            for i = 1, 100 do
                actions[i] = { id = ("%08x-0000-4000-8000-%012x"):format(i, i), name = "many-" .. i,
                    environments = {
                        staging = { variables = { { name = "RELEASE", value = "2026.10", masked = false } } },
                        prod = { variables = { { name = "RELEASE", value = "2026.09", masked = false } } },
                    } }
            end
            local state = { format = "cxone-sim-state/1",
                clients = { { client_id = D.client_id, client_secret = D.client_secret,
                    scopes = { "integration:actions:read", "integration:actions:write", "integration:actions:admin" } } },
                actions = actions }
            write_file(dir .. "/many-state.json", json.encode(state))
            many = simlib.start({ args = { "--state", dir .. "/many-state.json" } })
        end)
        teardown(function() many:stop() end)

        it("applies all 100 in parallel, then finds nothing to change", function()
            local e = sim_env(many, dir)
            e.CXONE_AUDIT_LOG = dir .. "/many-audit.jsonl"
            local book = ROOT .. "/examples/promote-many.lua"
            local code, out, err = cxone({ "apply", "--yes", "--json", book }, e)
            assert.equals(0, code)
            local doc = assert(json.decode(out))
            assert.equals(100, doc.counts.applied)
            -- a run this size reports progress on stderr (one line per phase without a terminal)
            assert.matches("planned 100/100", err, 1, true)
            assert.matches("written 100/100", err, 1, true)
            assert.is_true(doc.metrics.connections > 1) -- in parallel
            local st = many:state()
            local n = 0
            for _, a in ipairs(st.actions) do
                for _, v in ipairs(a.environments.prod.variables) do
                    if v.name == "RELEASE" and v.value == "2026.11" then n = n + 1 end
                end
            end
            assert.equals(100, n)
            code = cxone({ "plan", book }, e)
            assert.equals(0, code)
            -- no masked variables here, so a tier compared with itself has no drift
            local id1 = ("%08x-0000-4000-8000-%012x"):format(1, 1)
            code, out = cxone({ "drift", id1, "staging", "staging" }, e)
            assert.equals(0, code)
            assert.matches("no drift", out, 1, true)
            code = cxone({ "drift", id1, "staging", "production" }, e)
            assert.equals(2, code)
            code, out = cxone({ "audit", "verify", "--json", dir .. "/many-audit.jsonl" }, e)
            assert.equals(0, code)
            assert.equals(202, assert(json.decode(out)).records) -- started, 100 intents, 100 steps, finished
        end)
    end)

    it("scripts/demo.sh runs end to end and exits 0", function()
        local out = capture("cd " .. q(ROOT) .. " && NO_COLOR=1 sh scripts/demo.sh 2>&1; echo \"__RC=$?\"")
        assert.matches("__RC=0", out, 1, true)
        assert.matches("==== 1. PLAN", out, 1, true)
        assert.matches("(cxone plan exited 2)", out, 1, true)
        assert.matches("Promotion: 3 applied, 0 failed, 0 not attempted, 0 unchanged.", out, 1, true)
        assert.matches("CRM_API_KEY          ***  (masked)", out, 1, true)
        assert.matches("builds queued: 2", out, 1, true)
        assert.matches("cxone.apply.succeeded", out, 1, true)
        assert.matches("audit trail intact: 8 records", out, 1, true) -- started, 3 intents, 3 steps, finished
        assert.matches("DONE: demo finished OK", out, 1, true)
        assert.falsy(out:find("demo-crm-key-", 1, true)) -- the secret never shows
    end)
end)
