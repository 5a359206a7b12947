-- A cxone playbook: promote one demo action (crm-lookup) development → staging → production.
--
-- Playbook format: a Lua file that RETURNS either a list of steps, or a table
-- `{steps = {...}, concurrency = 8}`. Each step is
--   {action = "<action id>", tier = "development"|"staging"|"production" (or dev/staging/prod),
--    baseline = "<tier to report drift against>" (optional),
--    variables = { NAME = "plain value", SECRET = {value = "...", masked = true}, ... }}
-- Steps of one action run in the order given; different actions run in parallel.
-- The file runs with the standard Lua globals plus `env(NAME, default)` (os.getenv with a
-- default), so secrets can come from the environment instead of the file. A saved plan
-- (`cxone plan --out`) needs that: it records which variable each masked value comes from,
-- and `cxone apply PLAN.json` reads it from there (the default below is for plain runs only).
--
--   cxone plan examples/promote.lua         # dry run: exit 0 nothing to do, 2 changes pending
--   cxone apply --yes examples/promote.lua  # write, queue builds, audit, webhook events
--
-- Masked values cannot be read back from the API; a re-run still plans them as unchanged while
-- the target's ETag is the one our last write produced (see the masked-value ledger in README).
local CRM = "a1b2c3d4-e5f6-4890-abcd-ef1234567890" -- crm-lookup in cxone-sim's demo data

local function vars(tier, timeout)
    return {
        TIMEOUT_MS = timeout,
        LOG_LEVEL = tier == "development" and "debug" or "info",
        FEATURE_FUZZY_MATCH = "true",
        CACHE_TTL_S = "300",
        CRM_API_KEY = { value = env("CXONE_DEMO_CRM_KEY", "demo-crm-key-" .. tier), masked = true,
                        description = "CRM API key" },
    }
end

return {
    { action = CRM, tier = "development", variables = vars("development", "5000") },
    { action = CRM, tier = "staging", baseline = "development", variables = vars("staging", "3000") },
    { action = CRM, tier = "production", baseline = "staging", variables = vars("production", "3000") },
}
