//! The write log: one JetStream stream (file storage) whose subjects are
//! `kz.<cluster>.w.<collection incarnation>.<shard>`. A write batch becomes one message per shard
//! (split further when it would pass the server's payload limit) carrying the store's own
//! batch encoding, published with a `Nats-Msg-Id` so a retried write is stored once; the
//! publish acknowledgement's stream sequence is the write token.

use crate::config::ClusterConfig;
use crate::error::{Error, Result};
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures::StreamExt;
use std::time::Duration;

/// The log.
#[derive(Clone)]
pub struct Log {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: String,
    /// The mirror that keeps changes for change data capture (none: turned off).
    changes: Option<String>,
    /// `kz.<cluster>.w`: the stream's subjects start with it.
    prefix: String,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log").field("stream", &self.stream).finish()
    }
}

/// One message read back from the log.
#[derive(Debug)]
pub struct Entry {
    /// Stream sequence number.
    pub seq: u64,
    /// The store's batch encoding.
    pub payload: Bytes,
}

fn nats(e: impl std::fmt::Display) -> Error {
    Error::unavailable("nats", e)
}

impl Log {
    /// Connects (retrying the first connection too) and makes the stream if missing.
    pub async fn connect(cfg: &ClusterConfig) -> Result<Log> {
        let client = async_nats::ConnectOptions::new()
            .name(format!("kernelize {}", cfg.node()))
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(cfg.timing.request()))
            .connect(cfg.nats_url.as_str())
            .await
            .map_err(nats)?;
        let js = jetstream::new(client.clone());
        let changes = (cfg.changes.retention_secs > 0).then(|| cfg.changes_stream_name());
        let log = Log { client, js, stream: cfg.stream_name(), changes, prefix: format!("kz.{}.w", cfg.name) };
        log.ensure_stream(log.log_config(cfg)).await?;
        if let Some(name) = &log.changes {
            let mirror = stream::Config {
                name: name.clone(),
                mirror: Some(stream::Source { name: log.stream.clone(), ..Default::default() }),
                storage: stream::StorageType::File,
                num_replicas: cfg.stream.replicas,
                max_age: Duration::from_secs(cfg.changes.retention_secs),
                max_bytes: if cfg.changes.max_mb == 0 { -1 } else { (cfg.changes.max_mb << 20) as i64 },
                ..Default::default()
            };
            log.ensure_stream(mirror).await?;
        }
        Ok(log)
    }

    fn log_config(&self, cfg: &ClusterConfig) -> stream::Config {
        stream::Config {
            name: self.stream.clone(),
            subjects: vec![format!("{}.>", self.prefix)],
            storage: stream::StorageType::File,
            num_replicas: cfg.stream.replicas,
            duplicate_window: Duration::from_secs(cfg.stream.duplicate_window_secs),
            allow_direct: true,
            ..Default::default()
        }
    }

    async fn ensure_stream(&self, want: stream::Config) -> Result<()> {
        // Wait out a NATS server that is still starting (JetStream answers after the port).
        let mut last = None;
        for _ in 0..50 {
            match self.js.get_or_create_stream(want.clone()).await {
                Ok(_) => return Ok(()),
                Err(e) => last = Some(e.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(nats(format!("stream {}: {}", want.name, last.unwrap_or_default())))
    }

    /// Subject of a shard's writes.
    pub fn write_subject(&self, cid: &str, shard: u32) -> String {
        format!("{}.{cid}.{shard}", self.prefix)
    }

    /// The core NATS client (query requests and commit notices).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Fails at once while the client is not connected (it would queue the request until
    /// it reconnects, and the caller would wait out its timeout for nothing).
    pub fn connected(&self) -> Result<()> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            _ => Err(nats(format!("not connected to {}; reconnecting", self.client.server_info().host))),
        }
    }

    /// Largest message the server accepts, in bytes.
    pub fn max_payload(&self) -> usize {
        self.client.server_info().max_payload.max(64 << 10)
    }

    /// Publishes one message and waits for the stream's acknowledgement; returns its
    /// sequence number (a duplicate id returns the first copy's).
    pub async fn publish(&self, subject: String, payload: Bytes, msg_id: &str) -> Result<u64> {
        self.connected()?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", msg_id);
        let ack = self.js.publish_with_headers(subject, headers, payload).await.map_err(nats)?;
        let ack = ack.await.map_err(nats)?;
        Ok(ack.sequence)
    }

    async fn stream(&self) -> Result<stream::Stream<()>> {
        self.js.get_stream_no_info(&self.stream).await.map_err(nats)
    }

    /// Sequence number of the last message on `subject` (0: none, or all trimmed).
    pub async fn last_seq(&self, subject: &str) -> Result<u64> {
        let stream = self.stream().await?;
        match stream.get_last_raw_message_by_subject(subject).await {
            Ok(m) => Ok(m.sequence),
            Err(e) if matches!(e.kind(), stream::LastRawMessageErrorKind::NoMessageFound) => Ok(0),
            Err(e) => Err(nats(e)),
        }
    }

    /// Messages on `subject` from sequence `from` on, in order, as they arrive (an ordered
    /// consumer: recreated by the client after a gap or a reconnect).
    pub async fn tail(&self, subject: &str, from: u64) -> Result<impl futures::Stream<Item = Result<Entry>> + use<>> {
        let stream = self.stream().await?;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: subject.to_owned(),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: from.max(1) },
                ..Default::default()
            })
            .await
            .map_err(nats)?;
        let messages = consumer.messages().await.map_err(nats)?;
        Ok(messages.map(|m| {
            let m = m.map_err(nats)?;
            let seq = m.info().map_err(nats)?.stream_sequence;
            Ok(Entry { seq, payload: m.message.payload.clone() })
        }))
    }

    /// Removes the messages of `subject` below sequence `keep_from` (they are sealed).
    pub async fn trim(&self, subject: &str, keep_from: u64) -> Result<u64> {
        let stream = self.stream().await?;
        let r = stream.purge().filter(subject).sequence(keep_from).await.map_err(nats)?;
        Ok(r.purged)
    }

    /// Deletes the stream and its mirror, and every message in them (a cluster taken
    /// down for good).
    pub async fn delete_stream(&self) -> Result<()> {
        if let Some(name) = &self.changes {
            self.js.delete_stream(name).await.map_err(nats)?;
        }
        self.js.delete_stream(&self.stream).await.map_err(nats)?;
        Ok(())
    }

    /// Removes every message of a dropped collection, from the log and its mirror.
    pub async fn purge_collection(&self, cid: &str) -> Result<()> {
        let filter = format!("{}.{cid}.>", self.prefix);
        self.stream().await?.purge().filter(filter.clone()).await.map_err(nats)?;
        if let Some(name) = &self.changes {
            let mirror = self.js.get_stream_no_info(name).await.map_err(nats)?;
            mirror.purge().filter(filter).await.map_err(nats)?;
        }
        Ok(())
    }

    /// The changes of a collection incarnation after position `after` (0: from the
    /// oldest kept): whole log messages, in order, until they hold `limit` writes or the
    /// mirror has no more, waiting up to `wait` for the first. Positions are the
    /// mirror's sequence numbers.
    pub async fn changes(&self, cid: &str, after: u64, limit: usize, wait: Duration) -> Result<Vec<Entry>> {
        let Some(name) = &self.changes else {
            return Err(Error::Invalid("change data capture is off (changes.retention_secs = 0)".into()));
        };
        // One request: the stream's info comes with it.
        let mirror = self.js.get_stream(name).await.map_err(nats)?;
        let first = mirror.cached_info().state.first_sequence;
        if after > 0 && after + 1 < first {
            return Err(Error::Expired { after, earliest: first - 1 });
        }
        let consumer = mirror
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: format!("{}.{cid}.*", self.prefix),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: after + 1 },
                ..Default::default()
            })
            .await
            .map_err(nats)?;
        let mut messages = consumer.messages().await.map_err(nats)?;
        let (mut out, mut writes) = (Vec::new(), 0usize);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Wait for the first message; after it, only for what is already pending.
            let until =
                if out.is_empty() { deadline } else { tokio::time::Instant::now() + Duration::from_millis(500) };
            let m = match tokio::time::timeout_at(until, messages.next()).await {
                Err(_) | Ok(None) => break,
                Ok(Some(m)) => m.map_err(nats)?,
            };
            let info = m.info().map_err(nats)?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            writes += kernelize_store::wal_batch_len(&m.message.payload).unwrap_or(1);
            out.push(Entry { seq, payload: m.message.payload.clone() });
            if pending == 0 || writes >= limit {
                break;
            }
        }
        Ok(out)
    }
}
