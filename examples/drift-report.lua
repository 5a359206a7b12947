#!/usr/bin/env lua5.4
-- Drift report: compares staging with production for every action given (default: the three
-- cxone-sim demo actions) and prints one report per action; exit 2 when any drift is found.
-- Settings from CXONE_* (see `cxone --help`).
--
--   lua5.4 examples/drift-report.lua [ACTION_ID ...]
local root = ((arg and arg[0] or ""):match("^(.*)/examples/[^/]*$")) or "."
package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = root .. "/build/lua5.4/?.so;" .. package.cpath

local cxone = require("cxone")
local actions = { ... }
if #actions == 0 then
    actions = { "a1b2c3d4-e5f6-4890-abcd-ef1234567890", "0f8e7d6c-5b4a-4392-8170-6a5b4c3d2e1f",
                "5c4b3a29-1807-46f5-a4d3-c2b1a0918273" }
end

local client, err = cxone.client()
if not client then io.stderr:write("drift-report: ", err, "\n"); os.exit(1) end

local total, status = 0, 0
for _, id in ipairs(actions) do
    local staging, e1 = client:vars(id, "staging")
    local prod, e2 = client:vars(id, "production")
    if not (staging and prod) then
        io.stderr:write(("drift-report: %s: %s\n"):format(id, tostring(staging and e2 or e1)))
        status = 1
    else
        local report = cxone.drift(staging.variables, prod.variables,
            { baseline = "staging", target = "production", action = id })
        print(report)
        print()
        total = total + report:count()
    end
end
print(("%d difference(s) across %d action(s)"):format(total, #actions))
client:close()
if status == 0 and total > 0 then status = 2 end
os.exit(status)
