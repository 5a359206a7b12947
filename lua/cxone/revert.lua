--- Rolling a run back (`cxone revert RUN_ID|PLAN.json`) and the store of before-states it
-- needs. Each apply that writes keeps, beside the masked-value ledger, one file per run
-- (`<ledger>.run.<RUN_ID>.json`, mode 0600, written atomically): per written step, the
-- variables it wrote, what each looked like before (plain values; for masked ones presence and
-- the keyed fingerprint where the ledger had one) and after (plain values; masked: the
-- fingerprint of what we sent), and the ETags before and after. Never a masked value.
--
-- A revert is an ordinary plan (shown, confirmed or saved, applied with conditional writes and
-- audited with `revert_of`): plain variables go back to their values, masked ones to the value
-- the operator supplies in `CXONE_REVERT_<ENV>_<NAME>` (checked against the recorded
-- fingerprint), variables the run created are removed by a PUT of the whole set (the contract
-- has no DELETE; every masked value of that environment is then needed the same way). A variable
-- changed since the run (a later write) makes the revert refuse, naming it.
-- Works under Lua 5.1 (LuaJIT), 5.3 and 5.4.
-- @module cxone.revert

local core = require("cxone.core")

local M = {}

local FORMAT = "cxone-run/1"

--- The file holding a run's before-states, or nil when the client keeps no ledger.
function M.store_path(c, run_id)
    local base = type(c.cfg.state_file) == "string" and c.cfg.state_file or nil
    if not base then return nil end
    return ("%s.run.%s.json"):format(base, run_id)
end

local function fingerprint(c, action, env, name, value)
    return require("cxone.client").fingerprint(c, action, env, name, value)
end

--- Notes one applied step in the run's record (called by the applier before the ledger is
-- updated, so `entry` is the ledger's view of the target as planned).
function M.note(c, rep, plan, out)
    if type(rep.run_id) ~= "string" then return end
    local l = require("cxone.ledger").for_client(c)
    local entry = l and l:get(plan.action, plan.tier.id)
    -- the ledger vouches for a masked value while the target's ETag is the one it recorded
    local vouch = entry and type(entry.fp) == "table" and (plan.etag == nil or entry.etag == plan.etag) and entry.fp or {}
    local before, after = {}, {}
    for _, e in ipairs(plan.payload.variables) do
        local b = plan.before[e.name] or { present = false }
        local masked_now = e.masked == true
        if not b.present then
            before[e.name] = { present = false }
        elseif b.masked then
            before[e.name] = { present = true, masked = true, fp = vouch[e.name] }
        elseif masked_now or b.value == nil then
            -- a plain value about to become a secret is kept as a fingerprint only
            before[e.name] = { present = true, masked = false,
                fp = b.fp or (b.value and fingerprint(c, plan.action, plan.tier.id, e.name, b.value)) or nil }
        else
            before[e.name] = { present = true, masked = false, value = b.value }
        end
        after[e.name] = masked_now and { masked = true, fp = plan.fingerprints and plan.fingerprints[e.name] }
            or { masked = false, value = e.value }
    end
    rep.run_steps = rep.run_steps or {}
    rep.run_steps[#rep.run_steps + 1] = {
        action = plan.action, environment = plan.tier.id, tier = plan.tier.name,
        etag_before = plan.etag, etag_after = out.meta and out.meta.etag or nil,
        before = before, after = after,
    }
end

--- Writes the run's record (nothing when no step wrote). True, or nil and why.
function M.save(c, rep)
    if not rep.run_steps or #rep.run_steps == 0 then return true end
    local path = M.store_path(c, rep.run_id)
    if not path then return true end
    local text, err = core.json_encode({ format = FORMAT, run_id = rep.run_id, revert_of = rep.revert_of,
        at = os.date("!%Y-%m-%dT%H:%M:%SZ"), steps = rep.run_steps })
    if not text then return nil, err end
    local ok, werr = core.write_private(path, text .. "\n")
    if not ok then return nil, ("the before-states of run %s cannot be saved to %s: %s"):format(rep.run_id, path, tostring(werr)) end
    return true
end

--- Loads a run's record by run id, or by the saved plan that run applied.
-- @treturn[1] table the record
-- @treturn[2] fail
function M.load(c, ref)
    local run_id = ref
    if ref:lower():match("%.json$") then
        local f, ferr = io.open(ref, "rb")
        if not f then return nil, tostring(ferr), "io" end
        local ok, doc = pcall(core.json_decode, f:read("*a"))
        f:close()
        if not ok or type(doc) ~= "table" or type(doc.plan_id) ~= "string" then
            return nil, ref .. " is not a saved plan (cxone plan --out)", "invalid"
        end
        local applied = require("cxone.planfile").applied_path(c)
        local af = applied and io.open(applied, "rb")
        run_id = nil
        if af then
            for line in af:read("*a"):gmatch("[^\n]+") do
                local lok, v = pcall(core.json_decode, line)
                if lok and type(v) == "table" and v.plan_id == doc.plan_id then run_id = v.run_id end
            end
            af:close()
        end
        if not run_id then
            return nil, ("%s was never applied (no record in %s): nothing to revert"):format(ref, tostring(applied)), "not_found"
        end
    end
    if type(run_id) ~= "string" or not run_id:match("^[%w%-]+$") or #run_id > 64 then
        return nil, ("%q is not a run id (16 hexadecimal digits, as the apply summary and audit trail give it)")
            :format(tostring(ref)), "invalid"
    end
    local path = M.store_path(c, run_id)
    if not path then return nil, "a revert needs the ledger's run records (CXONE_STATE_FILE is off)", "config" end
    local f, err = io.open(path, "rb")
    if not f then
        return nil, ("no record of run %s (%s: %s): only runs applied with this ledger can be reverted")
            :format(run_id, path, tostring(err)), "not_found"
    end
    local ok, doc = pcall(core.json_decode, f:read("*a"))
    f:close()
    if not ok or type(doc) ~= "table" or doc.format ~= FORMAT or type(doc.steps) ~= "table" then
        return nil, path .. " is not a run record (" .. FORMAT .. ")", "format"
    end
    return doc
end

--- The environment variable that supplies a masked value for a revert:
-- `CXONE_REVERT_<ENV>_<NAME>` (the environment id upper-cased, other characters as `_`).
function M.env_name(env, name)
    return ("CXONE_REVERT_%s_%s"):format(tostring(env):upper():gsub("[^%w]", "_"), tostring(name))
end

local function supplied(env, name)
    local n = M.env_name(env, name)
    local v = os.getenv(n)
    if v == nil or v == "" then return nil, n end
    return v, n
end

--- Plans the revert of a run record: a cxone.Report whose plans put every variable back.
-- @treturn[1] cxone.Report
-- @treturn[2] fail (conflict: changed since the run; invalid: masked values not supplied)
function M.plan(c, doc)
    local planmod, reportmod = require("cxone.plan"), require("cxone.report")
    local planner = require("cxone.planner")
    local ledger = require("cxone.ledger").for_client(c, true)
    local steps = {}
    for i = #doc.steps, 1, -1 do steps[#steps + 1] = doc.steps[i] end -- the last written first
    local reqs = {}
    for i, s in ipairs(steps) do reqs[i] = { op = "get", action = s.action, env = s.environment } end
    local got = #reqs > 0 and c.core:batch(reqs, { concurrency = c.cfg.concurrency or 8 }) or {}
    local read_at = core.monotonic()
    local rep = reportmod.new(planner.new_run_id(), false)
    rep.revert_of = doc.run_id
    rep.sources = {} -- masked value → the environment variable it came from (for --out)
    local conflicts, missing, wrong = {}, {}, {}
    for i, s in ipairs(steps) do
        local r = got[i]
        if not r.ok then
            return nil, ("GET %s %s: %s"):format(s.action, s.environment, tostring(r.error)), r.code
        end
        local tier = c.tiers:resolve(s.environment)
        if not tier then return nil, "unknown environment " .. tostring(s.environment) .. " in the run record", "format" end
        local cur = {}
        for _, v in ipairs(r.result.variables or {}) do if type(v) == "table" and v.name then cur[v.name] = v end end
        local etag = r.meta and r.meta.etag
        local entry = ledger and ledger:get(s.action, s.environment)
        local where = s.action .. " " .. s.environment
        -- still what the run left?
        local names = {}
        for name in pairs(s.after) do names[#names + 1] = name end
        table.sort(names)
        for _, name in ipairs(names) do
            local a, v = s.after[name], cur[name]
            if not v then
                conflicts[#conflicts + 1] = ("%s: %s was removed since run %s"):format(where, name, doc.run_id)
            elseif (v.masked == true) ~= (a.masked == true) then
                conflicts[#conflicts + 1] = ("%s: %s changed its masked flag since run %s"):format(where, name, doc.run_id)
            elseif not a.masked and v.value ~= a.value then
                conflicts[#conflicts + 1] = ("%s: %s changed since run %s"):format(where, name, doc.run_id)
            elseif a.masked then
                local same_etag = etag ~= nil and etag == s.etag_after
                local vouched = entry and type(entry.fp) == "table" and (etag == nil or entry.etag == etag)
                    and a.fp ~= nil and entry.fp[name] == a.fp
                if not (same_etag or vouched) then
                    conflicts[#conflicts + 1] = ("%s: masked %s may have changed since run %s (the environment was "
                        .. "written since, and no fingerprint of ours vouches for it)"):format(where, name, doc.run_id)
                end
            end
        end
        -- the entries that put it back
        local default_desc = "Scoped override for " .. s.environment
        local entries, items, before, fps, removes = {}, {}, {}, {}, {}
        local counts = { add = 0, change = 0, set = 0, unchanged = 0, remove = 0 }
        for _, name in ipairs(names) do
            local b, v = s.before[name] or { present = false }, cur[name]
            if not b.present then
                removes[name] = true
                counts.remove = counts.remove + 1
                items[#items + 1] = { name = name, kind = "remove", masked = v and v.masked == true or false,
                    old = v and (v.masked and "***" or v.value) or nil, old_masked = v and v.masked == true or nil,
                    new = "(removed)" }
            elseif b.masked or b.value == nil then
                local val, envname = supplied(s.environment, name)
                if not val then
                    missing[#missing + 1] = ("%s (%s %s)"):format(envname, where, name)
                elseif b.fp and fingerprint(c, s.action, s.environment, name, val) ~= b.fp then
                    wrong[#wrong + 1] = ("%s (%s %s)"):format(envname, where, name)
                else
                    if b.masked then rep.sources[val] = envname else
                        rep.unsaveable = ("%s: %s goes back to a plain value that only the operator supplies"):format(where, name)
                    end
                    entries[#entries + 1] = { name = name, value = val, masked = b.masked == true,
                        description = v and v.description or default_desc }
                    if b.masked then fps[name] = fingerprint(c, s.action, s.environment, name, val) end
                    counts.set = counts.set + 1
                    items[#items + 1] = { name = name, kind = b.masked and "set" or "change", masked = b.masked == true,
                        old = v and (v.masked and "***" or v.value) or nil, old_masked = v and v.masked == true or nil,
                        new = b.masked and "***" or "(supplied)", fp = fps[name] }
                end
            else
                entries[#entries + 1] = { name = name, value = b.value, masked = false,
                    description = v and v.description or default_desc }
                counts.change = counts.change + 1
                items[#items + 1] = { name = name, kind = "change", masked = false,
                    old = v and (v.masked and "***" or v.value) or nil, old_masked = v and v.masked == true or nil,
                    new = b.value }
            end
            if v then
                before[name] = { present = true, masked = v.masked == true, value = (not v.masked) and v.value or nil }
            else
                before[name] = { present = false }
            end
        end
        local method = "patch"
        if next(removes) then
            -- a PUT replaces the whole set: the variables the run did not touch are sent as they are
            method = "put"
            rep.unsaveable = ("%s: removing what the run created is a PUT of the whole set"):format(where)
            local cnames = {}
            for name in pairs(cur) do if not s.after[name] then cnames[#cnames + 1] = name end end
            table.sort(cnames)
            for _, name in ipairs(cnames) do
                local v = cur[name]
                before[name] = { present = true, masked = v.masked == true, value = (not v.masked) and v.value or nil }
                if v.masked then
                    local val, envname = supplied(s.environment, name)
                    local known = entry and type(entry.fp) == "table" and (etag == nil or entry.etag == etag)
                        and entry.fp[name] or nil
                    if not val then
                        missing[#missing + 1] = ("%s (%s %s: a removal is a PUT of the whole set)"):format(envname, where, name)
                    elseif known and fingerprint(c, s.action, s.environment, name, val) ~= known then
                        wrong[#wrong + 1] = ("%s (%s %s)"):format(envname, where, name)
                    else
                        rep.sources[val] = envname
                        entries[#entries + 1] = { name = name, value = val, masked = true, description = v.description }
                        fps[name] = fingerprint(c, s.action, s.environment, name, val)
                    end
                else
                    entries[#entries + 1] = { name = name, value = v.value, masked = false, description = v.description }
                end
            end
        end
        local changes = counts.change + counts.set + counts.remove
        rep.steps[i] = { index = i, action = s.action, tier = tier.name, environment = tier.id }
        rep.plans[i] = planmod.new({
            action = s.action, tier = tier, etag = etag, items = items, counts = counts, fingerprints = fps,
            changes = changes, before = before, method = method, read_at = read_at,
            payload = { actionId = s.action, environmentId = tier.id, variables = entries },
        })
        rep.steps[i].changes, rep.steps[i].variables = changes, rep.plans[i]:names()
    end
    if #conflicts > 0 then
        return nil, ("run %s cannot be reverted: what it wrote was changed since, nothing written:\n  %s")
            :format(doc.run_id, table.concat(conflicts, "\n  ")), "conflict"
    end
    if #missing > 0 or #wrong > 0 then
        local parts = {}
        if #missing > 0 then
            parts[#parts + 1] = "masked values to supply (the value to restore) in: " .. table.concat(missing, ", ")
        end
        if #wrong > 0 then
            parts[#parts + 1] = "values that do not match the recorded fingerprint in: " .. table.concat(wrong, ", ")
        end
        return nil, ("run %s cannot be reverted yet, nothing written: %s"):format(doc.run_id, table.concat(parts, "; ")),
            "invalid"
    end
    for i, p in pairs(rep.plans) do rep:set(i, p:pending() and "planned" or "unchanged") end
    rep.ok = true
    return rep
end

--- `cxone revert RUN_ID|PLAN.json [--yes] [--out PLAN.json]`; helpers are the CLI's.
function M.command(ctx, ref, h)
    local c = h.client(ctx)
    if not c then return 1 end
    local doc, err, code = M.load(c, ref)
    if not doc then c:close(); return ctx:fail(err, code) end
    local rep
    rep, err, code = M.plan(c, doc)
    if not rep then c:close(); return ctx:fail(err, code) end
    if not ctx.json and not ctx.markdown then
        ctx:out(("Revert of run %s:"):format(doc.run_id))
    end
    local pending = #rep:pending()
    if ctx.flags.out then
        -- saved like `cxone plan --out`: applied later with `cxone apply PLAN.json`
        local planfile = require("cxone.planfile")
        local ok, terr = planfile.check_target(ctx.flags.out, nil, ctx.flags.force)
        if not ok then c:close(); return ctx:fail(terr, "invalid") end
        if rep.unsaveable then
            c:close()
            return ctx:fail(("this revert cannot be saved as a plan (%s): apply it with cxone revert %s --yes")
                :format(rep.unsaveable, ref), "unsupported")
        end
        h.show_plans(ctx, rep, false)
        local digest, saved = planfile.save(ctx.flags.out, rep, { client = c, sources = rep.sources,
            revert_of = doc.run_id })
        c:close()
        if not digest then return ctx:fail("cannot save the plan: " .. tostring(saved), "io") end
        ctx:err("saved the revert of run %s to %s (digest %s, expires %s); apply it with: cxone apply %s",
            doc.run_id, ctx.flags.out, digest:sub(1, 16), saved.expires, ctx.flags.out)
        rep.dry_run = true
        ctx:show(rep)
        return pending > 0 and 2 or 0
    end
    h.show_plans(ctx, rep, false)
    if pending > 0 and not ctx.flags.yes then
        if not require("cxone.core").isatty(0) then
            c:close()
            return ctx:fail("refusing to revert without a terminal to confirm on: pass --yes", "refused")
        end
        local status = h.confirm(ctx, c, rep, ("Revert run %s: apply %d step(s) exactly as shown?")
            :format(doc.run_id, pending), "not reverted")
        if status then return status end
    end
    return h.apply_report(ctx, c, rep)
end

return M
