--- What embedded hosts answer: the guard's verdict, variables, drift and plans as JSON (never a
-- masked value), and the drift exporter's Prometheus text. Pure functions, no I/O: the nginx and
-- HAProxy examples share them.
-- Works under Lua 5.1 (LuaJIT), 5.3 and 5.4.
-- @module cxone.transport.views

local core = require("cxone.core")
local validate = require("cxone.validate")

local M = {}

local DRIFT_TYPES = { "value_mismatch", "masked_mismatch", "new_variable", "missing_variable", "unverifiable" }
M.DRIFT_TYPES = DRIFT_TYPES

local function encode(t)
    local s, err = core.json_encode(t)
    if not s then return '{"error":"cannot encode the answer","code":"format"}' end
    return s
end
M.encode = encode

--- An error answer: status, JSON body.
function M.error(msg, code)
    local status = ({ invalid = 400, not_found = 404, auth = 502, scope = 502, conflict = 409,
                      unsupported = 501, config = 500 })[code] or 502
    return status, encode({ error = tostring(msg), code = tostring(code) })
end

local VARS_PATH = "^/api/v2/integration/actions/([^/]+)/environments/([^/]+)/variables$"

--- The guard: nil when the body may be forwarded, else 422 and a JSON body listing every
-- violation (path, message, code: never a value). With the request path, the body's actionId
-- and environmentId must also be the ones the URL names.
-- @tparam string|nil body the request body
-- @tparam[opt] string path the request path (without the query)
function M.guard(body, path)
    if body == nil or body == "" then
        return 422, encode({ error = "invalid", violations = { { path = "", code = "empty",
            message = "the request has no body" } } })
    end
    local payload = core.json_decode(body)
    if type(payload) ~= "table" then
        return 422, encode({ error = "invalid", violations = { { path = "", code = "json",
            message = "the body is not a JSON object" } } })
    end
    local ok, violations = validate.check(payload)
    local out = {}
    for i, v in ipairs(ok and {} or violations) do
        out[i] = { path = v.path, message = v.message, code = v.code }
    end
    local action, env = tostring(path or ""):match(VARS_PATH)
    if action then
        for field, want in pairs({ actionId = action, environmentId = env }) do
            if type(payload[field]) == "string" and payload[field] ~= want then
                out[#out + 1] = { path = field, code = "url_mismatch",
                                  message = field .. " differs from the one in the URL" }
            end
        end
    end
    if #out == 0 then return nil end
    return 422, encode({ error = "invalid", violations = out })
end

--- An environment's variables as JSON (masked values read back as *** from the API).
function M.vars(res)
    return encode({ actionId = res.actionId, environmentId = res.environmentId,
                    variables = res.variables, etag = res.etag })
end

--- A drift report as JSON.
function M.drift(rep)
    local items = {}
    for i, it in ipairs(rep.items) do
        items[i] = { variable = it.variable, drift_type = it.drift_type,
                     baseline = it.baseline_masked and "***" or it.baseline,
                     target = it.target_masked and "***" or it.target,
                     baseline_masked = it.baseline_masked, target_masked = it.target_masked }
    end
    return encode({ action = rep.action, baseline = rep.baseline, target = rep.target,
                    count = #items, items = items })
end

--- A plan as JSON: names, kinds and non-masked values only.
function M.plan(p)
    local items = {}
    for i, it in ipairs(p.items) do
        items[i] = { name = it.name, kind = it.kind, masked = it.masked == true,
                     old = (not it.masked) and it.old or nil, new = (not it.masked) and it.new or nil }
    end
    return encode({ action = p.action, tier = p.tier and p.tier.name, environmentId = p.tier and p.tier.id,
                    baseline = type(p.baseline) == "table" and p.baseline.name or p.baseline, etag = p.etag, changes = p.changes, counts = p.counts,
                    summary = p.summary and p:summary() or nil, items = items })
end

--- Parses "ACTION:BASELINE:TARGET,..." (the exporter's checks).
function M.parse_checks(s)
    local out = {}
    for part in tostring(s or ""):gmatch("[^,%s]+") do
        local a, b, t = part:match("^([^:]+):([^:]+):([^:]+)$")
        if a then out[#out + 1] = { action = a, baseline = b, target = t } end
    end
    return out
end

--- Runs every check with client:drift; returns the exporter's state (a table that JSON can
-- carry between workers): {results = {{action, baseline, target, counts}}, errors = n, ts = now}.
function M.check_all(client, checks, now)
    local st = { results = {}, errors = 0, ts = now }
    for _, c in ipairs(checks) do
        local rep, err, code = client:drift(c.action, c.baseline, c.target)
        if rep then
            local counts = {}
            for _, ty in ipairs(DRIFT_TYPES) do counts[ty] = 0 end
            for _, it in ipairs(rep.items) do counts[it.drift_type] = (counts[it.drift_type] or 0) + 1 end
            st.results[#st.results + 1] = { action = c.action, baseline = c.baseline, target = c.target,
                                            counts = counts }
        else
            st.errors = st.errors + 1
            st.last_error = code
        end
    end
    return st
end

local function label(v) return (tostring(v):gsub("[\\\"\n]", { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" })) end

--- Prometheus text for the exporter's state and the running total of failed checks.
function M.metrics(st, errors_total)
    local lines = {
        "# HELP cxone_drift_items Variables that differ between two tiers of an action, by drift type.",
        "# TYPE cxone_drift_items gauge",
    }
    for _, r in ipairs(st and st.results or {}) do
        for _, ty in ipairs(DRIFT_TYPES) do
            lines[#lines + 1] = ('cxone_drift_items{action="%s",baseline="%s",target="%s",type="%s"} %d')
                :format(label(r.action), label(r.baseline), label(r.target), ty, r.counts[ty] or 0)
        end
    end
    lines[#lines + 1] = "# HELP cxone_check_errors_total Drift checks that failed."
    lines[#lines + 1] = "# TYPE cxone_check_errors_total counter"
    lines[#lines + 1] = ("cxone_check_errors_total %d"):format(errors_total or 0)
    lines[#lines + 1] = "# HELP cxone_last_check_timestamp_seconds When the last round of checks ended."
    lines[#lines + 1] = "# TYPE cxone_last_check_timestamp_seconds gauge"
    lines[#lines + 1] = ("cxone_last_check_timestamp_seconds %.3f"):format(st and st.ts or 0)
    return table.concat(lines, "\n") .. "\n"
end

return M
