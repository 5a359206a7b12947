-- A cxone playbook promoting 100 actions to production in parallel (16 requests in flight).
-- A second apply finds nothing to change.
-- Format: see examples/promote.lua. The action ids are generated; a cxone-sim state with
-- these 100 actions is written by specs/playbook_spec.lua (start the sim with --state FILE).
--
--   cxone plan examples/promote-many.lua
--   cxone apply --yes examples/promote-many.lua
local N = tonumber(env("CXONE_MANY_N", "100"))
local RELEASE = env("CXONE_MANY_RELEASE", "2026.11")

local function action_id(i)
    return ("%08x-0000-4000-8000-%012x"):format(i, i)
end

local steps = {}
for i = 1, N do
    steps[i] = {
        action = action_id(i), tier = "production", baseline = "staging",
        variables = {
            RELEASE = RELEASE,
            SHARD = tostring(i % 8),
        },
    }
end

return { steps = steps, concurrency = 16 }
