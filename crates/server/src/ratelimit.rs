//! Per-key rate limits shared by every node of a cluster: one token bucket per key in
//! Redis, taken from by a Lua script (atomic on the Redis server, timed by Redis's own
//! clock), so a key limited to N requests a second gets about N across all nodes, not N
//! per node. When Redis cannot be reached the node falls back to its own bucket (limits
//! then hold per node) and says so in its log, rather than refusing every request.

use std::time::Duration;

/// `KEYS[1]`: the bucket; `ARGV`: rate per second, burst. Returns `{allowed, wait_ms}`.
const TAKE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or burst
local ts = tonumber(b[2]) or now
if now > ts then tokens = math.min(burst, tokens + (now - ts) * rate / 1000) end
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(math.max(now, ts)))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {allowed, wait}
";

/// The shared limiter.
pub struct SharedLimiter {
    conn: redis::aio::ConnectionManager,
    script: redis::Script,
    prefix: String,
}

impl std::fmt::Debug for SharedLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLimiter").field("prefix", &self.prefix).finish()
    }
}

impl SharedLimiter {
    /// Connects to Redis (`redis://…`); buckets are named `kz:rl:<cluster>:<key id>`.
    pub async fn connect(url: &str, cluster: &str) -> anyhow::Result<SharedLimiter> {
        use anyhow::Context;
        let client = redis::Client::open(url).with_context(|| format!("redis_url {url:?}"))?;
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_millis(500)))
            .set_number_of_retries(1);
        let conn = tokio::time::timeout(Duration::from_secs(5), client.get_connection_manager_with_config(cfg))
            .await
            .map_err(|_| anyhow::anyhow!("redis at {url}: no connection within 5 s"))?
            .with_context(|| format!("redis at {url}"))?;
        Ok(SharedLimiter { conn, script: redis::Script::new(TAKE), prefix: format!("kz:rl:{cluster}:") })
    }

    /// Takes one request from the key's bucket of `rate` per second and `burst` (the
    /// limits in force: a reload changes them for the next request): `Ok(Ok(()))`,
    /// `Ok(Err(seconds to wait))`, or `Err` when Redis did not answer.
    pub async fn take(&self, key_id: &str, rate: u32, burst: u32) -> Result<Result<(), u64>, redis::RedisError> {
        let mut conn = self.conn.clone();
        let (allowed, wait_ms): (i64, i64) = self
            .script
            .key(format!("{}{key_id}", self.prefix))
            .arg(rate.max(1))
            .arg(burst.max(1))
            .invoke_async(&mut conn)
            .await?;
        Ok(if allowed == 1 { Ok(()) } else { Err((wait_ms.max(1) as u64).div_ceil(1000)) })
    }
}
