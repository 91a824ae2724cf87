//! The ingestion pipeline: read rows, chunk and embed texts, upsert in atomic batches.
//!
//! A producer thread reads rows, turns them into records (chunking long texts) and
//! embeds each batch's texts with one `embed` call; the calling thread upserts the
//! batches in order. A bounded channel of [`QUEUE_DEPTH`] batches between them lets
//! reading and embedding the next batch overlap with the fsync of the current one,
//! while memory stays bounded.

use crate::error::{Error, Location, Position, Result};
use crate::options::{BadMedia, Format, IngestOptions};
use crate::read::{MediaRef, Reader, Row};
use kernelize_embed::Embedder;
use kernelize_media::{Encoder, Input, Modality};
use kernelize_store::{Collection, MAX_ID_BYTES, Metadata, Op, Record, validate_record};
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::time::Instant;

/// Batches read ahead of the writer.
pub const QUEUE_DEPTH: usize = 4;
/// Largest metadata object, in bytes of compact JSON (the store's limit).
pub use kernelize_store::MAX_METADATA_BYTES;
/// Longest text, in bytes (the store's limit).
pub use kernelize_store::MAX_TEXT_BYTES;

/// Where ingestion is, reported after every written batch (and once at the start).
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Progress {
    /// Rows read from the file into the batches written so far (ahead by at most
    /// [`QUEUE_DEPTH`] batches while running).
    pub rows_read: u64,
    /// Records written and acknowledged.
    pub records_written: u64,
    /// Batches written and acknowledged.
    pub batches_written: u64,
    /// Bytes of the file read (estimated from rows for Parquet).
    pub bytes_read: u64,
    /// Size of the file in bytes.
    pub bytes_total: u64,
    /// Rows in the file, when the format records it (Parquet, safetensors, `.npy`).
    pub rows_total: Option<u64>,
}

/// What an ingestion did.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct IngestSummary {
    /// The input format.
    pub format: Format,
    /// Rows read from the file.
    pub rows_read: u64,
    /// Records written (rows, plus the extra records chunking made).
    pub records_written: u64,
    /// Records that are chunks of a longer text.
    pub chunks_created: u64,
    /// Texts embedded (records without a vector of their own).
    pub texts_embedded: u64,
    /// Atomic batches written.
    pub batches: u64,
    /// Bytes of the file read.
    pub bytes_read: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Records written per second.
    pub records_per_second: f64,
    /// Image or audio files encoded (media ingestion).
    pub media_encoded: u64,
    /// Bad media files left out ([`BadMedia::Skip`]).
    pub media_skipped: u64,
    /// Why, for the first [`MAX_SKIPPED_REPORTED`] of them: the file and the reason.
    pub skipped: Vec<String>,
}

/// Skipped media files a summary names one by one.
pub const MAX_SKIPPED_REPORTED: usize = 100;
/// Most records of a media batch (one `encode` call and one atomic upsert).
pub const MEDIA_BATCH_SIZE: usize = 64;
/// Most bytes of media files held by one batch before it is encoded and written.
const MEDIA_BATCH_BYTES: usize = 256 << 20;

/// The file extensions a folder walk picks up for a modality.
pub fn media_extensions(modality: Modality) -> &'static [&'static str] {
    match modality {
        Modality::Image => &["jpg", "jpeg", "png", "webp"],
        Modality::Audio => &["wav", "flac", "mp3", "ogg", "oga"],
        Modality::Text => &[],
    }
}

/// Reads `source` and upserts its rows into `collection` in atomic batches of
/// [`IngestOptions::batch_size`] records.
///
/// Rows with a vector are written with it (its dimension must be the collection's
/// and every value finite); rows with text but no vector are embedded with
/// `embedder` (one `embed` call per batch), after being split into chunks when
/// [`IngestOptions::chunk_tokens`] is set and the text is longer. A chunk becomes the
/// record `{id}#{index}` with the chunk's text and the row's metadata plus
/// `parent_id`, `chunk_index`, `chunk_start` and `chunk_end` (byte offsets into the
/// row's text).
///
/// On the first bad row, ingestion stops with [`Error::Stopped`], which names the
/// file, line or row, field and reason, and how many records and batches before it
/// were written and acknowledged. Nothing of the batch holding the bad row is
/// written. Errors found before anything is read (options, file header, schema) are
/// returned as they are.
///
/// `progress` is called on the calling thread once at the start and after every
/// written batch.
pub fn ingest(
    collection: &Collection,
    source: &Path,
    opts: &IngestOptions,
    embedder: Option<&Embedder>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<IngestSummary> {
    if opts.media_field.is_some() {
        return Err(Error::Options("a media field needs media ingestion (an image or audio encoder)".into()));
    }
    run(collection, source, opts, embedder, None, progress)
}

/// Media ingestion: reads `source` — a folder of image or audio files (recursively), a
/// Parquet file with a column of file bytes, or a JSONL / CSV / Parquet file with a
/// column of file paths ([`IngestOptions::media_field`], default `path`) — encodes every
/// file with `encoder` and upserts the records in atomic batches (at most
/// [`MEDIA_BATCH_SIZE`] records and 256 MiB of files each).
///
/// Each record keeps the row's text and metadata and gains a `media` object: `source`
/// (the path as given, or `parquet row N`), `sha256` (of the file's bytes), `bytes`, and
/// what the encoder learnt (`format`, `width`/`height` and the top ImageNet `label` of an
/// image; `sample_rate`, `channels`, `duration_secs` of a clip). A row's own `media`
/// metadata key is refused.
///
/// A file that cannot be read or encoded stops the load ([`BadMedia::Stop`], with an
/// error naming the file and what was acknowledged before it) or is left out and
/// reported in [`IngestSummary::skipped`] ([`BadMedia::Skip`]).
pub fn ingest_media(
    collection: &Collection,
    source: &Path,
    opts: &IngestOptions,
    encoder: &dyn Encoder,
    progress: &mut dyn FnMut(&Progress),
) -> Result<IngestSummary> {
    let record = encoder.record();
    if record.modality == Modality::Text {
        return Err(Error::Options("media ingestion needs an image or audio encoder".into()));
    }
    if record.dim != collection.config().dim {
        return Err(Error::Options(format!(
            "the {} encoder makes {}-dimensional vectors and the collection has dimension {}",
            record.model,
            record.dim,
            collection.config().dim
        )));
    }
    let mut opts = opts.clone();
    opts.media_field.get_or_insert_with(|| "path".into());
    if opts.media_extensions.is_empty() {
        opts.media_extensions = media_extensions(record.modality).iter().map(|e| (*e).to_owned()).collect();
    }
    opts.batch_size = opts.batch_size.min(MEDIA_BATCH_SIZE);
    run(collection, source, &opts, None, Some(encoder), progress)
}

fn run(
    collection: &Collection,
    source: &Path,
    opts: &IngestOptions,
    embedder: Option<&Embedder>,
    media: Option<&dyn Encoder>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<IngestSummary> {
    let start = Instant::now();
    let reader = Reader::open(source, opts)?;
    if let (Some(e), Some(n)) = (embedder, opts.chunk_tokens)
        && n + 2 > e.max_tokens()
    {
        return Err(Error::Options(format!(
            "chunk tokens {n} exceed what the model embeds untruncated ({} tokens)",
            e.max_tokens().saturating_sub(2)
        )));
    }
    let format = reader.format();
    let mut state =
        Progress { bytes_total: reader.total_bytes(), rows_total: reader.total_rows(), ..Progress::default() };
    progress(&state);

    let (tx, rx) = sync_channel::<Result<Batch>>(QUEUE_DEPTH);
    let cancel = AtomicBool::new(false);
    let keep = opts.keep_media.then_some(collection);
    let producer = Producer {
        vector_field: if format.is_tensor() { "vector".into() } else { opts.vector_field.clone() },
        reader,
        opts,
        embedder,
        media,
        keep,
        dim: collection.config().dim,
        tx,
        cancel: &cancel,
        records: Vec::with_capacity(opts.batch_size),
        to_embed: Vec::new(),
        to_encode: Vec::new(),
        media_bytes: 0,
        stats: Stats::default(),
        skipped: Vec::new(),
    };
    let (failure, stats, skipped) = std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name("kz-ingest-read".into())
            .spawn_scoped(s, move || producer.run())
            .map_err(|e| Error::Internal(format!("cannot start the reader thread: {e}")));
        let handle = match handle {
            Ok(h) => h,
            Err(e) => return (Some(e), Stats::default(), Vec::new()),
        };
        let mut failure = None;
        while let Ok(msg) = rx.recv() {
            // Every batch already waiting joins this one: one WAL write and one fsync
            // for the group, each batch still atomic and acknowledged on its own.
            let mut group = Vec::new();
            let mut next = Some(msg);
            while let Some(msg) = next.take() {
                match msg {
                    Ok(batch) => group.push(batch),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
                next = rx.try_recv().ok();
            }
            let (written, error) = write_group(collection, &mut group);
            for batch in &group[..written] {
                state.records_written += batch.len as u64;
                state.batches_written += 1;
                state.rows_read = batch.stats.rows_read;
                state.bytes_read = batch.stats.bytes_read;
                progress(&state);
            }
            if let Some(e) = error {
                failure = Some(Error::Store(e));
            }
            if failure.is_some() {
                break;
            }
        }
        cancel.store(true, Ordering::Relaxed);
        drop(rx);
        match handle.join() {
            Ok((stats, skipped)) => (failure, stats, skipped),
            Err(_) => (
                failure.or_else(|| Some(Error::Internal("the reader thread panicked".into()))),
                Stats::default(),
                Vec::new(),
            ),
        }
    });
    if let Some(error) = failure {
        return Err(Error::Stopped {
            records_written: state.records_written,
            batches_written: state.batches_written,
            error: Box::new(error),
        });
    }
    state.rows_read = stats.rows_read;
    state.bytes_read = stats.bytes_read;
    progress(&state);
    let seconds = start.elapsed().as_secs_f64();
    Ok(IngestSummary {
        format,
        rows_read: stats.rows_read,
        records_written: state.records_written,
        chunks_created: stats.chunks,
        texts_embedded: stats.embedded,
        batches: state.batches_written,
        bytes_read: stats.bytes_read,
        seconds,
        records_per_second: if seconds > 0.0 { state.records_written as f64 / seconds } else { 0.0 },
        media_encoded: stats.encoded,
        media_skipped: stats.skipped,
        skipped,
    })
}

/// Counters of the producer, cumulative.
#[derive(Debug, Clone, Copy, Default)]
struct Stats {
    rows_read: u64,
    bytes_read: u64,
    chunks: u64,
    embedded: u64,
    encoded: u64,
    skipped: u64,
}

/// A batch of records ready to write, with the producer's counters when it was sent.
struct Batch {
    records: Vec<Record>,
    /// Records of the batch (kept when `records` is handed to the store).
    len: usize,
    stats: Stats,
}

/// Writes the batches of `group` with one WAL write and one fsync
/// ([`Collection::write_many`]), each batch atomic on its own. When the group is refused
/// as invalid (nothing written), its batches are written one at a time, so those before
/// the bad one are still written and acknowledged. Returns how many batches were written
/// and the error that stopped the others.
fn write_group(collection: &Collection, group: &mut [Batch]) -> (usize, Option<kernelize_store::Error>) {
    let ops: Vec<Vec<Op>> = group
        .iter_mut()
        .map(|b| std::mem::take(&mut b.records).into_iter().map(|r| Op::Upsert(Arc::new(r))).collect())
        .collect();
    if ops.len() > 1 {
        match collection.write_many(ops.clone()) {
            Ok(_) => return (ops.len(), None),
            Err(kernelize_store::Error::InvalidInput(_)) => {}
            Err(e) => return (0, Some(e)),
        }
    }
    for (i, batch) in ops.into_iter().enumerate() {
        if let Err(e) = collection.write(batch) {
            return (i, Some(e));
        }
    }
    (group.len(), None)
}

/// A media file waiting for the batch's `encode` call.
struct PendingMedia {
    /// Index into the batch's records.
    record: usize,
    location: Location,
    /// The path as given, or `parquet row N`, for the record's `media.source`.
    source: String,
    bytes: Vec<u8>,
}

struct Producer<'a> {
    reader: Reader,
    opts: &'a IngestOptions,
    embedder: Option<&'a Embedder>,
    media: Option<&'a dyn Encoder>,
    /// Media ingestion with [`IngestOptions::keep_media`]: where files are kept.
    keep: Option<&'a Collection>,
    dim: usize,
    vector_field: String,
    tx: SyncSender<Result<Batch>>,
    cancel: &'a AtomicBool,
    records: Vec<Record>,
    /// Indices into `records` of the records whose text is to be embedded.
    to_embed: Vec<usize>,
    /// The batch's media files, in record order.
    to_encode: Vec<PendingMedia>,
    media_bytes: usize,
    stats: Stats,
    skipped: Vec<String>,
}

impl Producer<'_> {
    fn run(mut self) -> (Stats, Vec<String>) {
        if let Err(e) = self.produce() {
            let _ = self.tx.send(Err(e));
        }
        (self.stats, self.skipped)
    }

    /// Reads every row; `Ok` also when the writer has gone away.
    fn produce(&mut self) -> Result<()> {
        while let Some(row) = self.reader.next() {
            if self.cancel.load(Ordering::Relaxed) {
                return Ok(());
            }
            let row = row?;
            self.stats.rows_read += 1;
            if !self.add_row(row)? {
                return Ok(());
            }
        }
        self.stats.bytes_read = self.reader.bytes_read();
        if !self.records.is_empty() {
            self.flush()?;
        }
        Ok(())
    }

    fn loc(&self, row: &Row) -> Location {
        Location::new(self.reader.path(), row.position)
    }

    /// Adds a row's records, flushing full batches; `false` when the writer is gone.
    fn add_row(&mut self, row: Row) -> Result<bool> {
        if self.media.is_some() {
            return self.add_media_row(row);
        }
        let opts = self.opts;
        if let Some(vector) = &row.vector {
            let at = || self.loc(&row).with_field(self.vector_field.clone());
            if vector.len() != self.dim {
                return Err(Error::row(
                    at(),
                    format!("vector has {} dimensions, the collection has {}", vector.len(), self.dim),
                ));
            }
            if let Some(i) = vector.iter().position(|x| !x.is_finite()) {
                return Err(Error::row(at(), format!("vector[{i}] is {} (not finite)", vector[i])));
            }
            let loc = self.loc(&row);
            let record =
                Record { id: row.id, vector: row.vector.unwrap_or_default(), text: row.text, metadata: row.metadata };
            self.check(&record, &loc)?;
            return self.push(record, false);
        }
        let text = match &row.text {
            Some(t) if !t.trim().is_empty() => t,
            Some(_) => {
                return Err(Error::row(
                    self.loc(&row).with_field(opts.text_field.clone()),
                    "the text is empty and the row has no vector",
                ));
            }
            None => {
                return Err(Error::row(
                    self.loc(&row),
                    format!(
                        "the row has neither a vector ({:?}) nor a text ({:?})",
                        self.vector_field, opts.text_field
                    ),
                ));
            }
        };
        let Some(embedder) = self.embedder else {
            return Err(Error::EmbedderRequired { location: Box::new(self.loc(&row)) });
        };
        if embedder.dim() != self.dim {
            return Err(Error::Options(format!(
                "texts need embedding, but the embedder makes {}-dimensional vectors and the collection has \
                 dimension {}",
                embedder.dim(),
                self.dim
            )));
        }
        let loc = self.loc(&row);
        if let (Some(max_tokens), Some(overlap)) = (opts.chunk_tokens, opts.overlap()) {
            let chunks = embedder.chunk(text, max_tokens, overlap).map_err(|e| {
                Error::row(loc.clone().with_field(opts.text_field.clone()), format!("cannot chunk the text: {e}"))
            })?;
            if chunks.len() > 1 {
                for chunk in chunks {
                    let mut metadata = row.metadata.clone().unwrap_or_default();
                    metadata.insert("parent_id".into(), Value::from(row.id.as_str()));
                    metadata.insert("chunk_index".into(), Value::from(chunk.index));
                    metadata.insert("chunk_start".into(), Value::from(chunk.start));
                    metadata.insert("chunk_end".into(), Value::from(chunk.end));
                    let record = Record {
                        id: format!("{}#{}", row.id, chunk.index),
                        vector: Vec::new(),
                        text: Some(chunk.text),
                        metadata: Some(metadata),
                    };
                    self.check(&record, &loc)?;
                    self.stats.chunks += 1;
                    if !self.push(record, true)? {
                        return Ok(false);
                    }
                }
                return Ok(true);
            }
        }
        let record = Record { id: row.id, vector: Vec::new(), text: row.text, metadata: row.metadata };
        self.check(&record, &loc)?;
        self.push(record, true)
    }

    /// Adds a row of media ingestion: reads its file (a bad one is skipped or stops the
    /// load); the vector comes at [`Producer::flush`].
    fn add_media_row(&mut self, row: Row) -> Result<bool> {
        let field = self.opts.media_field.clone().unwrap_or_default();
        let mut loc = self.loc(&row).with_field(field.clone());
        if row.metadata.as_ref().is_some_and(|m| m.contains_key("media")) {
            return Err(Error::row(
                self.loc(&row).with_field("media"),
                "the metadata key \"media\" is reserved for what media ingestion records",
            ));
        }
        let (source, bytes) = match row.media {
            None => return Err(Error::row(loc, format!("the row has no media file ({field:?})"))),
            Some(MediaRef::Bytes(b)) => {
                (format!("{} row {}", self.reader.path().display(), row.position.line_or_row()), Ok(b))
            }
            Some(MediaRef::Path(p)) => {
                if let Position::File(_) = row.position {
                    loc = Location::new(&p, row.position);
                }
                let source =
                    if self.reader.format() == Format::Folder { row.id.clone() } else { p.display().to_string() };
                (source, kernelize_media::read_media_file(&p).map_err(|e| e.to_string()))
            }
        };
        let bytes = match bytes {
            Ok(b) => b,
            Err(reason) => return self.bad_media(loc, reason).map(|()| true),
        };
        let record = Record { id: row.id, vector: Vec::new(), text: row.text, metadata: row.metadata };
        self.check(&record, &loc)?;
        self.media_bytes += bytes.len();
        self.to_encode.push(PendingMedia { record: self.records.len(), location: loc, source, bytes });
        self.records.push(record);
        if self.records.len() >= self.opts.batch_size || self.media_bytes >= MEDIA_BATCH_BYTES {
            return self.flush();
        }
        Ok(true)
    }

    /// A bad media file: an error under [`BadMedia::Stop`], else counted and reported.
    fn bad_media(&mut self, location: Location, reason: String) -> Result<()> {
        match self.opts.bad_media {
            BadMedia::Stop => Err(Error::row(location, reason)),
            BadMedia::Skip => {
                self.stats.skipped += 1;
                if self.skipped.len() < MAX_SKIPPED_REPORTED {
                    self.skipped.push(format!("{location}: {reason}"));
                }
                Ok(())
            }
        }
    }

    /// Encodes the batch's media files and gives their records vectors and `media`
    /// metadata; records of files that fail are dropped (skip) or the load stops.
    fn encode_media(&mut self) -> Result<()> {
        let Some(encoder) = self.media else {
            return Err(Error::Internal("media to encode without an encoder".into()));
        };
        let pending = std::mem::take(&mut self.to_encode);
        self.media_bytes = 0;
        let inputs: Vec<Input<'_>> = pending.iter().map(|p| Input::Bytes(&p.bytes)).collect();
        let results = encoder.encode_with_info(&inputs);
        drop(inputs);
        if results.len() != pending.len() {
            return Err(Error::Internal(format!("{} files gave {} results", pending.len(), results.len())));
        }
        let mut dropped = vec![false; self.records.len()];
        for (p, result) in pending.into_iter().zip(results) {
            let encoded = match result {
                Ok(e) => e,
                Err(e) => {
                    self.bad_media(p.location, e.to_string())?;
                    if let Some(d) = dropped.get_mut(p.record) {
                        *d = true;
                    }
                    continue;
                }
            };
            let Some(record) = self.records.get_mut(p.record) else {
                return Err(Error::Internal("a media file without its record".into()));
            };
            let info = kernelize_media::media_metadata(&p.source, &p.bytes, encoded.info);
            if let (Some(c), Some(sha)) = (self.keep, info.get("sha256").and_then(|v| v.as_str())) {
                c.put_media(sha, &p.bytes)?;
            }
            record.metadata.get_or_insert_with(Metadata::new).insert("media".into(), Value::Object(info));
            record.vector = encoded.vector;
            if let Some(record) = self.records.get(p.record) {
                self.check(record, &p.location)?;
            }
            self.stats.encoded += 1;
        }
        if dropped.iter().any(|d| *d) {
            let mut i = 0;
            self.records.retain(|_| {
                let keep = !dropped.get(i).copied().unwrap_or(false);
                i += 1;
                keep
            });
        }
        Ok(())
    }

    /// Checks the store's limits on id, text and metadata, naming the field.
    fn check(&self, r: &Record, loc: &Location) -> Result<()> {
        let opts = self.opts;
        let field = |f: &str| loc.clone().with_field(f);
        if r.id.is_empty() {
            return Err(Error::row(field(&opts.id_field), "id is empty"));
        }
        if r.id.len() > MAX_ID_BYTES {
            return Err(Error::row(
                field(&opts.id_field),
                format!("id {:?} is {} bytes, the limit is {MAX_ID_BYTES}", truncate(&r.id), r.id.len()),
            ));
        }
        if let Some(t) = &r.text
            && t.len() > MAX_TEXT_BYTES
        {
            return Err(Error::row(
                field(&opts.text_field),
                format!("text is {} bytes, the limit is {MAX_TEXT_BYTES}", t.len()),
            ));
        }
        if let Some(m) = &r.metadata {
            let n = json_len(m);
            if n > MAX_METADATA_BYTES {
                return Err(Error::row(
                    field(&opts.metadata_field),
                    format!("metadata is {n} bytes of JSON, the limit is {MAX_METADATA_BYTES}"),
                ));
            }
        }
        // The store's own check, as a safety net (records to embed get their vector later).
        if !r.vector.is_empty() {
            validate_record(r, self.dim).map_err(|e| Error::row(loc.clone(), e.to_string()))?;
        }
        Ok(())
    }

    /// Appends a record; flushes a full batch. `false` when the writer is gone.
    fn push(&mut self, record: Record, embed: bool) -> Result<bool> {
        if embed {
            self.to_embed.push(self.records.len());
        }
        self.records.push(record);
        if self.records.len() >= self.opts.batch_size {
            return self.flush();
        }
        Ok(true)
    }

    /// Embeds the batch's texts (encodes its media) and sends the batch. `false` when
    /// the writer is gone.
    fn flush(&mut self) -> Result<bool> {
        if !self.to_encode.is_empty() {
            self.encode_media()?;
        }
        if !self.to_embed.is_empty() {
            let embedder = self.embedder.ok_or_else(|| Error::Internal("texts to embed without an embedder".into()))?;
            let texts: Vec<&str> = self
                .to_embed
                .iter()
                .map(|&i| self.records.get(i).and_then(|r| r.text.as_deref()).unwrap_or(""))
                .collect();
            let vectors = embedder.embed(&texts)?;
            if vectors.len() != texts.len() {
                return Err(Error::Internal(format!("{} texts gave {} vectors", texts.len(), vectors.len())));
            }
            for (&i, v) in self.to_embed.iter().zip(vectors) {
                if let Some(r) = self.records.get_mut(i) {
                    r.vector = v;
                }
            }
            self.stats.embedded += self.to_embed.len() as u64;
            self.to_embed.clear();
        }
        self.stats.bytes_read = self.reader.bytes_read();
        let records = std::mem::replace(&mut self.records, Vec::with_capacity(self.opts.batch_size));
        Ok(self.tx.send(Ok(Batch { len: records.len(), records, stats: self.stats })).is_ok())
    }
}

/// The first 64 bytes of an id, for messages.
fn truncate(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Length of `m` as compact JSON, without building the string.
fn json_len(m: &Metadata) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    let _ = serde_json::to_writer(&mut c, m);
    c.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_len_matches_serialization() {
        let mut m = Metadata::new();
        m.insert("a".into(), Value::from("x\"y"));
        m.insert("b".into(), serde_json::json!([1, 2.5, null]));
        assert_eq!(json_len(&m), serde_json::to_vec(&m).unwrap().len());
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        let s = "é".repeat(40);
        assert_eq!(truncate(&s).len(), 64);
        assert_eq!(truncate("abc"), "abc");
    }
}
