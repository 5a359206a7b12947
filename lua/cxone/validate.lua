--- Payload validation with readable failures; the rules live in the C core.
-- @module cxone.validate

local core = require("cxone.core")

local M = {}

--- Validates a payload. Returns true, or nil, violations (tostring renders one per line),
-- "invalid". opts as core.validate's, plus `tiers` (a cxone.Tiers) to take the valid
-- environment ids from.
function M.check(payload, opts)
    if type(payload) ~= "table" then
        error("bad argument #1 to 'validate' (table expected, got " .. type(payload) .. ")", 2)
    end
    if opts ~= nil and type(opts) ~= "table" then
        error("bad argument #2 to 'validate' (table expected, got " .. type(opts) .. ")", 2)
    end
    if opts and opts.tiers then
        local o = {}
        for k, v in pairs(opts) do if k ~= "tiers" then o[k] = v end end
        o.environments = o.environments or opts.tiers:ids()
        opts = o
    end
    return core.validate(payload, opts)
end

return M
