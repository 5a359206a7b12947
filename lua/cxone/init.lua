--- cxone: promote scoped environment-variable overrides of NICE CXone Data Actions across tiers.
-- Policy and the friendly API live here; the mechanism (validation, HTTP, hashing, the audit
-- file) lives in the C module cxone.core.
-- @module cxone

local core = require("cxone.core")
local tiers = require("cxone.tiers")
local payload = require("cxone.payload")
local validate = require("cxone.validate")
local drift = require("cxone.drift")
local audit = require("cxone.audit")

local M = {
    _VERSION = core._VERSION,
    core = core,
    tiers = tiers,
    null = core.null,
}

--- Builds a payload for an action and a tier (name or environment id).
-- @tparam string action_id
-- @tparam string tier "development", "staging", "production" (or "dev", "staging", "prod")
-- @tparam table variables list of `{name, value, masked, description}` or a map NAME → value
-- @tparam[opt] cxone.Tiers matrix
-- @treturn[1] table payload
-- @treturn[2] fail an unknown tier (code "invalid")
function M.payload(action_id, tier, variables, matrix)
    if type(tier) ~= "string" then
        error("bad argument #2 to 'payload' (tier name string expected, got " .. type(tier) .. ")", 2)
    end
    local t, err = (matrix or tiers.new()):resolve(tier)
    if not t then return nil, err, "invalid" end
    return payload.build(action_id, t.id, variables)
end

--- Validates a payload: true, or nil, violations, "invalid" (tostring(violations) reads well).
M.validate = validate.check

--- Compares two variable lists: a cxone.DriftReport (tostring renders it).
M.drift = drift.compare

--- Opens the audit trail (default CXONE_AUDIT_LOG or cxone_audit.jsonl).
M.audit = audit.open

--- Verifies an audit trail; returns the report, or nil, message, code (key from CXONE_AUDIT_KEY).
M.verify_audit = audit.verify

--- Creates a client for a tenant (or cxone-sim); see cxone.client.
function M.client(opts)
    return require("cxone.client").new(opts)
end

return M
