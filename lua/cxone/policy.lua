--- Tier policy from a profile (cxone.profiles): a tier that accepts only what was applied to
-- the tier below it first (`promoted_from`), and freeze windows. Checked by cxone.planner (a
-- plan shows the refusal) and again by cxone.applier before anything is written (so a saved
-- plan cannot skip it). Works under Lua 5.1 (LuaJIT), 5.3 and 5.4.
-- @module cxone.policy

local ledgermod = require("cxone.ledger")
local profiles = require("cxone.profiles")

local M = {}

--- The ledger name under which a plain value's keyed fingerprint is kept (masked values use
-- the variable's own name); never a variable name, so the two never meet.
function M.plain_key(name) return "plain:" .. name end

local function fingerprint(c, action, env, name, value)
    return require("cxone.client").fingerprint(c, action, env, name, value)
end

--- Problems with a report's pending plans: `{ {index=, message=}, ... }` (empty when none).
-- A tier with no tenant in the profile is refused; a `promoted_from` tier accepts a value only
-- if the ledger records that one of our audited runs wrote that very value (its keyed
-- fingerprint, under the source tenant's key) to the source tier of the same action.
function M.problems(c, rep)
    local out = {}
    if not c.policy then return out end
    local l = ledgermod.for_client(c)
    -- what earlier steps of this run write (they go first: one action's steps go in order, and a
    -- failure stops the later ones), as fingerprints under each target tenant's key
    local earlier, idx = {}, {}
    for i in pairs(rep.plans) do idx[#idx + 1] = i end
    table.sort(idx)
    for _, i in ipairs(idx) do
        local p = rep.plans[i]
        local tier = p.tier
        local pol = c.policy[tier.name]
        if c.tenancy and not c.tenancy.by_env[tier.id] then
            out[#out + 1] = { index = i, message = ("tier %s has no tenant in the configuration %s")
                :format(tier.name, tostring(c.cfg.profile.path)) }
        elseif pol and pol.promoted_from and p:pending() and p.payload then
            local src = pol.promoted_from
            local entry = l and l:get(p.action, src.id)
            local fp = entry and type(entry.fp) == "table" and entry.fp or {}
            local run = earlier[p.action .. "/" .. src.id] or {}
            local missing = {}
            for _, e in ipairs(p.payload.variables or {}) do
                local want = fingerprint(c, p.action, src.id, e.name, e.value)
                local k = e.masked and e.name or M.plain_key(e.name)
                if not want or (fp[k] ~= want and run[k] ~= want) then missing[#missing + 1] = e.name end
            end
            if #missing > 0 then
                table.sort(missing)
                out[#out + 1] = { index = i, message = ("policy: %s accepts only values an audited run applied to %s "
                    .. "first; %s never received this value of %s (apply it to %s first)"):format(tier.name,
                    src.name, src.name, table.concat(missing, ", "), src.name) }
            end
        end
        if p:pending() and p.payload then
            local k = p.action .. "/" .. tier.id
            earlier[k] = earlier[k] or {}
            for _, e in ipairs(p.payload.variables or {}) do
                earlier[k][e.masked and e.name or M.plain_key(e.name)] =
                    fingerprint(c, p.action, tier.id, e.name, e.value)
            end
        end
    end
    return out
end

--- Freeze windows: nil when the pending steps may be applied now, else a message. With
-- `override` (the operator's reason) a freeze is passed, and `rep.override_freeze` records it
-- for the audit trail.
function M.freeze(c, rep, pend, override, now)
    if not c.policy then return nil end
    local hits, seen = {}, {}
    for _, i in ipairs(pend) do
        local tier = rep.plans[i].tier
        local w = profiles.frozen(c.policy[tier.name], now)
        if w and not seen[tier.name] then
            seen[tier.name] = true
            hits[#hits + 1] = ("%s (frozen %s)"):format(tier.name, w)
        end
    end
    if #hits == 0 then return nil end
    if type(override) == "string" and override:match("%S") then
        rep.override_freeze = override
        return nil, "freeze overridden for " .. table.concat(hits, ", ") .. ": " .. override
    end
    return ("inside a freeze window: %s; nothing written (pass --override-freeze \"REASON\" to apply anyway; "
        .. "the reason is audited)"):format(table.concat(hits, ", "))
end

--- The tenant's label for an environment's audit records (nil without a profile).
function M.tenant(c, env)
    local t = c.tenancy and c.tenancy.by_env[env]
    return t and t.label or nil
end

return M
