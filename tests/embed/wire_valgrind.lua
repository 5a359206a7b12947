-- wire:valgrind: the call engine's Lua binding (core.engine, cxone.Engine, cxone.Call) on every
-- path a driver takes (token, API answers with secrets and masked values to scrub, retries,
-- transport failures, oversized answers, shared tokens, closed engines) under valgrind: no
-- invalid access, no definite leak.
local c = require("cxone.core")
local CRM = "a1b2c3d4-e5f6-4890-abcd-ef1234567890"
local TOK = '{"access_token":"tok-0123456789","expires_in":3600,"scope":"x"}'
local function opts(extra)
  local o = {base_url="http://127.0.0.1:9", client_id="i", client_secret="sekret-1234", retries=1,
             backoff_base=0.01, backoff_cap=0.01, rate_limit=50}
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end
-- runs a call to its end, answering with the functions in turn (the last one repeats)
local function run(call, answers)
  local now, i = 0, 1
  for _ = 1, 50 do
    local what, x = call:next(now)
    if what == "done" then break end
    if what == "wait" then now = now + x
    else
      local a = answers[math.min(i, #answers)]; i = i + 1
      if a then a(call, now, x) else call:neterr(now, "other", "no answer scripted") end
    end
  end
  local r = {call:result()}
  call:meta()
  tostring(call)
  call:close()
  return r
end
local tok = function(call, now) call:answer(now, 200, {["Content-Type"]="application/json"}, TOK) end
for _ = 1, 3 do
  local e = assert(c.engine(opts()))
  run(e:call("get", {action=CRM, env="dev"}, 0), {tok, function(call, now)
    call:answer(now, 200, {etag={[0]='"a"', '"b"'}, ["X-RateLimit-Limit"]="100", ["RateLimit"]="limit=10, remaining=0, reset=1"},
      '{"variables":[]}') end})
  run(e:call("patch", {payload={actionId=CRM,environmentId="dev",variables={{name="A",value="vvvv-masked",masked=true}}}, if_match='"e"'}, 0),
    {function(call, now) call:answer(now, 422, {}, '{"message":"' .. string.rep("vvvv-masked ", 300) .. '"}') end})
  run(e:call("patch", {payload={actionId=CRM,environmentId="dev",variables={{f=print}}}}, 0), {})
  run(e:call("build", {action=CRM}, 0), {function(call, now) call:neterr(now, "reset", "reset sekret-1234") end,
    function(call, now) call:answer(now, 202, {}, "nope") end})
  run(e:call("get", {action=CRM, env="dev"}, 0), {function(call, now) call:answer(now, 503, {["Retry-After"]="1"}, "{}") end})
  run(e:call("get", {action=CRM, env="dev"}, 0), {function(call, now) call:answer(now, 200, {}, string.rep("x", c.MAX_ANSWER + 1)) end})
  run(e:call("get", {action="../x", env="dev"}, 0), {})
  run(e:call("token", nil, 0), {tok})
  e:token(0); e:token_ttl(0); e:token_key(); e:stats(); e:rate(); e:settings(); tostring(e)
  local e2 = assert(c.engine(opts()))
  e2:token_import("tok-shared-0123", 100, 0)
  e2:token_import("bad token", 100, 0)
  e2:token_failed("auth", "refused", 5, 0)
  e2:token_failure(0)
  run(e2:call("get", {action=CRM, env="dev"}, 1), {})
  local e3 = assert(c.engine(opts()))
  local left = e3:call("get", {action=CRM, env="dev"}, 0)
  left:next(0)
  e3:close()                     -- a call outlives its engine
  pcall(left.next, left, 0)
  left = nil
  c.engine({client_id="x"})
  pcall(c.engine, {client_id=1})
  pcall(e.call, e, "get", {action=1}, 0)
  c.uuid()
end
collectgarbage(); collectgarbage()
print("ok")
