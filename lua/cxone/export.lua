--- Export: what is deployed, as a playbook that reproduces it (`cxone export`).
-- Reads actions in chosen tiers and writes a playbook: plain values as Lua string literals
-- (`%q`: a value a server sends can never become code), masked ones as
-- `{ masked = true, keep = true }` (must exist, keep the current value; the value is never read
-- back nor written), in a stable order: actions by id, tiers in promotion order, variables by
-- name. With `baselines`, a tier that holds every variable of the tier before it (same masked
-- flags) gets that tier as its baseline and lists only what differs from it.
-- Works under Lua 5.1 (LuaJIT), 5.3 and 5.4.
-- @module cxone.export

local M = {}

local FORMAT = "cxone-export/1"

local function sorted_vars(list)
    local out = {}
    for _, v in ipairs(list or {}) do
        if type(v) == "table" and type(v.name) == "string" then out[#out + 1] = v end
    end
    table.sort(out, function(a, b) return a.name < b.name end)
    return out
end

--- Reads the actions in the tiers and builds the export document:
-- `{format, steps = {{action, tier, environment, baseline, variables = {{name, value, masked,
-- keep, description}}}}}` (masked entries carry no value).
-- @tparam cxone.PromoteClient c
-- @tparam table actions list of action ids
-- @tparam table tier_names list of tier names or ids (nil: every tier of the matrix)
-- @tparam[opt] table opts `baselines = true` infers baselines
-- @treturn[1] table
-- @treturn[2] fail
function M.collect(c, actions, tier_names, opts)
    opts = opts or {}
    local check = require("cxone.drift").check_action
    local tiers, seen_t = {}, {}
    if tier_names and #tier_names > 0 then
        for _, n in ipairs(tier_names) do
            local t, err = c.tiers:resolve(n)
            if not t then return nil, err, "invalid" end
            if not seen_t[t.id] then seen_t[t.id] = true; tiers[#tiers + 1] = t end
        end
        -- promotion order, whatever order they were named in
        local rank = {}
        for i, t in ipairs(c.tiers.list or {}) do rank[t.id] = i end
        table.sort(tiers, function(a, b) return (rank[a.id] or 0) < (rank[b.id] or 0) end)
    else
        for _, t in ipairs(c.tiers.list or {}) do tiers[#tiers + 1] = t end
    end
    local ids, seen = {}, {}
    for _, a in ipairs(actions) do
        local bad = check(a)
        if bad then return nil, bad, "invalid" end
        if not seen[a] then seen[a] = true; ids[#ids + 1] = a end
    end
    table.sort(ids)
    local reqs = {}
    for _, a in ipairs(ids) do
        for _, t in ipairs(tiers) do reqs[#reqs + 1] = { op = "get", action = a, env = t.id } end
    end
    local results = #reqs > 0 and c.core:batch(reqs, { concurrency = c.cfg.concurrency or 8 }) or {}
    local doc = { format = FORMAT, steps = {} }
    local k = 0
    for _, a in ipairs(ids) do
        local prev
        for _, t in ipairs(tiers) do
            k = k + 1
            local r = results[k]
            if not r.ok then
                return nil, ("GET %s %s: %s"):format(a, t.id, tostring(r.error)), r.code
            end
            local vars = {}
            for _, v in ipairs(sorted_vars(r.result.variables)) do
                if v.masked == true then
                    vars[#vars + 1] = { name = v.name, masked = true, keep = true }
                else
                    vars[#vars + 1] = { name = v.name, value = tostring(v.value or ""), masked = false,
                                        description = type(v.description) == "string" and v.description or nil }
                end
            end
            local step = { action = a, tier = t.name, environment = t.id, variables = vars }
            if opts.baselines and prev and #prev.all > 0 then
                local mine = {}
                for _, v in ipairs(vars) do mine[v.name] = v end
                local covers = true
                for _, pv in ipairs(prev.all) do
                    local v = mine[pv.name]
                    if not v or v.masked ~= pv.masked then covers = false; break end
                end
                if covers then
                    local base = {}
                    for _, pv in ipairs(prev.all) do base[pv.name] = pv end
                    local kept = {}
                    for _, v in ipairs(vars) do
                        local pv = base[v.name]
                        local same = pv and not v.masked and pv.value == v.value and pv.description == v.description
                        if not same then kept[#kept + 1] = v end
                    end
                    step.baseline, step.variables = prev.tier, kept
                end
            end
            -- an environment without variables has nothing to reproduce: no step
            if #vars > 0 then
                doc.steps[#doc.steps + 1] = step
                prev = { tier = t.name, all = vars }
            else
                prev = nil
            end
        end
    end
    return doc
end

--- The ids of every action the server lists (cxone-sim's `GET /api/v2/integration/actions`, an
-- emulator extension: the contract has no list route). A server without it (404), or a client
-- without the call, needs the ids given.
-- @treturn[1] table list of ids
-- @treturn[2] fail
function M.list_actions(c)
    local need = "give the action ids (cxone export ACTION...)"
    local core_client = c.core
    if type(core_client.list_actions) ~= "function" then
        return nil, "this client cannot list actions: " .. need, "unsupported"
    end
    local res, err, code = core_client:list_actions()
    if not res then
        if code == "not_found" then
            return nil, "the server has no list route (GET /api/v2/integration/actions answered 404): " .. need, code
        end
        return nil, "cannot list the actions: " .. tostring(err), code
    end
    local ids = {}
    for _, a in ipairs(res.actions or {}) do
        local id = type(a) == "table" and a.id or a
        if type(id) == "string" then ids[#ids + 1] = id end
    end
    if #ids == 0 then return nil, "the server lists no actions: " .. need, "not_found" end
    return ids
end

local function lit(s) return (("%q"):format(s):gsub("\\\n", "\\n")) end
M.literal = lit

--- Renders an export document as a playbook (Lua source). Every string from the server goes
-- through `%q` (newlines written as `\n`), so the file is data however hostile the values.
-- @tparam table doc from collect
-- @tparam[opt] string header a comment line (no newline in it)
-- @treturn string
function M.render(doc, header)
    local out = {}
    out[#out + 1] = "-- " .. (header or "exported by cxone export"):gsub("[\r\n]", " ")
    out[#out + 1] = "-- masked variables: { masked = true, keep = true } (must exist; the current value is kept)"
    out[#out + 1] = "return {"
    for _, s in ipairs(doc.steps) do
        out[#out + 1] = ("  { action = %s, tier = %s,%s variables = {"):format(lit(s.action), lit(s.tier),
            s.baseline and (" baseline = %s,"):format(lit(s.baseline)) or "")
        for _, v in ipairs(s.variables) do
            if v.keep then
                out[#out + 1] = ("    { name = %s, masked = true, keep = true },"):format(lit(v.name))
            else
                out[#out + 1] = ("    { name = %s, value = %s%s },"):format(lit(v.name), lit(v.value),
                    v.description and (", description = " .. lit(v.description)) or "")
            end
        end
        out[#out + 1] = "  } },"
    end
    out[#out + 1] = "}"
    return table.concat(out, "\n") .. "\n"
end

return M
