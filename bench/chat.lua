-- wrk script of the proxy-overhead benchmark:
--   wrk -t1 -c16 -d10s -s bench/chat.lua http://127.0.0.1:PORT/v1/chat/completions -- BODY_FILE USERS
--
-- POSTs BODY_FILE as JSON, cycling through USERS distinct x-user-id values (the sticky key), with
-- every request built once in init() so request() costs nothing. done() prints one line
-- "BENCH_RESULT {json}" in the shape bench/loadgen.py prints, which proxy_overhead.py reads.

local prepared = {}
local position = 0

function init(args)
  local file = assert(io.open(args[1], "rb"), "cannot open the body file " .. tostring(args[1]))
  local body = file:read("*a")
  file:close()
  local users = tonumber(args[2]) or 1000
  for user = 1, users do
    prepared[user] = wrk.format("POST", nil, {
      ["Content-Type"] = "application/json",
      ["x-user-id"] = "user-" .. user,
    }, body)
  end
  -- Each wrk thread starts at a different user, like the Python generator's connections.
  position = math.random(0, users - 1)
end

function request()
  position = position % #prepared + 1
  return prepared[position]
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_s": %.6f, "p50_us": %.1f, "p99_us": %.1f, ' ..
    '"errors_status": %d, "errors_connection": %d}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50), latency:percentile(99),
    errors.status, errors.connect + errors.read + errors.write + errors.timeout))
end
