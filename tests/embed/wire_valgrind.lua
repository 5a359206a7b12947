-- wire:valgrind: every core.wire_* path (requests, token answers, API answers with secrets and
-- masked values to scrub, retries) under valgrind: no invalid access, no definite leak.
local c = require("cxone.core")
for _ = 1, 3 do
  c.wire_request("get", {base_url="http://x/", action="a", env="b", token="t"})
  c.wire_request("patch", {base_url="http://x", payload={actionId="a",environmentId="b",variables={{name="A",value="s",masked=true}}}, if_match="e"})
  c.wire_request("patch", {base_url="http://x", payload={actionId="a",environmentId="b",variables={f=function() end}}})
  c.wire_request("build", {base_url="http://x", action="a"})
  c.wire_request("get", {base_url="http://x", action="../", env="b"})
  c.wire_token_request{token_url="http://x", client_id="i", client_secret="s", basic_auth=true}
  c.wire_token_request{token_url="http://x", client_id="i", client_secret="s", access_key_id="k", access_key_secret="z"}
  c.wire_token_response(200, '{"access_token":"abc","expires_in":5,"scope":"x"}')
  c.wire_token_response(401, '{"error":"invalid_client"}')
  c.wire_token_response(200, '{"access_token":1}')
  c.wire_response("get", 200, {etag={"a","b"}}, '{"variables":[]}', {attempts=1, secrets={"sss1"}, payload={}})
  c.wire_response("get", 403, {}, '{"required_scope":"x"}', {client_id="me"})
  c.wire_response("patch", 422, {}, '{"message":"' .. string.rep("v", 3000) .. '"}', {payload={variables={{value="vvvv",masked=true}}}})
  c.wire_response("build", 202, {}, 'nope')
  c.wire_retry(0, 503); c.wire_retry(1, "network", {retry_after=1}); c.wire_retry_after("Wed, 21 Oct 2015 07:28:00 GMT")
  c.wire_check_url("base_url", "ftp://x"); c.wire_uuid(); c.wire_scrub(string.rep("ab", 1000), {"abab"})
  pcall(c.wire_request, "get", {})
  pcall(c.wire_token_request, {token_url=""})
end
collectgarbage(); collectgarbage()
print("ok")
