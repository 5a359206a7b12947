--- Plans: what applying a step would change (see cxone.client's Client:plan).
-- The class lives in cxone.client; this module exposes it and a helper that tells whether a
-- list of plans has anything to write.
-- @module cxone.plan

local client = require("cxone.client")

local M = { Plan = client.Plan }

--- True when any plan in the list has a change (add, change or masked set).
function M.pending(plans)
    for _, p in pairs(plans or {}) do
        if p.changes and p.changes > 0 then return true end
    end
    return false
end

return M
