-- wrk script of the benchmark: cycles through the requests of a file written by bench/seed.py.
--
--   wrk -s bench/load.lua URL -- FILE RUN_ID [idempotency]
--
-- Each line of FILE is METHOD, PATH, Authorization ("-" for none) and a JSON body ("-" for
-- none), tab-separated. "{seq}" in a body becomes a value unique to this request (RUN_ID,
-- thread and counter): new client ids for activations. With "idempotency", every request
-- also carries a unique Idempotency-Key. Every request carries the headers nginx adds in
-- front of the service (deploy/nginx.conf: X-Forwarded-For, X-Forwarded-Proto,
-- X-Request-ID). done() prints one JSON line for bench/load.py.

local threads = {}
local counter = 0
id = 0 -- set per thread by setup() (a global: thread:set writes globals)
local run_id = "run"
local idempotency = false
local templates = {}
local fixed = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

local function split(line)
  local fields = {}
  for field in string.gmatch(line, "([^\t]+)") do
    table.insert(fields, field)
  end
  return fields
end

function init(args)
  run_id = args[2] or "run"
  idempotency = args[3] == "idempotency"
  for line in io.lines(args[1]) do
    if line ~= "" then
      local f = split(line)
      local headers = {
        ["X-Forwarded-For"] = "198.51.100.7",
        ["X-Forwarded-Proto"] = "http",
        ["X-Request-ID"] = "bench-" .. (#templates + 1),
      }
      if f[3] ~= "-" then
        headers["Authorization"] = f[3]
      end
      local body = nil
      if f[4] ~= "-" then
        body = f[4]
        headers["Content-Type"] = "application/json"
      end
      table.insert(templates, { method = f[1], path = f[2], headers = headers, body = body })
    end
  end
  -- Requests without per-request parts are formatted once.
  for i, t in ipairs(templates) do
    if not idempotency and (t.body == nil or not string.find(t.body, "{seq}", 1, true)) then
      fixed[i] = wrk.format(t.method, t.path, t.headers, t.body)
    end
  end
  -- Each run (RUN_ID is new every time) and each thread starts at a different place in the
  -- file, so consecutive runs do not replay the same requests (validate: the same tokens,
  -- which the workers' verified-token caches would then answer).
  local h = 0
  for i = 1, #run_id do
    h = (h * 31 + string.byte(run_id, i)) % 2147483647
  end
  counter = (h + id * 7919) % #templates
end

function request()
  counter = counter + 1
  local i = counter % #templates + 1
  if fixed[i] then
    return fixed[i]
  end
  local t = templates[i]
  local unique = run_id .. "-" .. id .. "-" .. counter
  local body = t.body and string.gsub(t.body, "{seq}", unique) or nil
  local headers = t.headers
  if idempotency then
    headers = {}
    for k, v in pairs(t.headers) do
      headers[k] = v
    end
    headers["Idempotency-Key"] = unique
    headers["X-Request-ID"] = unique
  end
  return wrk.format(t.method, t.path, headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "bytes": %d, "errors": {"connect": %d, ' ..
    '"read": %d, "write": %d, "status": %d, "timeout": %d}, "latency_us": {"p50": %d, ' ..
    '"p90": %d, "p99": %d, "max": %d, "mean": %.1f}}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
