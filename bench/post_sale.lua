-- wrk script: POST /sales/ with random item and store ids (ids 1..ITEMS / 1..STORES)
local items = tonumber(os.getenv("ITEMS") or "50")
local stores = tonumber(os.getenv("STORES") or "50")
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  return wrk.format(nil, "/sales/", nil,
    string.format('{"item_id": %d, "store_id": %d}', math.random(1, items), math.random(1, stores)))
end
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "wrk_summary.lua")
