-- Apply as a transaction the operator can trust: saved plans, exactly-what-was-shown interactive
-- apply, conditional writes with and without ETags, reconciliation of lost answers, builds as
-- part of the step, write-ahead audit, playbook checks at load, and the masked-value ledger
-- (locking, temp files, full disk). Everything runs against cxone-sim through the real CLI.
-- Lua 5.1-compatible (the spec also runs under LuaJIT and 5.3; the CLI is always lua5.4).
local json = require("cjson.safe")
local simlib = require("support.sim")
local D = simlib.DEMO
local A1, A2, A3 = D.actions[1], D.actions[2], D.actions[3]
local q = simlib.shquote
local read_file, write_file = simlib.read_file, simlib.write_file
local cxone, capture = simlib.cxone, simlib.capture
local env_vars, book, audit_records = simlib.env_vars, simlib.book, simlib.audit_records

local CANARY = "canary-masked-value-7f3a9c"

-- A foreign writer: a PATCH through curl (not our client).
local function foreign_patch(sim, action, env, name, value)
    assert.equals(200, sim:foreign_patch(action, env, { { name = name, value = value, masked = false } }))
end

describe("apply as a transaction", function()
    local sim, dir, env
    simlib.suite({ clean = "files", env = "each" }, function(s) sim, dir, env = s.sim, s.dir, s.env end)

    describe("saved plans", function()
        local PB
        before_each(function()
            PB = dir .. "/book.lua"
            env.CX_SAVED_TOKEN = CANARY -- a saved plan reads masked values from env() (planfile_spec)
            write_file(PB, book({
                "{ action = '" .. A1 .. "', tier = 'staging', variables = { SAVED_FLAG = 'on', "
                    .. "API_TOKEN = { value = env('CX_SAVED_TOKEN'), masked = true } } }",
                ("{ action = %q, tier = 'production', variables = { SAVED_FLAG = 'on' } }"):format(A1),
            }))
        end)

        it("hold no secret and apply exactly, without asking", function()
            local code, out, err = cxone({ "plan", "--out", dir .. "/plan.json", PB }, env)
            assert.equals(2, code, err)
            local text = assert(read_file(dir .. "/plan.json"))
            assert.falsy(text:find(CANARY, 1, true))
            assert.falsy(out:find(CANARY, 1, true))
            local doc = assert(json.decode(text))
            assert.equals("cxone-plan/2", doc.format)
            assert.equals(2, #doc.steps)
            assert.is_string(doc.steps[1].etag)
            assert.is_table(doc.steps[1].before)
            local patches = sim:count("PATCH")
            code, out, err = cxone({ "apply", dir .. "/plan.json" }, env) -- no --yes, no terminal
            assert.equals(0, code, err)
            assert.equals(patches + 2, sim:count("PATCH"))
            local st = sim:state()
            assert.equals(CANARY, env_vars(st, A1, "staging").API_TOKEN.value)
            assert.equals("on", env_vars(st, A1, "prod").SAVED_FLAG.value)
            assert.falsy((out .. err):find(CANARY, 1, true))
        end)

        it("a foreign write after the plan is refused before any write; the foreign value is kept", function()
            assert.equals(2, (cxone({ "plan", "--out", dir .. "/plan.json", PB }, env)))
            foreign_patch(sim, A1, "prod", "SAVED_FLAG", "foreign")
            local patches = sim:count("PATCH")
            local code, _, err = cxone({ "apply", dir .. "/plan.json" }, env)
            assert.equals(1, code)
            assert.matches("changed since the plan was made", err, 1, true)
            assert.equals("foreign", env_vars(sim:state(), A1, "prod").SAVED_FLAG.value)
            assert.equals(patches, sim:count("PATCH"))
            assert.equals(0, #audit_records(dir .. "/audit.jsonl"))
        end)

        it("refuse when the masked value in the environment changed, and when the plan file was edited", function()
            assert.equals(2, (cxone({ "plan", "--out", dir .. "/plan.json", PB }, env)))
            local patches = sim:count("PATCH")
            env.CX_SAVED_TOKEN = CANARY .. "-rotated"
            local code, _, err = cxone({ "apply", dir .. "/plan.json" }, env)
            assert.equals(1, code)
            assert.matches("masked value of API_TOKEN (from CX_SAVED_TOKEN) no longer matches", err, 1, true)
            assert.falsy(err:find(CANARY, 1, true))
            env.CX_SAVED_TOKEN = CANARY
            local text = read_file(dir .. "/plan.json")
            write_file(dir .. "/plan.json", (text:gsub('"new":"on"', '"new":"off"', 1)))
            code, _, err = cxone({ "apply", dir .. "/plan.json" }, env)
            assert.equals(1, code)
            assert.matches("modified", err, 1, true)
            assert.equals(patches, sim:count("PATCH"))
        end)
    end)

    describe("interactive apply writes exactly what it showed", function()
        local function pty_apply(pb, hook)
            return simlib.cxone_pty({ "apply", pb }, env, { expect = "Type 'yes'", hook = hook, send = "yes\\n" })
        end
        local function curl_patch_cmd(action, envid, name, value)
            local tokcmd = "curl -s -d grant_type=client_credentials -d client_id=" .. D.client_id
                .. " -d client_secret=" .. D.client_secret .. " " .. q(sim.url .. "/oauth/token")
            local body = json.encode({ actionId = action, environmentId = envid,
                variables = { { name = name, value = value, masked = false } } })
            return "T=$(" .. tokcmd .. " | sed 's/.*\"access_token\":\"\\([^\"]*\\)\".*/\\1/'); "
                .. "curl -s -o /dev/null -X PATCH -H \"Authorization: Bearer $T\" -H 'Content-Type: application/json' --data "
                .. q(body) .. " " .. q(sim.url .. "/api/v2/integration/actions/" .. action .. "/environments/" .. envid .. "/variables")
        end

        it("a 3-step apply reads each target once and writes each once", function()
            local pb = dir .. "/three.lua"
            write_file(pb, book({
                ("{ action = %q, tier = 'development', variables = { PTY_FLAG = 'a' } }"):format(A1),
                ("{ action = %q, tier = 'staging', baseline = 'development', variables = { PTY_FLAG = 'a' } }"):format(A1),
                ("{ action = %q, tier = 'production', baseline = 'staging', variables = { PTY_FLAG = 'a' } }"):format(A1),
            }))
            local gets, patches = sim:count("GET"), sim:count("PATCH")
            local code, out = pty_apply(pb)
            assert.equals(0, code, out)
            assert.equals(3, sim:count("GET") - gets)
            assert.equals(3, sim:count("PATCH") - patches)
        end)

        it("a write made while the prompt is open is a conflict, and is kept", function()
            local pb = dir .. "/one.lua"
            write_file(pb, book({ ("{ action = %q, tier = 'production', variables = { LOG_LEVEL = 'warn' } }"):format(A1) }))
            local code, out = pty_apply(pb, curl_patch_cmd(A1, "prod", "LOG_LEVEL", "error"))
            assert.equals(1, code, out)
            assert.matches("conflict", out, 1, true)
            assert.equals("error", env_vars(sim:state(), A1, "prod").LOG_LEVEL.value)
        end)

        it("the same against a server that sends no ETag", function()
            assert.equals(200, (sim:post_json("/_sim/config", { etag = false })))
            local pb = dir .. "/one.lua"
            write_file(pb, book({ ("{ action = %q, tier = 'production', variables = { LOG_LEVEL = 'warn' } }"):format(A1) }))
            local code, out = pty_apply(pb, curl_patch_cmd(A1, "prod", "LOG_LEVEL", "error"))
            assert.equals(1, code, out)
            assert.matches("conflict", out, 1, true)
            assert.matches("no ETag", out, 1, true)
            assert.equals("error", env_vars(sim:state(), A1, "prod").LOG_LEVEL.value)
            -- without a foreign write it applies, after one re-read per step
            local patches = sim:count("PATCH")
            code, out = pty_apply(pb)
            assert.equals(0, code, out)
            assert.equals(patches + 1, sim:count("PATCH"))
            assert.equals("warn", env_vars(sim:state(), A1, "prod").LOG_LEVEL.value)
        end)
    end)

    describe("reconciliation and builds", function()
        it("a PATCH that landed but whose answer was lost is applied, and its build queued once", function()
            local pb = dir .. "/lost.lua"
            write_file(pb, book({ ("{ action = %q, tier = 'staging', variables = { LOST_FLAG = 'x' } }"):format(A2) }))
            sim:fault{ method = "PATCH", kind = "lost_answer", count = 1 }
            local builds = sim:stats().builds_queued
            local code, out, err = cxone({ "apply", "--yes", pb }, env)
            assert.equals(0, code, err)
            assert.matches("confirmed by re-reading", out, 1, true)
            assert.equals("x", env_vars(sim:state(), A2, "staging").LOST_FLAG.value)
            assert.equals(builds + 1, sim:stats().builds_queued)
            local rec
            for _, r in ipairs(audit_records(dir .. "/audit.jsonl")) do if r.event == "apply" then rec = r end end
            assert.equals("success", rec.status)
            assert.is_true(rec.reconciled)
            -- the re-run has nothing to do and queues nothing
            code = cxone({ "apply", "--yes", pb }, env)
            assert.equals(0, code)
            assert.equals(builds + 1, sim:stats().builds_queued)
        end)

        it("a failed build fails the step; the re-run queues the build it owes", function()
            local pb = dir .. "/build.lua"
            write_file(pb, book({ ("{ action = %q, tier = 'development', variables = { BUILD_FLAG = 'y' } }"):format(A3) }))
            sim:fault{ method = "POST", path = "/api/v2/integration/actions/*/build", kind = "status", status = 503, count = 20 }
            local builds = sim:stats().builds_queued
            local code, out, err = cxone({ "apply", "--yes", pb }, env)
            assert.equals(1, code, out)
            assert.matches("build failed", out .. err, 1, true)
            assert.equals("y", env_vars(sim:state(), A3, "dev").BUILD_FLAG.value)
            assert.equals(builds, sim:stats().builds_queued)
            local rec
            for _, r in ipairs(audit_records(dir .. "/audit.jsonl")) do if r.event == "apply" then rec = r end end
            assert.equals("build_failed", rec.status)
            assert.equals("server", rec.build_code)
            assert(sim:curl("DELETE", "/_sim/faults"))
            -- the variables match now, yet the plan owes a build
            code, out = cxone({ "plan", pb }, env)
            assert.equals(2, code, out)
            assert.matches("build an earlier run owes", out, 1, true)
            local patches = sim:count("PATCH")
            code, out, err = cxone({ "apply", "--yes", pb }, env)
            assert.equals(0, code, err)
            assert.equals(builds + 1, sim:stats().builds_queued)
            assert.equals(patches, sim:count("PATCH"))
            assert.equals(0, (cxone({ "plan", pb }, env)))
        end)
    end)

    describe("write-ahead audit", function()
        local pb
        before_each(function()
            pb = dir .. "/wal.lua"
            write_file(pb, book({ ("{ action = %q, tier = 'production', variables = { WAL_FLAG = 'z' } }"):format(A1) }))
        end)

        it("a missing or unwritable audit directory: exit 1 and nothing reaches the server", function()
            local patches = sim:count("PATCH")
            env.CXONE_AUDIT_LOG = dir .. "/missing/dir/audit.jsonl"
            local code, _, err = cxone({ "apply", "--yes", pb }, env)
            assert.equals(1, code)
            assert.matches("nothing written", err, 1, true)
            -- unwritable: a directory where the file should be (modes do not stop root)
            os.execute("mkdir -p " .. q(dir .. "/ro/audit.jsonl"))
            env.CXONE_AUDIT_LOG = dir .. "/ro/audit.jsonl"
            env.CXONE_STATE_FILE = dir .. "/ledger.json"
            code, _, err = cxone({ "apply", "--yes", pb }, env)
            assert.equals(1, code)
            assert.matches("nothing written", err, 1, true)
            assert.equals(patches, sim:count("PATCH"))
            assert.is_nil(env_vars(sim:state(), A1, "prod").WAL_FLAG)
        end)

        it("the trail starts with apply.started, then the write's intent; the summary and webhook carry its head", function()
            env.CXONE_WEBHOOK_URL = sim.url .. "/_sim/webhooks/wal"
            local code, out, err = cxone({ "apply", "--yes", pb }, env)
            assert.equals(0, code, err)
            local recs = audit_records(dir .. "/audit.jsonl")
            assert.equals("apply.started", recs[1].event)
            assert.same({ "WAL_FLAG" }, recs[1].variables)
            -- the intent: action, environment and names, never a value, before the PATCH
            assert.equals("apply.intent", recs[2].event)
            assert.equals(A1, recs[2].action_id)
            assert.equals("prod", recs[2].environment)
            assert.same({ "WAL_FLAG" }, recs[2].variables)
            assert.equals(recs[1].run_id, recs[2].run_id)
            assert.equals("apply", recs[3].event)
            assert.equals("apply.finished", recs[#recs].event)
            assert.matches("Audit trail head: " .. recs[#recs].hash, out, 1, true)
            local ev = sim:get_json("/_sim/webhooks/wal").events
            assert.equals(recs[3].hash, ev[1].body.audit_head)
        end)
    end)

    describe("playbooks that say what they mean", function()
        local cases = {
            { "mixed list and map variables", ("{ action = %q, tier = 'dev', variables = { { name = 'A', value = '1' }, B = '2' } }"):format(A1), "mixes a list" },
            { "an unknown step key", ("{ action = %q, tier = 'dev', varibles = { A = '1' }, variables = {} }"):format(A1), "unknown key varibles" },
            { "masked given as a string", ("{ action = %q, tier = 'dev', variables = { S = { value = %q, masked = 'yes' } } }"):format(A1, CANARY), "masked must be true or false" },
        }
        for _, c in ipairs(cases) do
            it("refuses " .. c[1] .. " at load, naming the step, before any request", function()
                local pb = dir .. "/bad.lua"
                write_file(pb, book({ ("{ action = %q, tier = 'staging', variables = { OK = '1' } }"):format(A2), c[2] }))
                local before = sim:stats().requests
                local code, out, err = cxone({ "plan", pb }, env)
                assert.equals(1, code)
                assert.matches("step 2", err, 1, true)
                assert.matches(c[3], err, 1, true)
                assert.falsy((out .. err):find(CANARY, 1, true))
                assert.equals(before, sim:stats().requests)
            end)
        end
        it("refuses a duplicate (action, tier) pair, tier names and ids alike", function()
            local pb = dir .. "/dup.lua"
            write_file(pb, book({
                ("{ action = %q, tier = 'production', variables = { A = '1' } }"):format(A1),
                ("{ action = %q, tier = 'prod', variables = { A = '2' } }"):format(A1),
            }))
            local before = sim:stats().requests
            local code, _, err = cxone({ "apply", "--yes", pb }, env)
            assert.equals(1, code)
            assert.matches("step 2 .* repeats step 1", err)
            assert.equals(before, sim:stats().requests)
        end)
    end)

    describe("the masked-value ledger", function()
        it("8 concurrent runs lose no fingerprint", function()
            local jobs = {}
            local n = 0
            for _, a in ipairs({ A1, A2, A3 }) do
                for _, t in ipairs({ "development", "staging", "production" }) do
                    n = n + 1
                    if n <= 8 then
                        local pb = ("%s/c%d.lua"):format(dir, n)
                        write_file(pb, book({ ("{ action = %q, tier = %q, variables = { CONC_SECRET = { value = 'conc-secret-%d', masked = true } } }"):format(a, t, n) }))
                        jobs[#jobs + 1] = pb
                    end
                end
            end
            local script = {}
            for i, pb in ipairs(jobs) do
                script[#script + 1] = simlib.with_env(env) .. " " .. simlib.cxone_cmd({ "apply", "--yes", pb })
                    .. " >" .. q(dir .. "/c" .. i .. ".out") .. " 2>&1 </dev/null &"
            end
            script[#script + 1] = "wait"
            os.execute(table.concat(script, "\n"))
            for i, pb in ipairs(jobs) do
                local code, out = cxone({ "plan", pb }, env)
                assert.equals(0, code, "run " .. i .. ": " .. tostring(read_file(dir .. "/c" .. i .. ".out")) .. out)
            end
            local ledger = read_file(dir .. "/audit.jsonl.masked.json")
            assert.falsy(ledger:find("conc-secret", 1, true))
            assert.equals("-rw-------", capture("stat -c %A " .. q(dir .. "/audit.jsonl.masked.json")):match("%S+"))
        end)

        it("never follows a link planted at a temp path", function()
            local pb = dir .. "/link.lua"
            write_file(pb, book({ ("{ action = %q, tier = 'staging', variables = { L_SECRET = { value = 'link-secret-1', masked = true } } }"):format(A1) }))
            write_file(dir .. "/victim", "untouched\n")
            local ledger = dir .. "/audit.jsonl.masked.json"
            os.execute("ln -s " .. q(dir .. "/victim") .. " " .. q(ledger .. ".tmp"))
            assert.equals(0, (cxone({ "apply", "--yes", pb }, env)))
            assert.equals("untouched\n", read_file(dir .. "/victim"))
            -- a lock file planted as a link is refused, not followed
            os.execute("rm -f " .. q(ledger .. ".lock") .. "; ln -s " .. q(dir .. "/victim") .. " " .. q(ledger .. ".lock"))
            write_file(pb, book({ ("{ action = %q, tier = 'staging', variables = { L_SECRET = { value = 'link-secret-2', masked = true } } }"):format(A1) }))
            local patches = sim:count("PATCH")
            local code, _, err = cxone({ "apply", "--yes", pb }, env)
            assert.equals(1, code)
            assert.matches("ledger", err, 1, true)
            assert.equals(patches, sim:count("PATCH"))
            assert.equals("untouched\n", read_file(dir .. "/victim"))
        end)

        it("a full disk is a clear error and loses no fingerprint", function()
            -- a first run records a fingerprint
            local pb1 = dir .. "/full1.lua"
            write_file(pb1, book({ ("{ action = %q, tier = 'production', variables = { F_SECRET = { value = 'full-secret-1', masked = true } } }"):format(A2) }))
            assert.equals(0, (cxone({ "apply", "--yes", pb1 }, env)))
            local ledger = dir .. "/audit.jsonl.masked.json"
            local saved = read_file(ledger)
            -- the ledger is exactly at the file size limit (8 KiB); the audit trail stays below it
            local LIMIT = 8192
            local pad = {}
            for i = 1, 60 do pad[i] = ('{"k":"x/%d","op":"build_done"}'):format(i) end
            local text = saved .. table.concat(pad, "\n") .. "\n"
            text = text .. (" "):rep(LIMIT - #text - 1) .. "\n" -- a blank line, skipped by readers
            write_file(ledger, text)
            local size = #read_file(ledger)
            assert.equals(LIMIT, size)
            local pb2 = dir .. "/full2.lua"
            write_file(pb2, book({ ("{ action = %q, tier = 'production', variables = { G_SECRET = { value = 'full-secret-2', masked = true } } }"):format(A3) }))
            local limit_blocks = ("%d"):format(LIMIT / 512) -- sh's ulimit -f counts 512-byte blocks
            local cmd = "trap '' XFSZ; ulimit -f " .. limit_blocks .. "; " .. simlib.with_env(env) .. " "
                .. simlib.cxone_cmd({ "apply", "--yes", pb2 }) .. " >" .. q(dir .. "/full.out") .. " 2>&1; echo $?"
            local code = tonumber(capture("sh -c " .. q(cmd)):match("(%d+)"))
            local out = read_file(dir .. "/full.out")
            assert.equals(1, code, out)
            assert.matches("ledger", out, 1, true)
            assert.matches("File too large", out, 1, true)
            assert.equals(size, #read_file(ledger)) -- no half record, nothing lost
            -- the first secret still plans as unchanged
            assert.equals(0, (cxone({ "plan", pb1 }, env)))
        end)
    end)
end)
