--- Building override payloads in the shape the Integration Engine's variables route takes.
-- @module cxone.payload

local M = {}

--- Normalises the variables a playbook gives into a list of entries, sorted by name.
-- Accepts a list of `{name=, value=, masked=, description=}` or a map
-- `{NAME = "value", SECRET = {value = "...", masked = true}}`. Every key an entry has is kept,
-- so that validate reports a typo such as `maskd` instead of it being dropped silently.
-- @tparam table variables
-- @tparam string env_id used in the default description
-- @treturn table list of entries
function M.entries(variables, env_id)
    local out = {}
    local is_list = #variables > 0 or next(variables) == nil
    if is_list then
        for i, v in ipairs(variables) do
            if type(v) == "table" then
                local e = {}
                for k, x in pairs(v) do e[k] = x end
                out[i] = e
            else
                out[i] = v -- validate reports it
            end
        end
    else
        for name, v in pairs(variables) do
            local e
            if type(v) == "table" then
                e = {}
                for k, x in pairs(v) do e[k] = x end
                if e.name == nil then e.name = name end
            else
                e = { name = name, value = v }
            end
            out[#out + 1] = e
        end
        table.sort(out, function(a, b) return tostring(a.name) < tostring(b.name) end)
    end
    for _, e in ipairs(out) do
        if type(e) == "table" then
            if e.masked == nil then e.masked = false end
            if e.description == nil then e.description = "Scoped override for " .. env_id end
        end
    end
    return out
end

--- Builds `{variables = {...}, environmentId = , actionId = }`.
-- @tparam string action_id
-- @tparam string env_id
-- @tparam table variables list or map (see entries)
-- @treturn table payload
function M.build(action_id, env_id, variables)
    if type(action_id) ~= "string" then
        error("bad argument #1 to 'payload' (action id string expected, got " .. type(action_id) .. ")", 2)
    end
    if type(env_id) ~= "string" then
        error("bad argument #2 to 'payload' (environment id string expected, got " .. type(env_id) .. ")", 2)
    end
    if type(variables) ~= "table" then
        error("bad argument #3 to 'payload' (variables table expected, got " .. type(variables) .. ")", 2)
    end
    return {
        variables = M.entries(variables, env_id),
        environmentId = env_id,
        actionId = action_id,
    }
end

return M
