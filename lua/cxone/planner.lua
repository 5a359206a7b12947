--- The planner: reads every target (and baseline) a list of steps needs, once each, with
-- bounded concurrency, and turns each step into a cxone.Plan: what applying it would change,
-- what the target looked like (ETag, before-state) and when it was read. `client:plan_all`
-- and `client:plan` are this module's `plan_all`.
-- Works under Lua 5.1 (LuaJIT), 5.3 and 5.4.
-- @module cxone.planner

local core = require("cxone.core")
local payload = require("cxone.payload")
local validate = require("cxone.validate")
local drift = require("cxone.drift")
local planmod = require("cxone.plan")
local reportmod = require("cxone.report")
local playbook = require("cxone.playbook")
local ledgermod = require("cxone.ledger")

local M = {}

-- 16 hex digits from the OS's CSPRNG (OpenSSL RAND_bytes): distinct across forked processes.
-- Never a guessed fallback: two processes must not share a run id (builds' keys derive from it).
local function new_run_id()
    local u = assert(core.uuid())
    return (u:gsub("%-", ""):sub(1, 16))
end
M.new_run_id = new_run_id

-- the client's fingerprint function (cxone.client owns it; required late, it requires us)
local function fingerprint(c, action, env, name, value)
    return require("cxone.client").fingerprint(c, action, env, name, value)
end

local function index_by_name(list)
    local by = {}
    for _, v in ipairs(list or {}) do
        if type(v) == "table" and v.name then by[v.name] = v end
    end
    return by
end

local function names_of(list)
    local out = {}
    for i, v in ipairs(list or {}) do out[i] = v.name end
    return out
end

-- Builds the plan of a checked step from what was read: the target's answer and meta, and the
-- baseline's answer (or nil).
local function make_plan(self, step, tier, base, target, meta, bvars)
    -- `{ masked = true, keep = true }` entries (cxone export): must exist masked, never written
    local keeps, rest = {}, {}
    for _, e in ipairs(payload.entries(step.variables, tier.id)) do
        if type(e) == "table" and e.keep == true then keeps[#keeps + 1] = e else rest[#rest + 1] = e end
    end
    local pl = payload.build(step.action, tier.id, #keeps > 0 and rest or step.variables)
    local ok, violations = validate.check(pl, { tiers = self.tiers, existing = names_of(target.variables) })
    if not ok then return nil, tostring(violations), "invalid" end

    local current = index_by_name(target.variables)
    local missing = {}
    for _, e in ipairs(keeps) do
        local cur = current[e.name]
        if not (cur and cur.masked == true) then missing[#missing + 1] = tostring(e.name) end
    end
    if #missing > 0 then
        return nil, ("%s must exist as masked variable(s) on %s (keep = true keeps a current value; "
            .. "there is none to keep): give a value instead"):format(table.concat(missing, ", "), tier.id), "invalid"
    end
    local known = ledgermod.for_client(self):get(step.action, tier.id)
    if not (known and meta.etag ~= nil and known.etag == meta.etag and type(known.fp) == "table") then known = nil end
    local fingerprints, items, send, before = {}, {}, {}, {}
    local counts = { add = 0, change = 0, set = 0, unchanged = 0 }
    local default_desc = "Scoped override for " .. tier.id
    for _, v in ipairs(pl.variables) do
        local cur = current[v.name]
        local kind
        if v.masked then
            fingerprints[v.name] = fingerprint(self, step.action, tier.id, v.name, v.value)
        end
        if not cur then
            kind = "add"
        elseif (cur.masked == true) ~= (v.masked == true) then
            kind = "change"
        elseif v.masked then
            -- the API never shows a masked value: unchanged only if our ledger proves it
            if known and fingerprints[v.name] and known.fp[v.name] == fingerprints[v.name] then
                kind = "unchanged"
            else
                kind = "set"
            end
        elseif cur.value == v.value then
            kind = "unchanged"
        else
            kind = "change"
        end
        -- a description the playbook sets is planned like a value
        local desc = cur and v.description ~= default_desc and cur.description ~= v.description
        if desc and kind == "unchanged" then kind = "change" end
        counts[kind] = counts[kind] + 1
        items[#items + 1] = {
            name = v.name, kind = kind, masked = v.masked == true,
            old = cur and (cur.masked and "***" or cur.value) or nil,
            old_masked = cur and cur.masked == true or nil,
            new = v.masked and "***" or v.value,
            fp = fingerprints[v.name],
            description = desc and v.description or nil, old_description = desc and cur.description or nil,
        }
        if kind ~= "unchanged" then
            local e = {}
            for k, x in pairs(v) do e[k] = x end
            -- keep the description already there unless the playbook gives one
            if cur and e.description == default_desc and cur.description then e.description = cur.description end
            send[#send + 1] = e
            before[v.name] = cur and { present = true, masked = cur.masked == true,
                                       value = (not cur.masked) and cur.value or nil }
                or { present = false }
        end
    end

    for _, e in ipairs(keeps) do
        counts.unchanged = counts.unchanged + 1
        items[#items + 1] = { name = e.name, kind = "unchanged", masked = true, old = "***", old_masked = true,
                              new = "***", keep = true }
    end

    local report
    if base then
        local r, derr, dcode = drift.compare(bvars.variables, target.variables,
            { baseline = base.name, target = tier.name, action = step.action })
        if not r then return nil, derr, dcode end
        report = r
    end
    local entry = ledgermod.for_client(self):get(step.action, tier.id)
    local owed = tier.build and entry and entry.build or nil
    return planmod.new({
        action = step.action, tier = tier, baseline = base,
        etag = meta.etag, items = items, counts = counts, fingerprints = fingerprints,
        changes = counts.add + counts.change + counts.set, before = before,
        build_owed = owed,
        drift = report,
        payload = { actionId = step.action, environmentId = tier.id, variables = send },
    })
end

-- Reads every (action, environment) the steps need once, with bounded concurrency.
-- Returns key → batch result ({ok, result, meta, error, code}).
local function read_all(self, pairs_list, concurrency)
    local reqs = {}
    for k, p in ipairs(pairs_list) do reqs[k] = { op = "get", action = p[1], env = p[2] } end
    local out = {}
    if #reqs == 0 then return out end
    local results = self.core:batch(reqs, { concurrency = concurrency })
    for k, p in ipairs(pairs_list) do
        local r = results[k]
        self.histogram:note_meta(r.meta)
        out[p[1] .. "/" .. p[2]] = r
    end
    return out
end

local function read_error(action, env, r)
    return ("GET %s %s: %s"):format(action, env, tostring(r.error)), r.code
end

--- Plans every step (`{ {action=, tier=, baseline=, variables=}, ... }` or
-- `{steps = {...}, concurrency = 8}`): checks the steps, reads each target and baseline once
-- (with bounded concurrency), and returns a cxone.Report whose `plans` are what `apply_all`
-- will write. Any failure leaves `preflight_failed` set and every step's outcome in the report.
-- @treturn cxone.Report
function M.plan_all(self, spec)
    local steps = spec.steps or spec
    local concurrency = spec.concurrency or self.cfg.concurrency or 8
    local progress = type(spec.on_progress) == "function" and spec.on_progress or function() end
    local rep = reportmod.new(new_run_id(), self.dry_run or spec.dry_run == true)
    rep.concurrency = concurrency
    for i, s in ipairs(steps) do
        rep.steps[i] = { index = i, action = type(s) == "table" and s.action or nil,
                         tier = type(s) == "table" and s.tier or nil }
    end
    local errors = {}
    local function fail(i, msg, code)
        rep:set(i, "preflight_failed", { error = msg, code = code })
        errors[#errors + 1] = ("step %d (%s %s): %s"):format(i, tostring(rep.steps[i].action),
            tostring(rep.steps[i].tier), tostring(msg))
    end

    for _, p in ipairs(playbook.problems(steps, self.tiers)) do
        if rep.steps[p.index].status then
            rep.steps[p.index].error = rep.steps[p.index].error .. "; " .. p.message
            errors[#errors] = errors[#errors] .. "; " .. p.message
        else
            fail(p.index, p.message, "invalid")
        end
    end
    local ledger_code
    if #errors == 0 then
        -- the ledger, read afresh (other runs may have written since); unreadable is an error
        local l, lerr = ledgermod.for_client(self, true)
        if not l then
            errors[#errors + 1] = tostring(lerr)
            ledger_code = "io"
        end
    end
    if #errors == 0 then
        -- what to read: each target and baseline once
        local need, seen, resolved = {}, {}, {}
        local function want(action, env)
            local k = action .. "/" .. env
            if not seen[k] then seen[k] = true; need[#need + 1] = { action, env } end
        end
        for i, s in ipairs(steps) do
            local t = self.tiers:resolve(s.tier)
            local b = s.baseline ~= nil and self.tiers:resolve(s.baseline) or nil
            resolved[i] = { t, b }
            want(s.action, t.id)
            if b then want(s.action, b.id) end
        end
        local read_at = core.monotonic() -- before the reads: a plan's age errs on the old side
        local got = read_all(self, need, concurrency)
        for i, s in ipairs(steps) do
            self.counts.plans = self.counts.plans + 1
            local t, b = resolved[i][1], resolved[i][2]
            local tr = got[s.action .. "/" .. t.id]
            local br = b and got[s.action .. "/" .. b.id]
            if not tr.ok then
                fail(i, read_error(s.action, t.id, tr))
            elseif br and not br.ok then
                fail(i, read_error(s.action, b.id, br))
            else
                local p, err, code = make_plan(self, s, t, b, tr.result, tr.meta, br and br.result)
                if p then
                    p.read_at = read_at
                    rep.plans[i] = p
                    local e = rep.steps[i]
                    e.environment, e.tier, e.changes, e.variables = p.tier.id, p.tier.name, p.changes, p:names()
                    e.build_owed = p.build_owed and true or nil
                else
                    fail(i, err, code)
                end
            end
            progress("planned", i, #steps)
        end
        -- tier policy (a profile's promoted_from, tiers without a tenant)
        for _, pr in ipairs(require("cxone.policy").problems(self, rep)) do
            fail(pr.index, pr.message, "policy")
            ledger_code = ledger_code or "policy"
        end
    end
    if #errors > 0 then
        rep.ok = false
        rep.preflight_failed = true
        rep.code = ledger_code or "invalid"
        rep.message = "preflight failed, nothing written:\n  " .. table.concat(errors, "\n  ")
        for i = 1, #rep.steps do
            if not rep.steps[i].status then rep:set(i, "not_attempted") end
        end
        self.counts.not_attempted = self.counts.not_attempted + rep.counts.not_attempted
        return rep
    end
    for i, p in pairs(rep.plans) do
        if not p:pending() then
            rep:set(i, "unchanged")
            self.counts.unchanged = self.counts.unchanged + 1
        else
            rep:set(i, "planned")
        end
    end
    rep.ok = true
    return rep
end


return M
