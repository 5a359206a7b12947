--- The applier: writes exactly the plans of a report, as a transaction an operator can trust.
--
-- - Waves: the k-th pending step of every action together, so one action's tiers go in order;
--   when interruptible, each wave goes in chunks of at most `concurrency` steps (the writes in
--   flight at once), so that after a signal no write is left queued to start.
-- - Write-ahead: nothing is written unless the trail accepted `apply.started`; before a chunk's
--   PATCHes start, one `apply.intent` record per write (action, environment, variable names,
--   never values) is appended and made durable in one flush, and the builds those writes will
--   owe are journalled in the ledger. A write whose intent cannot be recorded is not made.
-- - Conditional: each PATCH carries If-Match on the planned ETag; without ETags the target is
--   re-read first, unless the plan's own read is younger than `max_read_age` seconds (and the
--   plan neither came from a file nor waited at a prompt).
-- - Reconciled: a write whose answer was lost is settled by reading the target again.
-- - Interruptible: with `signals`, SIGINT/SIGTERM stop new writes (those in flight finish and
--   are recorded) and the run ends with `apply.interrupted`; a second signal exits at once,
--   appending a prepared `apply.interrupted` that counts the writes in flight as unknown.
-- Works under Lua 5.1 (LuaJIT), 5.3 and 5.4.
-- @module cxone.applier

local core = require("cxone.core")
local reportmod = require("cxone.report")
local ledgermod = require("cxone.ledger")
local events = require("cxone.events")
local policy = require("cxone.policy")

local M = {}

M.MAX_READ_AGE = 60 -- seconds a plan's own read of a target without ETags stands for a re-read

-- failures after which a write may have landed (or did, and a retry then saw 412): re-read
local RECONCILE = { conflict = true, network = true, server = true, format = true, timeout = true }
-- failures after which a write may have landed even when re-reading could not settle it
local MAYBE_LANDED = { network = true, server = true, format = true, timeout = true }

local function ledger(c) return assert(ledgermod.for_client(c)) end

-- The names a plan writes, computed once per step.
local function names(rep, i)
    rep.names = rep.names or {}
    local n = rep.names[i]
    if not n then
        n = rep.plans[i]:names()
        rep.names[i] = n
    end
    return n
end

local function build_key(run_id, plan)
    return ("cxone-%s-%s-%s"):format(run_id, plan.action, plan.tier.id)
end

local function read_error(action, env, r)
    return ("GET %s %s: %s"):format(action, env, tostring(r.error)), r.code
end

local function conflict_msg(plan, why)
    why = tostring(why)
    -- the transport's own message may already name the code ("conflict (HTTP 412): ...")
    local code = why:sub(1, 8) == "conflict" and "" or "conflict: "
    return ("%s %s: %s%s"):format(plan.action, plan.tier.id, code, why)
end

-- Interruption state: armed signals, polled between requests.
local Stop = {}
Stop.__index = Stop

local function new_stop(c, signals)
    local st = setmetatable({ c = c, count = 0 }, Stop)
    if type(signals) == "table" and #signals > 0 then
        local ok = core.signal_arm(signals, { restart = true, ignore = { "XFSZ" }, note = "\ncxone: interrupted: "
            .. "no new write starts; the writes in flight finish and are recorded (interrupt again to stop at once)\n" })
        st.armed = ok == true
    end
    return st
end

--- True once a signal arrived (its name in st.signal, its number in st.signo).
function Stop:poll()
    if not self.armed then return false end
    local n, name, signo = core.signal_poll()
    if n > 0 then
        self.count, self.signal, self.signo = n, name, signo
        return true
    end
    return false
end

function Stop:restore()
    if self.armed then core.signal_restore() end
    self.armed = false
end

-- Runs one op over several steps through core batch: i → batch result. While it runs, a second
-- signal appends `words` (an apply.interrupted counting these steps as unknown) and exits.
-- `kind`: "write" (none starts once a signal has arrived: each result `skipped`), "settle"
-- (reads settling writes whose outcome is open) or "read" (before any write of these steps).
local function batch(c, rep, idx, make, opts, st, kind)
    local reqs = {}
    for k, i in ipairs(idx) do reqs[k] = make(rep.plans[i], i) end
    local out = {}
    if #reqs == 0 then return out end
    local writes = kind == "write"
    if st and st.armed and st.words then
        local unknown = kind == "read" and 0 or #idx
        events.last_words(c, st.words(unknown), ("\ncxone: interrupted again: stopped at once; the outcome of "
            .. "%d write(s) is unknown (the audit trail's apply.intent records name them)\n"):format(unknown))
        -- a signal that came after the last look (while intents were recorded): no write starts
        if writes and st:poll() then
            events.last_words(c, nil)
            for _, i in ipairs(idx) do out[i] = { ok = false, skipped = true } end
            return out
        end
    end
    local results = c.core:batch(reqs, opts)
    if st and st.armed then events.last_words(c, nil) end
    for k, i in ipairs(idx) do
        c.histogram:note_meta(results[k].meta)
        out[i] = results[k]
    end
    return out
end

-- Decides what a failed write means by reading the target again: applied (it holds exactly
-- what the step wrote, observably), a conflict, or the original failure.
local function reconcile(c, rep, failed, outs, concurrency, st)
    local reads = batch(c, rep, failed, function(p)
        return { op = "get", action = p.action, env = p.tier.id }
    end, { concurrency = concurrency }, st, "settle")
    for _, i in ipairs(failed) do
        local p, r, first = rep.plans[i], reads[i], outs[i]
        if not r.ok then
            first.maybe_landed = true
            first.error = ("%s (re-reading the target to check failed too: %s)"):format(
                tostring(first.error), tostring(r.error))
        else
            local holds, visible = p:compare_written(r.result.variables)
            if holds and visible then
                outs[i] = { ok = true, meta = r.meta, reconciled = true }
            elseif holds and not (p.etag and r.meta.etag == p.etag) then
                first.maybe_landed = true
                first.code = "conflict"
                first.error = conflict_msg(p, "the write's answer was lost and its outcome cannot be "
                    .. "confirmed (masked values cannot be read back); re-run to plan again")
            elseif first.code == "conflict" then
                first.error = conflict_msg(p, tostring(first.error))
            end
        end
    end
end

-- True when a plan's read of a target without ETags must be repeated before writing.
local function stale(rep, p, max_age, now)
    if p.etag ~= nil then return false end
    if rep.prompted or p.read_at == nil then return true end
    return now - p.read_at >= max_age
end

-- The write-ahead intents of a chunk: one apply.intent record per write, one flush for all,
-- and the builds these writes will owe journalled in the ledger. True, or nil and why.
local function record_intents(c, rep, idx, keys)
    local l, owes = ledger(c), false
    for _, i in ipairs(idx) do
        local p = rep.plans[i]
        local head, err = events.audit(c, { event = "apply.intent", run_id = rep.run_id, action_id = p.action,
            environment = p.tier.id, tier = p.tier.name, variables = names(rep, i), changes = p.changes,
            status = "intent", tenant = policy.tenant(c, p.tier.id) })
        if not head then return nil, "the audit trail does not accept the intent record: " .. tostring(err) end
        if head ~= "" then rep.head = head end
        if p.tier.build and not p.build_owed then
            l:note_build_owed(p.action, p.tier.id, keys[i], rep.run_id)
            owes = true
        end
    end
    local ok, err = events.sync(c)
    if not ok then return nil, "the audit trail cannot make the intent records durable: " .. tostring(err) end
    if owes then ok, err = l:flush() end -- (with the outcomes noted so far: one append)
    if not ok then return nil, "the masked-value ledger cannot journal the builds these writes owe: " .. tostring(err) end
    return true
end

-- Writes one chunk of a wave (at most one step per action): outcomes i → out (see record).
local function write_chunk(c, rep, chunk, ctx)
    local concurrency, st = ctx.concurrency, ctx.stop
    local outs, writes, keys = {}, {}, {}
    for _, i in ipairs(chunk) do
        local p = rep.plans[i]
        keys[i] = p.build_owed and p.build_owed.key or build_key(rep.run_id, p)
        if p.changes > 0 then writes[#writes + 1] = i else outs[i] = { ok = true } end
    end
    -- servers without ETags: re-read just before writing (unless the plan's read is fresh)
    local blind, now = {}, core.monotonic()
    for _, i in ipairs(writes) do
        if stale(rep, rep.plans[i], ctx.max_read_age, now) then blind[#blind + 1] = i end
    end
    local unconditional = false
    for _, i in ipairs(writes) do if rep.plans[i].etag == nil then unconditional = true end end
    if unconditional then
        events.warn(c, "the server sends no ETag, so writes cannot be conditional: each target is compared "
            .. "with the plan just before writing, re-read unless the plan's own read is younger than "
            .. ctx.max_read_age .. " s (a change made in the moment between that read and the write is not detected)")
    end
    if #blind > 0 then
        local reads = batch(c, rep, blind, function(p)
            return { op = "get", action = p.action, env = p.tier.id }
        end, { concurrency = concurrency }, st, "read")
        for _, i in ipairs(blind) do
            local p, r = rep.plans[i], reads[i]
            if not r.ok then
                local msg = read_error(p.action, p.tier.id, r)
                outs[i] = { ok = false, error = msg, code = r.code, meta = r.meta }
            elseif r.meta and r.meta.etag then
                outs[i] = { ok = false, code = "conflict", meta = r.meta, error = conflict_msg(p,
                    "the target now sends an ETag it did not send when planned; plan again") }
            elseif not p:unchanged_since(r.result.variables) then
                outs[i] = { ok = false, code = "conflict", meta = r.meta, error = conflict_msg(p,
                    "the target changed since the plan was made (re-read before writing; the server "
                    .. "sends no ETag); nothing written, plan again") }
            end
        end
    end
    local todo = {}
    for _, i in ipairs(writes) do if not outs[i] then todo[#todo + 1] = i end end
    if #todo > 0 and st:poll() then
        for _, i in ipairs(todo) do outs[i] = { skipped = true, interrupted = true } end
        todo = {}
    end
    if #todo > 0 then
        local ok, err = record_intents(c, rep, todo, keys)
        if not ok then
            rep.audit_error = rep.audit_error or err
            for _, i in ipairs(todo) do outs[i] = { skipped = true, intent_failed = true } end
            todo = {}
        end
    end
    -- the writes, each conditional on its plan; after a lost answer or 412, re-read
    while #todo > 0 do
        local res = batch(c, rep, todo, function(p)
            return { op = p.method == "put" and "put" or "patch", action = p.action, env = p.tier.id,
                     payload = p.payload, if_match = p.etag }
        end, { concurrency = concurrency, stop_on_failure = true }, st, "write")
        local failed, skipped = {}, {}
        for _, i in ipairs(todo) do
            local r = res[i]
            if r.ok then
                outs[i] = { ok = true, meta = r.meta }
            elseif r.skipped then
                skipped[#skipped + 1] = i
            else
                outs[i] = { ok = false, error = r.error, code = r.code, meta = r.meta }
                if RECONCILE[r.code] then failed[#failed + 1] = i end
                if MAYBE_LANDED[r.code] then outs[i].maybe_landed = true end
            end
        end
        if #failed > 0 then reconcile(c, rep, failed, outs, concurrency, st) end
        local any_failed = false
        for _, i in ipairs(todo) do
            if outs[i] and not outs[i].ok then any_failed = true end
        end
        if any_failed or (#skipped > 0 and st:poll()) then
            for _, i in ipairs(skipped) do outs[i] = { skipped = true, interrupted = not any_failed } end
            todo = {}
        else
            todo = skipped -- the failure that stopped them turned out to be an applied write
        end
    end
    -- builds: for written steps whose tier builds, and builds an earlier run owes
    local builds = {}
    for _, i in ipairs(chunk) do
        local p, o = rep.plans[i], outs[i]
        if o.ok and ((p.tier.build and p.changes > 0) or p.build_owed) then builds[#builds + 1] = i end
    end
    if #builds > 0 and st:poll() then
        for _, i in ipairs(builds) do
            local o = outs[i]
            o.build_key, o.build_code = keys[i], "interrupted"
            o.build_error = "interrupted before its build was requested: the ledger keeps it owed, "
                .. "the next run queues it"
        end
        builds = {}
    end
    local bres = batch(c, rep, builds, function(p, i)
        return { op = "build", action = p.action, env = p.tier.id, idempotency_key = keys[i] }
    end, { concurrency = concurrency }, st, "write")
    for _, i in ipairs(builds) do
        local b, o = bres[i], outs[i]
        o.build_key = keys[i]
        if b.skipped then
            o.build_code = "interrupted"
            o.build_error = "interrupted before its build was requested: the ledger keeps it owed, "
                .. "the next run queues it"
        elseif b.ok and type(b.result) == "table" and type(b.result.buildId) == "string" then
            o.build_id = b.result.buildId
            c.counts.builds = c.counts.builds + 1
            if rep.plans[i].build_owed then ctx.owed_queued = ctx.owed_queued + 1 end
        else
            o.build_code = b.ok and "format" or b.code
            o.build_error = ("build failed (%s): %s"):format(tostring(o.build_code),
                b.ok and "the answer names no buildId" or tostring(b.error))
        end
    end
    return outs, keys
end

-- Records the outcome of one step: the audit record (failures too), the ledger, the webhook.
-- `out` is {ok, error, code, meta, reconciled, build_id, build_error, build_code, build_key,
-- maybe_landed}.
local function record(c, rep, i, out, keys)
    local plan = rep.plans[i]
    local list = names(rep, i)
    local status = out.ok and (out.build_error and "build_failed" or "success") or "failure"
    local _, aerr = events.audit_run(c, rep, {
        event = "apply", run_id = rep.run_id, action_id = plan.action, environment = plan.tier.id,
        tier = plan.tier.name, variables = list,
        drift_count = plan.drift and plan.drift:count() or nil, changes = plan.changes,
        latency_ms = out.meta and out.meta.latency_ms or nil,
        attempts = out.meta and out.meta.attempts or nil,
        status = status, error = out.error and tostring(out.error) or nil, code = out.code,
        build_id = out.build_id, build_code = out.build_code,
        build_status = out.build_id and "queued" or (out.build_error and "failed") or nil,
        etag = out.meta and out.meta.etag or nil, reconciled = out.reconciled or nil,
        tenant = policy.tenant(c, plan.tier.id), revert_of = rep.revert_of,
    })
    local l = ledger(c)
    if out.ok and plan.changes > 0 then
        require("cxone.revert").note(c, rep, plan, out) -- the before-state a revert needs (ledger not yet updated)
    end
    local known = l:get(plan.action, plan.tier.id)
    -- a write with no masked value, to a target the ledger vouches for nothing on, outside a
    -- profile's policy (which needs proof of plain values too): nothing to record
    if out.ok and plan.changes > 0 and (c.policy or next(plan.fingerprints or {}) ~= nil
                                         or (known and next(known.fp or {}) ~= nil)) then
        local clear, fp = {}, plan.fingerprints
        for _, e in ipairs(plan.payload.variables) do
            if not e.masked then clear[#clear + 1] = e.name end
        end
        if c.policy then -- a profile's promoted_from needs proof of plain values written too
            fp = {}
            for k, v in pairs(plan.fingerprints or {}) do fp[k] = v end
            for _, e in ipairs(plan.payload.variables) do
                if not e.masked then
                    fp[policy.plain_key(e.name)] = require("cxone.client").fingerprint(c, plan.action, plan.tier.id,
                        e.name, e.value)
                end
            end
        end
        l:note_write(plan.action, plan.tier.id, { prev = plan.etag, etag = out.meta and out.meta.etag,
                                                  run = rep.run_id, fp = fp, clear = clear })
    end
    if out.build_error then
        l:note_build_owed(plan.action, plan.tier.id, out.build_key, rep.run_id)
    elseif out.build_id then
        l:note_build_done(plan.action, plan.tier.id)
    elseif not out.ok and not out.maybe_landed then
        -- the write did not land: the build its intent journalled is not owed
        local e = l:get(plan.action, plan.tier.id)
        if e and e.build and e.build.run == rep.run_id then l:note_build_done(plan.action, plan.tier.id) end
    end
    local werr = events.webhook(c, {
        event = out.ok and not out.build_error and "cxone.apply.succeeded" or "cxone.apply.failed",
        run_id = rep.run_id, action_id = plan.action, environment = plan.tier.id, tier = plan.tier.name,
        variables = list, changes = plan.changes, build_id = out.build_id,
        code = out.code or out.build_code, audit_head = rep.head,
    })
    local fields = { changes = plan.changes, variables = list, build_id = out.build_id,
        build_error = out.build_error, etag = out.meta and out.meta.etag or nil,
        error = out.error or out.build_error, code = out.code or out.build_code,
        reconciled = out.reconciled, audit_error = aerr, webhook_error = werr }
    if out.ok and not out.build_error then
        c.counts.applied = c.counts.applied + 1
        if out.reconciled then c.counts.reconciled = c.counts.reconciled + 1 end
        return rep:set(i, "applied", fields)
    end
    c.counts.failed = c.counts.failed + 1
    if out.code == "conflict" then c.counts.conflicts = c.counts.conflicts + 1 end
    return rep:set(i, "failed", fields)
end

-- A step that was not attempted; a write whose intent was recorded owes no build after all.
local function not_attempted(c, rep, i, code)
    local p = rep.plans[i]
    if p and p.tier.build and not p.build_owed then
        local e = ledger(c):get(p.action, p.tier.id)
        if e and e.build and e.build.run == rep.run_id then ledger(c):note_build_done(p.action, p.tier.id) end
    end
    c.counts.not_attempted = c.counts.not_attempted + 1
    return rep:set(i, "not_attempted", { code = code or "not_attempted" })
end

-- The write-ahead record: before anything is written, the ledger must be writable and the
-- trail must accept a record naming the run, its steps and the variables (never values).
local function begin_run(c, rep, pend)
    local l, lerr = ledgermod.for_client(c)
    local lok = l and true
    if l then lok, lerr = l:attach() end
    if not lok then return nil, "the masked-value ledger cannot be written: " .. tostring(lerr) end
    local list, seen = {}, {}
    for _, i in ipairs(pend) do
        for _, n in ipairs(names(rep, i)) do
            if not seen[n] then seen[n] = true; list[#list + 1] = n end
        end
    end
    table.sort(list)
    local head, err = events.audit(c, { event = "apply.started", run_id = rep.run_id, steps = #pend,
                                        variables = list, status = "started", plan = rep.plan_digest,
                                        override_freeze = rep.override_freeze, revert_of = rep.revert_of })
    if not head then return nil, "the audit trail does not accept records: " .. tostring(err) end
    if head ~= "" then rep.head = head end
    return true
end

-- The apply.interrupted record as of now; `unknown` steps in flight.
local function interrupted_record(rep, pend, st, unknown)
    local c = rep.counts
    local na = #pend - c.applied - c.failed - unknown
    return { event = "apply.interrupted", run_id = rep.run_id, signal = st.signal, steps = #pend,
        applied = c.applied, failed = c.failed, not_attempted = na, unknown = unknown,
        status = "interrupted", code = "interrupted",
        message = unknown > 0
            and ("interrupted twice: stopped at once with %d write(s) in flight, outcome unknown"):format(unknown)
            or "interrupted: the writes in flight finished and are recorded; no new write was started" }
end

local function end_run(c, rep, pend, st)
    local cnt = rep.counts
    if rep.interrupted then
        events.audit_run(c, rep, interrupted_record(rep, pend, st, 0))
    else
        events.audit_run(c, rep, { event = "apply.finished", run_id = rep.run_id, applied = cnt.applied,
            failed = cnt.failed, steps = #rep.steps,
            status = (cnt.failed == 0 and cnt.not_attempted == 0) and "success" or "failure" })
    end
    local l = ledger(c)
    local ok, lerr = l:flush()
    if ok and l.appended then ok, lerr = l:compact() end -- (a run that recorded nothing leaves it)
    if not ok then rep.ledger_error = lerr end
    local rok, rerr = require("cxone.revert").save(c, rep)
    if not rok then events.warn(c, tostring(rerr) .. ": this run cannot be reverted with cxone revert") end
end

--- Applies exactly the plans of a report (see `cxone.client`'s `apply_all`).
-- opts: concurrency, on_progress(phase, done, total, info), signals ({"INT", "TERM"}: stop
-- cleanly on them), max_read_age (seconds).
function M.apply_all(c, rep, opts)
    opts = opts or {}
    if rep.preflight_failed then return rep end
    local concurrency = opts.concurrency or rep.concurrency or c.cfg.concurrency or 8
    local max_age = opts.max_read_age or c.cfg.max_read_age or M.MAX_READ_AGE
    local progress = events.progress(opts.on_progress)
    local pend = rep:pending()
    if #pend == 0 then rep.ok = true; return rep end
    if c.dry_run or rep.dry_run then return rep end
    rep.applied = true

    -- tier policy (a profile): freeze windows, and promoted_from again (a saved plan skips the planner)
    local perr, pcode = policy.freeze(c, rep, pend, opts.override_freeze), "frozen"
    if not perr then
        local probs = policy.problems(c, rep)
        if #probs > 0 then
            local msgs = {}
            for k, pr in ipairs(probs) do msgs[k] = ("step %d: %s"):format(pr.index, pr.message) end
            perr, pcode = "nothing written: " .. table.concat(msgs, "; "), "policy"
        end
    end
    if perr then
        rep.ok, rep.code, rep.message = false, pcode, perr
        for _, i in ipairs(pend) do rep:set(i, "not_attempted", { code = "not_attempted" }) end
        c.counts.not_attempted = c.counts.not_attempted + #pend
        return rep
    end

    local st = new_stop(c, opts.signals) -- before the first record: a full file fails, never kills
    local ok, err = begin_run(c, rep, pend)
    if not ok then
        st:restore()
        rep.ok, rep.code = false, "audit"
        rep.message = "nothing written: " .. tostring(err)
        for _, i in ipairs(pend) do rep:set(i, "not_attempted", { code = "not_attempted" }) end
        c.counts.not_attempted = c.counts.not_attempted + #pend
        return rep
    end

    st.words = function(unknown) return interrupted_record(rep, pend, st, unknown) end
    local ctx = { concurrency = concurrency, max_read_age = max_age, stop = st, owed_queued = 0 }
    local run = function()
        -- waves: the k-th pending step of every action together, so one action's tiers go in order
        local waves, seen = {}, {}
        for _, i in ipairs(pend) do
            local a = rep.plans[i].action
            seen[a] = (seen[a] or 0) + 1
            waves[seen[a]] = waves[seen[a]] or {}
            table.insert(waves[seen[a]], i)
        end
        local stopped, done = false, 0
        for _, wave in ipairs(waves) do
            -- chunks of `concurrency` steps when interruptible (a signal must find no write queued
            -- behind those in flight), else the whole wave at once (one flush of its intents)
            local size = st.armed and concurrency or #wave
            for from = 1, #wave, size do
                local chunk = {}
                for k = from, math.min(from + size - 1, #wave) do chunk[#chunk + 1] = wave[k] end
                if not stopped and st:poll() then stopped = true end
                if stopped then
                    for _, i in ipairs(chunk) do
                        not_attempted(c, rep, i, st.signal and "interrupted" or nil)
                        done = done + 1
                        progress("step", done, #pend, rep.steps[i])
                    end
                else
                    local outs, keys = write_chunk(c, rep, chunk, ctx)
                    for _, i in ipairs(chunk) do
                        local o, e = outs[i], nil
                        if o.skipped then
                            e = not_attempted(c, rep, i, o.interrupted and "interrupted" or nil)
                        else
                            e = record(c, rep, i, o, keys)
                            if e.status ~= "applied" then stopped = true end
                        end
                        done = done + 1
                        progress("step", done, #pend, e)
                    end
                    if rep.audit_error then stopped = true end
                    if st:poll() then stopped = true end
                end
            end
            local lok, lerr = ledger(c):flush()
            if not lok then rep.ledger_error = lerr end
            progress("written", done, #pend)
        end
    end
    local rok, rerr = pcall(run)
    if st.count > 0 then
        rep.interrupted = { signal = st.signal, signo = st.signo }
    end
    if not rok then
        st:restore()
        error(rerr, 0)
    end
    end_run(c, rep, pend, st)
    st:restore()
    if ctx.owed_queued > 0 then
        events.warn(c, ("queued %d build(s) an earlier run owed (its writes landed, their builds did not)")
            :format(ctx.owed_queued))
    end

    local cnt = rep.counts
    rep.ok = cnt.failed == 0 and cnt.not_attempted == 0 and not rep.audit_error and not rep.ledger_error
        and not rep.interrupted
    if rep.interrupted then
        rep.code = "interrupted"
        rep.message = ("interrupted (SIG%s): %d applied, %d failed, %d not attempted; no new write was "
            .. "started after the signal, and the trail records apply.interrupted. Re-run to finish.")
            :format(tostring(rep.interrupted.signal), cnt.applied, cnt.failed, cnt.not_attempted)
        if rep.audit_error then
            rep.message = rep.message .. " (the audit trail stopped accepting records: "
                .. tostring(rep.audit_error) .. ")"
        end
    elseif rep.audit_error then
        rep.code = "audit"
        rep.message = "the audit trail stopped accepting records (" .. tostring(rep.audit_error)
            .. "): no new writes were started; the trail lacks the outcome of the steps above"
    elseif cnt.failed > 0 or cnt.not_attempted > 0 then
        rep.message = "promotion incomplete: re-run to finish the remaining steps"
        for _, e in ipairs(rep.steps) do
            if e.status == "failed" then
                rep.code = e.code
                rep.message = ("step %d (%s %s) failed: %s\n%s"):format(e.index, tostring(e.action),
                    tostring(e.tier), tostring(e.error), rep.message)
                break
            end
        end
    elseif rep.ledger_error then
        rep.code = "io"
        rep.message = "applied, but the masked-value ledger could not be saved (" .. tostring(rep.ledger_error)
            .. "): the next run re-sends masked values and may not know of an owed build"
    end
    return rep
end

M.new_report = reportmod.new

return M
