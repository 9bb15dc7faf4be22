-- What a job's end sends out: the completion webhook's delivery record (keys.webhook_delivery, due
-- in keys.WEBHOOKS_DUE) and the pub/sub message long polls wait for (keys.JOBS_ENDED).

-- Tell long polls (keys.JOBS_ENDED) which jobs just ended: one message a step, ids space-separated.
local function announce_ended(ids)
  if #ids > 0 then redis.call('PUBLISH', K.JOBS_ENDED, table.concat(ids, ' ')) end
end

-- A terminal job with a callback URL gets one delivery record; its event id never changes.
-- ``url`` and ``tenant`` may be passed when the caller already read them (false: no callback).
local function enqueue_webhook(id, event_type, now_ms, url, tenant)
  if url == nil then url = redis.call('HGET', K.job(id), 'callback_url') end
  if not url or url == '' then return end
  if not tenant then tenant = redis.call('HGET', K.job(id), 'tenant') end
  local did = 'wh_' .. id
  if redis.call('EXISTS', K.webhook_delivery(did)) == 1 then return end
  redis.call('HSET', K.webhook_delivery(did),
    'id', did, 'job_id', id, 'tenant', tenant, 'url', url, 'event_id', 'msg_' .. id,
    'type', event_type, 'created_ms', now_ms, 'attempts', 0, 'status', 'pending')
  redis.call('ZADD', K.WEBHOOKS_DUE, now_ms, did)
  redis.call('ZADD', K.tenant_deliveries(tenant), now_ms, did)
end
