//! Group commit of Redis batches on a proxy worker: the batches of the requests that arrive
//! while the worker's previous Redis call is in flight go to Redis together, in one script
//! call, and each request gets back exactly the answer its own call would have given.
//!
//! Why: every script call costs redis-server a command parse, a Lua call and a reply, and the
//! gateway a write, a read and two wake-ups; on a busy gateway that made the Redis backend
//! cost half the local one's throughput (benches/RESULTS.md). Grouping changes nothing a
//! client can see:
//! - The batches of one call are judged one after another, in arrival order, at one reading of
//!   the Redis server's clock, inside one atomic script — as if the calls had reached Redis at
//!   the same instant in that order. No limit is ever exceeded, locally or across instances.
//! - No request waits for a timer to fill a group: a lone request goes at once; the group is
//!   whatever queued up behind the call in flight (so it grows with the load, and costs
//!   nothing at low load).
//! - A call that fails or times out answers "decide locally" to every batch in it, exactly as
//!   each single call would have failed.
//!
//! Off the proxy workers (the main runtime, multi-threaded test runtimes) a batch is sent on
//! its own, as a group of one.

use std::cell::RefCell;
use std::sync::Arc;

use ::redis::Script;
use tokio::sync::{mpsc, oneshot};

use super::redis::{on_proxy_worker, RedisLink};

/// At most this many batches in one script call (bounds the script's run time in Redis, which
/// runs nothing else meanwhile); more wait for the next call.
const MAX_GROUP: usize = 64;

/// The group-commit script: `ARGV[1]` batches, each `lock_flag, n` in ARGV followed by `t,
/// burst` per bucket, its keys in order in KEYS (the lock key first when the flag is `1`).
/// Every batch is judged as `batch.rs` says, one after another at one `TIME` reading; the
/// reply is, per batch, the number of fields then the fields: `{pttl}` when its lock key is
/// live (nothing charged), else `{-2, allowed, remaining, retry_after_us, reset_after_us, …}`
/// for each bucket checked, stopping after the first refusal. The GCRA is the one of
/// `gcra.rs`, in µs of Redis' clock; a bucket's key expires when the bucket would be full.
///
/// Redis' cost is in its commands, not in the Lua arithmetic, so each key is read once (one
/// `MGET` for the whole group) and written once (its last TAT), however many batches of the
/// group touch it; `PTTL` only for a lock key that exists. `replicate_commands` lets Redis < 5
/// write after `TIME` (a no-op on newer servers).
pub(super) const GROUP_LUA: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local index, unique = {}, {}
for _, key in ipairs(KEYS) do
  if not index[key] then
    unique[#unique + 1] = key
    index[key] = #unique
  end
end
local stored = redis.call('MGET', unpack(unique))
local tat, changed = {}, {}
local function batch(k, a, lock, n)
  if lock then
    if stored[index[KEYS[k]]] then
      local pttl = redis.call('PTTL', KEYS[k])
      if pttl == -1 or pttl > 0 then return {pttl} end
    end
    k = k + 1
  end
  local fields = {-2}
  for i = 0, n - 1 do
    local key = KEYS[k + i]
    local t = tonumber(ARGV[a + 2 * i])
    local burst = tonumber(ARGV[a + 2 * i + 1])
    local tau = t * (burst - 1)
    local current = tat[key] or tonumber(stored[index[key]]) or now
    if current < now then current = now end
    local allow_at = current - tau
    if now < allow_at then
      fields[#fields + 1] = 0
      fields[#fields + 1] = 0
      fields[#fields + 1] = allow_at - now
      fields[#fields + 1] = current - now
      return fields
    end
    local new_tat = current + t
    if not tat[key] then changed[#changed + 1] = key end
    tat[key] = new_tat
    fields[#fields + 1] = 1
    fields[#fields + 1] = math.floor((now + tau + t - new_tat) / t)
    fields[#fields + 1] = 0
    fields[#fields + 1] = new_tat - now
  end
  return fields
end
local out = {}
local k, a = 1, 2
for _ = 1, tonumber(ARGV[1]) do
  local lock = ARGV[a] == '1'
  local n = tonumber(ARGV[a + 1])
  a = a + 2
  local fields = batch(k, a, lock, n)
  out[#out + 1] = #fields
  for _, f in ipairs(fields) do out[#out + 1] = f end
  if lock then k = k + 1 end
  k = k + n
  a = a + 2 * n
end
for _, key in ipairs(changed) do
  redis.call('SET', key, string.format('%.0f', tat[key]), 'PX', math.ceil((tat[key] - now) / 1000))
end
return out
"#;

/// One request's batch, as the script reads it.
pub(super) struct Batch {
    /// The failed-auth lock key to probe first, if any.
    pub(super) lock_key: Option<String>,
    /// Bucket key, GCRA interval (µs) and burst, in checking order.
    pub(super) buckets: Vec<(String, u64, u32)>,
}

/// A batch waiting for the worker's next call, and where its answer goes (`None`: Redis did
/// not answer, decide locally).
struct Queued {
    batch: Batch,
    answer: oneshot::Sender<Option<Vec<i64>>>,
}

thread_local! {
    /// Per link id: the queue of this proxy worker's grouping task.
    static QUEUES: RefCell<Vec<(u64, mpsc::UnboundedSender<Queued>)>> = const { RefCell::new(Vec::new()) };
}

/// Decides `batch` in Redis: queued for this proxy worker's next call, or alone off the
/// workers. The answer is the batch's own fields (see [`GROUP_LUA`]); `None` when Redis did
/// not answer (degraded and not this call's turn to probe, an error, a timeout).
pub(super) async fn decide(link: &Arc<RedisLink>, script: &Script, batch: Batch) -> Option<Vec<i64>> {
    let (answer, answered) = oneshot::channel();
    match enqueue(link, script, Queued { batch, answer }) {
        Ok(()) => answered.await.ok().flatten(),
        // Off the workers, or the worker's task is gone (its runtime is shutting down).
        Err(queued) => call(link, script, std::iter::once(&queued.batch)).await?.pop(),
    }
}

/// Puts `queued` in this proxy worker's queue for `link`, starting the worker's grouping task
/// on first use; gives it back off the proxy workers.
fn enqueue(link: &Arc<RedisLink>, script: &Script, queued: Queued) -> Result<(), Queued> {
    if !on_proxy_worker() {
        return Err(queued);
    }
    QUEUES.with_borrow_mut(|queues| {
        let live = queues.iter().position(|(id, queue)| *id == link.id() && !queue.is_closed());
        let at = match live {
            Some(at) => at,
            None => {
                queues.retain(|(id, _)| *id != link.id());
                let (queue, receiver) = mpsc::unbounded_channel();
                tokio::spawn(run_groups(link.clone(), script.clone(), receiver));
                queues.push((link.id(), queue));
                queues.len() - 1
            }
        };
        queues[at].1.send(queued).map_err(|mpsc::error::SendError(queued)| queued)
    })
}

/// The grouping task: takes everything queued (up to [`MAX_GROUP`]), makes one call, hands
/// each batch its answer; repeats. Ends when the worker's queue is dropped.
async fn run_groups(link: Arc<RedisLink>, script: Script, mut queued: mpsc::UnboundedReceiver<Queued>) {
    let mut group: Vec<Queued> = Vec::with_capacity(MAX_GROUP);
    while queued.recv_many(&mut group, MAX_GROUP).await > 0 {
        let mut replies = call(&link, &script, group.iter().map(|q| &q.batch)).await.map(Vec::into_iter);
        for queued in group.drain(..) {
            let reply = replies.as_mut().and_then(Iterator::next);
            let _ = queued.answer.send(reply);
        }
    }
}

/// One script call for `batches`; each batch's fields in order, or `None` when Redis did not
/// answer or the reply does not read as one answer per batch.
async fn call<'b>(
    link: &Arc<RedisLink>,
    script: &Script,
    batches: impl ExactSizeIterator<Item = &'b Batch>,
) -> Option<Vec<Vec<i64>>> {
    let count = batches.len();
    let mut invocation = script.prepare_invoke();
    invocation.arg(count);
    for batch in batches {
        invocation.arg(u8::from(batch.lock_key.is_some())).arg(batch.buckets.len());
        if let Some(key) = &batch.lock_key {
            invocation.key(key);
        }
        for (key, interval, burst) in &batch.buckets {
            invocation.key(key).arg(*interval).arg(*burst);
        }
    }
    let invocation = &invocation;
    let reply: Vec<i64> =
        link.run(false, |mut conn| async move { invocation.invoke_async(&mut conn).await }).await?;
    let answers = split_reply(&reply, count);
    if answers.is_none() {
        tracing::warn!(len = reply.len(), batches = count, "unexpected reply from the Redis batch script");
    }
    answers
}

/// `{n1, fields1…, n2, fields2…}` → one `Vec` per batch; `None` unless it holds exactly `count`.
fn split_reply(reply: &[i64], count: usize) -> Option<Vec<Vec<i64>>> {
    let mut answers = Vec::with_capacity(count);
    let mut rest = reply;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::try_from(len).ok().filter(|&len| len <= tail.len())?;
        answers.push(tail[..len].to_vec());
        rest = &tail[len..];
    }
    (answers.len() == count).then_some(answers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_split_per_batch_or_not_at_all() {
        assert_eq!(
            split_reply(&[1, 1500, 5, -2, 1, 59, 0, 1000], 2),
            Some(vec![vec![1500], vec![-2, 1, 59, 0, 1000]])
        );
        assert_eq!(split_reply(&[], 0), Some(vec![]));
        // Too few, too many, a length past the end, a negative length.
        assert_eq!(split_reply(&[1, 1500], 2), None);
        assert_eq!(split_reply(&[1, 1500, 1, 7], 1), None);
        assert_eq!(split_reply(&[3, -2, 1], 1), None);
        assert_eq!(split_reply(&[-1, 5], 1), None);
    }
}
