-- Runs an operator can interrupt, and crashes and full disks that forget nothing: real signals
-- sent to a real `cxone apply` process (SIGINT, SIGTERM, a second SIGINT, Ctrl-C at the prompt
-- on a pseudo-terminal), `kill -9` in the middle of a run, and a trail that hits the file size
-- limit. The sim's PATCHes are slowed by its fault scenarios so that a signal lands mid-run; the
-- spec synchronises on observable events (the audit trail, the CLI's stderr), never on sleeps.
-- Lua 5.1-compatible (the spec also runs under LuaJIT and 5.3; the CLI is always lua5.4).
local simlib = require("support.sim")
local D = simlib.DEMO
local A1, A2, A3 = D.actions[1], D.actions[2], D.actions[3]
local q = simlib.shquote
local tmpdir, read_file, write_file = simlib.tmpdir, simlib.read_file, simlib.write_file
local cxone, sim_env, capture = simlib.cxone, simlib.sim_env, simlib.capture
local wait_for, spawn, env_vars = simlib.wait_for, simlib.spawn, simlib.env_vars

local function audit_records(path) return simlib.audit_records(path, true) end

local function events_of(recs, name)
    local out = {}
    for _, r in ipairs(recs) do if r.event == name then out[#out + 1] = r end end
    return out
end

local function book(steps, concurrency) return simlib.book(steps, concurrency or 1) end

describe("interrupting apply", function()
    local sim, dir, env
    simlib.suite({ clean = "files", env = "each" }, function(s) sim, dir, env = s.sim, s.dir, s.env end)
    before_each(function() env.CXONE_STATE_FILE = dir .. "/ledger.json" end)

    -- four production steps (no builds), one write at a time; the first PATCH is slowed
    local function four_steps(flag)
        local pb = dir .. "/four.lua"
        write_file(pb, book({
            ("{ action = %q, tier = 'production', variables = { %s = 'on' } }"):format(A1, flag),
            ("{ action = %q, tier = 'production', variables = { %s = 'on' } }"):format(A2, flag),
            ("{ action = %q, tier = 'production', variables = { %s = 'on' } }"):format(A3, flag),
            ("{ action = %q, tier = 'development', variables = { %s = 'on' } }"):format(A1, flag),
        }, 1))
        return pb
    end

    -- the first write is in flight: its intent is in the trail and the sim took the armed fault
    local function intents_seen()
        if #events_of(audit_records(dir .. "/audit.jsonl"), "apply.intent") == 0 then return false end
        local f = sim:get_json("/_sim/faults")
        return #(f.faults or f) == 0
    end

    for _, c in ipairs({ { "INT", 130 }, { "TERM", 143 } }) do
        it("SIG" .. c[1] .. ": the write in flight finishes and is recorded, no new write starts, exit " .. c[2], function()
            local pb = four_steps("SIG_" .. c[1])
            sim:fault{ method = "PATCH", kind = "delay", delay_ms = 4000, count = 1 }
            local patches = sim:count("PATCH")
            local p = spawn({ "apply", "--yes", pb }, env)
            wait_for(intents_seen, "the first write in flight")
            p.kill(c[1])
            local code, out, err = p.wait()
            assert.equals(c[2], code, err)
            assert.matches("interrupted", err, 1, true)
            assert.matches("no new write", err, 1, true)
            -- exactly the write in flight landed
            assert.equals(patches + 1, sim:count("PATCH"))
            assert.equals("on", env_vars(sim:state(), A1, "prod")["SIG_" .. c[1]].value)
            assert.is_nil(env_vars(sim:state(), A2, "prod")["SIG_" .. c[1]])
            -- the trail: its intent, its outcome, then apply.interrupted with what landed and what did not
            local recs = audit_records(dir .. "/audit.jsonl")
            assert.equals(1, #events_of(recs, "apply.intent"))
            local steps = events_of(recs, "apply")
            assert.equals(1, #steps)
            assert.equals("success", steps[1].status)
            assert.equals(A1, steps[1].action_id)
            local last = recs[#recs]
            assert.equals("apply.interrupted", last.event)
            assert.equals(c[1], last.signal)
            assert.equals(1, last.applied)
            assert.equals(0, last.failed)
            assert.equals(3, last.not_attempted)
            assert.equals(0, last.unknown)
            assert.equals(0, (cxone({ "audit", "verify", dir .. "/audit.jsonl" }, env)))
            -- a re-run finishes the rest and writes only what is left
            code, out, err = cxone({ "apply", "--yes", pb }, env)
            assert.equals(0, code, err)
            assert.equals(patches + 4, sim:count("PATCH"))
            assert.matches("3 applied", out, 1, true)
        end)
    end

    it("SIGINT while planning: aborted, nothing written, exit 130", function()
        local pb = four_steps("PLANNING")
        sim:fault{ method = "GET", kind = "delay", delay_ms = 4000, count = 1 }
        local patches = sim:count("PATCH")
        local p = spawn({ "apply", "--yes", pb }, env)
        -- the plan's read has reached the sim when it took the armed fault
        wait_for(function()
            local f = sim:get_json("/_sim/faults")
            return #(f.faults or f) == 0
        end, "the plan's first read to reach the sim")
        p.kill("INT")
        local code, _, err = p.wait()
        assert.equals(130, code, err)
        assert.matches("aborted while planning, nothing written", err, 1, true)
        assert.is_nil(err:find("internal error", 1, true), err)
        assert.equals(patches, sim:count("PATCH"))
        assert.equals(0, #events_of(audit_records(dir .. "/audit.jsonl"), "apply.started"))
    end)

    it("Ctrl-C at the confirmation prompt: aborted, nothing written, exit 130", function()
        local pb = four_steps("PROMPT")
        local patches = sim:count("PATCH")
        local code, out = simlib.cxone_pty({ "apply", pb }, env, { expect = "Type 'yes'", send = "\\x03" })
        assert.equals(130, code, out)
        assert.matches("aborted, nothing written", out, 1, true)
        assert.is_nil(out:find("internal error", 1, true), out)
        assert.equals(patches, sim:count("PATCH"))
        assert.equals(0, #events_of(audit_records(dir .. "/audit.jsonl"), "apply.started"))
    end)

    -- (last in this block: the slowed PATCH it leaves in the sim is dropped when the sim stops)
    it("a second SIGINT stops at once: apply.interrupted counts the write in flight as unknown, exit 130", function()
        local pb = four_steps("TWICE")
        sim:fault{ method = "PATCH", kind = "delay", delay_ms = 20000, count = 1 }
        local p = spawn({ "apply", "--yes", pb }, env)
        wait_for(intents_seen, "the first write in flight")
        p.kill("INT")
        -- the first signal is acknowledged on stderr before the second is sent
        wait_for(function() return p.err():find("interrupt again", 1, true) end, "the first interrupt's notice")
        p.kill("INT")
        local code, _, err = p.wait()
        assert.equals(130, code, err)
        assert.matches("stopped at once", err, 1, true)
        local recs = audit_records(dir .. "/audit.jsonl")
        local last = recs[#recs]
        assert.equals("apply.interrupted", last.event)
        assert.equals(1, last.unknown)
        assert.equals(0, last.applied)
        assert.equals(3, last.not_attempted)
        assert.equals(1, #events_of(recs, "apply.intent")) -- names the write that may have landed
        assert.equals(0, #events_of(recs, "apply"))
        -- the record written from the signal handler chains like any other
        local vcode, vout, verr = cxone({ "audit", "verify", dir .. "/audit.jsonl" }, env)
        assert.equals(0, vcode, verr)
        assert.matches("intact", vout, 1, true)
    end)
end)

describe("crashes and full disks", function()
    local sim, dir, env
    local suite = simlib.suite({ clean = "files", env = "each" }, function(s) sim, dir, env = s.sim, s.dir, s.env end)
    before_each(function() env.CXONE_STATE_FILE = dir .. "/ledger.json" end)

    -- Runs `cxone ARGS` with no file allowed to grow past `limit` bytes (ulimit -f), its stdout
    -- and stderr in outfile; returns the exit code and that output.
    local function capped(limit, args, outfile)
        local cmd = "ulimit -f " .. ("%d"):format(limit / 512) .. " && " .. simlib.with_env(env) .. " "
            .. simlib.cxone_cmd(args) .. " >" .. q(outfile) .. " 2>&1; echo $?"
        return tonumber(capture("sh -c " .. q(cmd)):match("(%d+)")), read_file(outfile)
    end

    it("kill -9 mid-write: the trail names the write, and the next run queues the build it owes and says so", function()
        local pb = dir .. "/staging.lua"
        write_file(pb, book({ ("{ action = %q, tier = 'staging', variables = { KILLED_FLAG = 'k' } }"):format(A2) }, 1))
        sim:fault{ method = "PATCH", kind = "delay", delay_ms = 4000, count = 1 }
        local builds, patches = sim:stats().builds_queued, sim:count("PATCH")
        local p = spawn({ "apply", "--yes", pb }, env)
        local recs = audit_records(dir .. "/audit.jsonl")
        wait_for(function()
            recs = audit_records(dir .. "/audit.jsonl")
            return #events_of(recs, "apply.intent") > 0
        end, "the write's intent in the trail")
        -- the PATCH has reached the sim when it took the armed fault (the fault list is empty)
        wait_for(function()
            local faults = sim:get_json("/_sim/faults")
            return #(faults.faults or faults) == 0
        end, "the PATCH to reach the sim")
        p.kill("KILL")
        local code = p.wait()
        assert.equals(137, code)
        -- the trail names the write that may have landed, and still verifies
        recs = audit_records(dir .. "/audit.jsonl")
        local intent = events_of(recs, "apply.intent")[1]
        assert.equals(A2, intent.action_id)
        assert.equals("staging", intent.environment)
        assert.same({ "KILLED_FLAG" }, intent.variables)
        assert.equals(0, #events_of(recs, "apply.finished"))
        assert.equals(0, (cxone({ "audit", "verify", dir .. "/audit.jsonl" }, env)))
        -- the build the write owes was journalled before the write started
        local ledger = read_file(dir .. "/ledger.json")
        assert.matches('"op":"build_owed"', ledger, 1, true)
        assert.matches(intent.run_id, ledger, 1, true)
        -- the next run plans the owed build, queues it once and says so
        local pcode, pout = cxone({ "plan", pb }, env)
        assert.equals(2, pcode, pout)
        assert.matches("build owed", pout, 1, true)
        local acode, aout, aerr = cxone({ "apply", "--yes", pb }, env)
        assert.equals(0, acode, aerr)
        assert.matches("queued 1 build(s) an earlier run owed", aerr, 1, true)
        assert.equals(builds + 1, sim:stats().builds_queued)
        assert.equals("k", env_vars(sim:state(), A2, "staging").KILLED_FLAG.value)
        -- and nothing is owed any more
        assert.equals(0, (cxone({ "plan", pb }, env)))
        assert.is_true(sim:count("PATCH") <= patches + 2, aout) -- the killed run's and at most one more
        -- the killed run's slowed PATCH may still be pending in the sim: a fresh sim for the next test
        suite.restart()
    end)

    it("a trail that fills up before an intent is durable: that write is not made, the run says why", function()
        local steps = {}
        for i, a in ipairs({ A1, A2, A3 }) do
            steps[i] = ("{ action = %q, tier = 'staging', variables = { FULL_FLAG = 'f' } }"):format(a)
        end
        local pb = dir .. "/full.lua"
        write_file(pb, book(steps, 3))
        -- the sizes of apply.started and one intent, from a run of the same playbook elsewhere
        local scratch = tmpdir()
        local senv = sim_env(sim, scratch)
        senv.CXONE_STATE_FILE = scratch .. "/ledger.json"
        assert.equals(0, (cxone({ "apply", "--yes", pb }, senv)))
        local lines = {}
        for line in read_file(scratch .. "/audit.jsonl"):gmatch("[^\n]+\n?") do lines[#lines + 1] = line end
        local started, intent = #lines[1], #lines[2]
        assert.matches('"apply.intent"', lines[2], 1, true)
        os.execute("rm -rf " .. q(scratch))
        assert.equals(200, (sim:post_json("/_sim/reset", {})))
        -- a trail that leaves room for apply.started and one and a half intents under the limit
        local LIMIT = 16384
        local trail = dir .. "/audit.jsonl"
        local a = assert(require("cxone.core").audit_open(trail))
        assert(a:append({ event = "note", message = "padding" }))
        local function size() return #read_file(trail) end
        local want = LIMIT - started - intent - math.floor(intent / 2)
        local overhead = size() - #"padding"
        assert(a:append({ event = "note", message = ("p"):rep(want - size() - overhead) }))
        a:close()
        assert.is_true(math.abs(size() - want) < 8, "padded to " .. size() .. ", wanted " .. want)
        local patches, builds = sim:count("PATCH"), sim:stats().builds_queued
        local code, out = capped(LIMIT, { "apply", "--yes", pb }, dir .. "/full.out")
        assert.equals(1, code, out .. "\ntrail size " .. size() .. ", limit " .. LIMIT)
        assert.matches("intent", out, 1, true)
        assert.matches("File too large", out, 1, true)
        -- no write whose intent was not durable: nothing reached the server
        assert.equals(patches, sim:count("PATCH"))
        assert.equals(builds, sim:stats().builds_queued)
        for _, act in ipairs({ A1, A2, A3 }) do
            assert.is_nil(env_vars(sim:state(), act, "staging").FULL_FLAG)
        end
        -- the trail holds apply.started and at most the intent that fitted
        local recs = audit_records(trail)
        assert.equals(1, #events_of(recs, "apply.started"))
        assert.is_true(#events_of(recs, "apply.intent") <= 1)
        assert.equals(0, #events_of(recs, "apply"))
    end)

    it("a ledger that cannot journal the build a write will owe: that write is not made", function()
        local pb = dir .. "/owe.lua"
        write_file(pb, book({ ("{ action = %q, tier = 'staging', variables = { OWE_FLAG = 'o' } }"):format(A3) }, 1))
        -- the ledger is exactly at the file size limit (blank lines are skipped by readers)
        local LIMIT = 8192
        local ledger = dir .. "/ledger.json"
        write_file(ledger, (" "):rep(LIMIT - 1) .. "\n")
        local patches, builds = sim:count("PATCH"), sim:stats().builds_queued
        local code, out = capped(LIMIT, { "apply", "--yes", pb }, dir .. "/owe.out")
        assert.equals(1, code, out)
        assert.matches("cannot journal the builds", out, 1, true)
        assert.matches("File too large", out, 1, true)
        assert.equals(patches, sim:count("PATCH"))
        assert.equals(builds, sim:stats().builds_queued)
        assert.is_nil(env_vars(sim:state(), A3, "staging").OWE_FLAG)
        assert.equals(LIMIT, #read_file(ledger)) -- no half record
    end)

    it("an unreadable ledger is an error naming its path, never discarded", function()
        local pb = dir .. "/one.lua"
        write_file(pb, book({ ("{ action = %q, tier = 'production', variables = { LEDGER_FLAG = 'x' } }"):format(A1) }, 1))
        local ledger = dir .. "/ledger.json"
        write_file(ledger, '{"k":"a/prod","op":"build_owed","key":"k1"}\nnot a record\n{"k":"a/prod","op":"build_done"}\n')
        local patches = sim:count("PATCH")
        for _, args in ipairs({ { "plan", pb }, { "apply", "--yes", pb } }) do
            local code, _, err = cxone(args, env)
            assert.equals(1, code, err)
            assert.matches(ledger, err, 1, true)
            assert.matches("line 2", err, 1, true)
        end
        assert.equals(patches, sim:count("PATCH"))
        -- the journal is left as it was
        assert.matches("not a record", read_file(ledger), 1, true)
    end)
end)
