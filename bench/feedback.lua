-- wrk script of the feedback benchmark:
--   wrk -t1 -c16 -d5s -s bench/feedback.lua http://127.0.0.1:PORT/canaryproxy/v1/feedback -- TOKENS_FILE
--
-- POSTs one feedback verdict per request, each quoting the next token of TOKENS_FILE (one per
-- line, every one a distinct request, so each post is accepted, not a duplicate), every request
-- built once in init(). done() prints the "BENCH_RESULT {json}" line of bench/chat.lua.

local prepared = {}
local position = 0

function init(args)
  for token in io.lines(args[1]) do
    prepared[#prepared + 1] = wrk.format("POST", nil, {["Content-Type"] = "application/json"},
      '{"token": "' .. token .. '", "name": "thumbs", "value": false}')
  end
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
