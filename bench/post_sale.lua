-- wrk script: POST /sales/ with random item and store ids (ids 1..ITEMS / 1..STORES);
-- with KEYED=1 each sale carries an idempotency key of its own, as a till's do.
local items = tonumber(os.getenv("ITEMS") or "50")
local stores = tonumber(os.getenv("STORES") or "50")
local keyed = os.getenv("KEYED") == "1"
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
end
request = function()
  if keyed then
    counter = counter + 1
    return wrk.format(nil, "/sales/", nil,
      string.format('{"item_id": %d, "store_id": %d, "idempotency_key": "%s-%d"}',
                    math.random(1, items), math.random(1, stores), prefix, counter))
  end
  return wrk.format(nil, "/sales/", nil,
    string.format('{"item_id": %d, "store_id": %d}', math.random(1, items), math.random(1, stores)))
end
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "wrk_summary.lua")
