-- wrk script: POST /sales/batch/ with BATCH (default 1000) random sales per request
-- (ids 1..ITEMS / 1..STORES); each thread builds 8 different bodies and cycles through them.
-- With KEYED=1 every sale carries an idempotency key, unique per request and line.
local items = tonumber(os.getenv("ITEMS") or "50")
local stores = tonumber(os.getenv("STORES") or "50")
local per = tonumber(os.getenv("BATCH") or "1000")
local keyed = os.getenv("KEYED") == "1"
local bodies = {}
local prefix = ""
tid = 0
local counter = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
-- Keys are unique per run (KEY_PREFIX, set by the caller) and wrk thread (tid).
local threads = 0
setup = function(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
init = function(args)
  prefix = (os.getenv("KEY_PREFIX") or tostring(os.time())) .. "-" .. tostring(tid)
  for b = 1, 8 do
    local parts = {}
    for i = 1, per do
      if keyed then
        parts[i] = string.format('{"item_id": %d, "store_id": %d, "idempotency_key": "@-%d"}',
                                 math.random(1, items), math.random(1, stores), i)
      else
        parts[i] = string.format('{"item_id": %d, "store_id": %d}', math.random(1, items), math.random(1, stores))
      end
    end
    bodies[b] = "[" .. table.concat(parts, ", ") .. "]"
  end
end
request = function()
  counter = counter + 1
  local body = bodies[counter % #bodies + 1]
  if keyed then
    body = body:gsub("@", prefix .. "-" .. counter)
  end
  return wrk.format(nil, "/sales/batch/", nil, body)
end
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "wrk_summary.lua")
