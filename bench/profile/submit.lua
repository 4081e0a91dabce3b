-- wrk: POST /v1/tasks from 64 buyers, complexity 1-10, with the admin token.
local token = os.getenv("AICP_TOKEN")
local n = 0
request = function()
  n = n + 1
  local body = string.format('{"buyer_id":"profile-%d","description":"profile task","complexity":%d}', n % 64, n % 10 + 1)
  return wrk.format("POST", "/v1/tasks", {
    ["Authorization"] = "Bearer " .. token,
    ["Content-Type"] = "application/json",
  }, body)
end
