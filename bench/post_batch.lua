-- wrk script: POST /sales/batch/ with BATCH (default 1000) random sales per request
-- (ids 1..ITEMS / 1..STORES); each thread builds 8 different bodies and cycles through them.
local items = tonumber(os.getenv("ITEMS") or "50")
local stores = tonumber(os.getenv("STORES") or "50")
local per = tonumber(os.getenv("BATCH") or "1000")
local bodies = {}
local counter = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
init = function(args)
  for b = 1, 8 do
    local parts = {}
    for i = 1, per do
      parts[i] = string.format('{"item_id": %d, "store_id": %d}', math.random(1, items), math.random(1, stores))
    end
    bodies[b] = "[" .. table.concat(parts, ", ") .. "]"
  end
end
request = function()
  counter = counter + 1
  return wrk.format(nil, "/sales/batch/", nil, bodies[counter % #bodies + 1])
end
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "wrk_summary.lua")
