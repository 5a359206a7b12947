-- The playbook bench/ratelimit_bench.lua applies: BENCH_RL_STEPS (default 100) single-step
-- promotions to production with staging as baseline, one action each (the ids of the data set the
-- bench loads into cxone-sim). Concurrency is the client's default unless BENCH_RL_CONCURRENCY
-- is set.
local N = tonumber(env("BENCH_RL_STEPS", "100"))
local concurrency = tonumber(env("BENCH_RL_CONCURRENCY", ""))

local steps = {}
for i = 1, N do
    steps[i] = {
        action = ("%08x-0000-4000-8000-%012x"):format(i, i), tier = "production", baseline = "staging",
        variables = { RELEASE = "2026.11", SHARD = tostring(i % 8) },
    }
end

return { steps = steps, concurrency = concurrency }
