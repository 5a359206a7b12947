--- The tier matrix: which environment id each tier maps to, and whether applying to it
-- triggers a build. A client may replace it.
-- @module cxone.tiers

local M = {}

--- The default matrix (development → dev, staging → staging, production → prod), as defined
-- once in C (`plugin/tiers.h`, `core.TIERS`) for validate, this module and cxone-sim.
M.DEFAULT = {}
for i, t in ipairs(require("cxone.core").TIERS) do
    M.DEFAULT[i] = { name = t.name, id = t.id, build = t.build }
end

local Matrix = {}
Matrix.__index = Matrix
Matrix.__name = "cxone.Tiers"

--- Builds a matrix from a list of `{name = , id = , build = }` (in promotion order).
-- @tparam[opt] table list defaults to `M.DEFAULT`
-- @treturn cxone.Tiers
function M.new(list)
    list = list or M.DEFAULT
    if type(list) ~= "table" then
        error("bad argument #1 to 'tiers.new' (list of {name, id, build} expected, got " .. type(list) .. ")", 2)
    end
    local self = setmetatable({ list = {}, by_name = {}, by_id = {} }, Matrix)
    for i, t in ipairs(list) do
        if type(t) ~= "table" or type(t.name) ~= "string" or type(t.id) ~= "string" then
            error(("bad argument #1 to 'tiers.new' (entry %d needs string name and id)"):format(i), 2)
        end
        if self.by_name[t.name] or self.by_id[t.id] then
            error(("bad argument #1 to 'tiers.new' (entry %d repeats a tier name or id)"):format(i), 2)
        end
        local entry = { name = t.name, id = t.id, build = t.build == true, index = i }
        self.list[i] = entry
        self.by_name[t.name] = entry
        self.by_id[t.id] = entry
    end
    if #self.list == 0 then error("bad argument #1 to 'tiers.new' (at least one tier)", 2) end
    return self
end

--- Finds a tier by name ("production") or environment id ("prod").
-- @treturn table|nil `{name, id, build, index}`
-- @treturn string message when unknown
function Matrix:resolve(tier)
    local e = self.by_name[tier] or self.by_id[tier]
    if e then return e end
    local names = {}
    for i, t in ipairs(self.list) do names[i] = t.name .. " (" .. t.id .. ")" end
    return nil, ("unknown tier %q; the tiers are %s"):format(tostring(tier), table.concat(names, ", "))
end

--- The environment ids, in promotion order (for validate's `environments` option).
function Matrix:ids()
    local ids = {}
    for i, t in ipairs(self.list) do ids[i] = t.id end
    return ids
end

function Matrix:__tostring()
    local parts = {}
    for i, t in ipairs(self.list) do
        parts[i] = ("%s→%s%s"):format(t.name, t.id, t.build and " (build)" or "")
    end
    return "cxone.Tiers (" .. table.concat(parts, ", ") .. ")"
end

return M
