-- wrk: GET /v1/tasks/{id} round robin over the ids in $AICP_IDS, with the admin token.
local token = os.getenv("AICP_TOKEN")
local ids = {}
for line in io.lines(os.getenv("AICP_IDS")) do ids[#ids + 1] = line end
local n = 0
request = function()
  n = n % #ids + 1
  return wrk.format("GET", "/v1/tasks/" .. ids[n], { ["Authorization"] = "Bearer " .. token })
end
