-- wrk script: tills posting numbered sales (docs/guarantees.md, "Tills"). TILLS_FILE lists one
-- till per line, "<pos key> <store id>"; thread t of THREADS takes the lines t, t + THREADS, ...
-- Each request is the next till's in turn, with the next BATCH numbers of that till (BATCH=0:
-- one sale to POST /sales/, else POST /sales/batch/). A thread has more tills than connections,
-- so a till's previous request has been answered before its next one is made: each till sends
-- its numbers in order, as pos_client does.
local items = tonumber(os.getenv("ITEMS") or "50")
local per = tonumber(os.getenv("BATCH") or "0")
local nthreads = tonumber(os.getenv("THREADS") or "2")
local tills = {}
local turn = 0
tid = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local threads = 0
setup = function(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
init = function(args)
  local line_no = 0
  for line in io.lines(os.getenv("TILLS_FILE")) do
    line_no = line_no + 1
    if line_no % nthreads == tid % nthreads then
      local key, store = line:match("^(%S+) (%d+)$")
      tills[#tills + 1] = {auth = "Bearer " .. key, store = tonumber(store), seq = tonumber(os.getenv("SEQ_FROM") or "0")}
    end
  end
end
request = function()
  turn = turn % #tills + 1
  local till = tills[turn]
  local headers = {["Content-Type"] = "application/json", ["Authorization"] = till.auth}
  if per == 0 then
    till.seq = till.seq + 1
    return wrk.format(nil, "/sales/", headers,
      string.format('{"item_id": %d, "store_id": %d, "seq": %d}', math.random(1, items), till.store, till.seq))
  end
  local parts = {}
  for i = 1, per do
    till.seq = till.seq + 1
    parts[i] = string.format('{"item_id": %d, "store_id": %d, "seq": %d}', math.random(1, items), till.store, till.seq)
  end
  return wrk.format(nil, "/sales/batch/", headers, "[" .. table.concat(parts, ", ") .. "]")
end
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "wrk_summary.lua")
