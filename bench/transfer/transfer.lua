-- transfer.lua - wrk script: POST /v1/transfers between random accounts of
-- the bench set (ids 00000000-0000-7000-8001-NNNNNNNNNNNN, N = 1..count),
-- each with its own Idempotency-Key, signed as the bench customer.
--
-- args: count subject roles timestamp signature

local count
local tag
local seq = 0

local function id(n)
  return string.format("00000000-0000-7000-8001-%012d", n)
end

function init(args)
  count = tonumber(args[1])
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["X-Auth-Subject"] = args[2]
  wrk.headers["X-Auth-Roles"] = args[3]
  wrk.headers["X-Auth-Timestamp"] = args[4]
  wrk.headers["X-Auth-Signature"] = args[5]
  -- Threads share no state: a seed and a key prefix of their own.
  local addr = tonumber(tostring({}):match("0x(%x+)"), 16) or 0
  math.randomseed(os.time() + addr % 1000003)
  tag = string.format("w%x-%x", os.time(), math.random(0, 0x7fffffff))
end

function request()
  local a = math.random(count)
  local b = math.random(count - 1)
  if b >= a then b = b + 1 end
  seq = seq + 1
  wrk.headers["Idempotency-Key"] = tag .. "-" .. seq
  local body = string.format(
    '{"from_account_id":"%s","to_account_id":"%s","amount":%d,"currency":"EUR"}',
    id(a), id(b), math.random(1, 100))
  return wrk.format("POST", "/v1/transfers", nil, body)
end
