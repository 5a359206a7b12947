--- The `CXONE_*` environment variables: the one place that names and reads them (the C core
-- reads its own two, `CXONE_DEBUG` and `CXONE_MAX_RPS`, in `plugin/config.c`). A setting is
-- asked for by its name (`env.get("plan_key")`); an empty variable counts as unset.
-- @module cxone.env

local M = {}

--- setting → variable
M.VARS = {
    base_url = "CXONE_BASE_URL", token_url = "CXONE_TOKEN_URL",
    client_id = "CXONE_CLIENT_ID", client_secret = "CXONE_CLIENT_SECRET",
    access_key_id = "CXONE_ACCESS_KEY_ID", access_key_secret = "CXONE_ACCESS_KEY_SECRET",
    ca_file = "CXONE_CA_FILE",
    audit_log = "CXONE_AUDIT_LOG", audit_key = "CXONE_AUDIT_KEY",
    webhook_url = "CXONE_WEBHOOK_URL", webhook_secret = "CXONE_WEBHOOK_SECRET",
    state_file = "CXONE_STATE_FILE",
    plan_key = "CXONE_PLAN_KEY", plan_ttl = "CXONE_PLAN_TTL",
    config = "CXONE_CONFIG", sim_bin = "CXONE_SIM_BIN", history = "CXONE_HISTORY",
}

--- The settings a client takes from the environment when its options do not give them.
M.CLIENT = { "base_url", "token_url", "client_id", "client_secret", "access_key_id",
             "access_key_secret", "ca_file", "audit_log", "audit_key", "webhook_url",
             "webhook_secret", "state_file" }

local function var(setting)
    local v = M.VARS[setting]
    if not v then error("unknown setting '" .. tostring(setting) .. "'", 3) end
    return v
end

--- The variable's value, or nil when unset or empty.
function M.get(setting)
    local v = os.getenv(var(setting))
    if v == "" then return nil end
    return v
end

--- The variable's value as set: nil when unset, "" when set empty (where empty means "none").
function M.raw(setting) return os.getenv(var(setting)) end

--- The variable that holds a setting (for messages).
function M.name(setting) return var(setting) end

return M
