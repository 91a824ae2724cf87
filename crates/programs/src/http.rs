//! HTTP backends: an OpenAI-compatible server (`POST {base}/v1/chat/completions`:
//! OpenAI, vLLM, llama.cpp's server, LM Studio, …) and Ollama (`POST {base}/api/chat`).
//!
//! A JSON output format is sent as the server's structured-output option (OpenAI's
//! `response_format` with a strict `json_schema`, Ollama's `format`), the schema text
//! embedded verbatim so its property order — the answer's field order — survives.
//! Answers stream when the caller gives a [`TokenSink`] (server-sent events for
//! OpenAI, NDJSON lines for Ollama).
//!
//! Everything the server controls is bounded: a body is read incrementally up to
//! [`MAX_BODY_BYTES`], a stream line up to [`MAX_LINE_BYTES`]; a malformed answer is an
//! [`Error::Backend`] saying what was wrong. HTTP statuses map to retryable (429, 5xx,
//! 408, connection failures) or not (other 4xx), with the server's `Retry-After`.
//! Timeouts, retries and fallbacks are the resilience layer's
//! ([`crate::resilience`]); the client here only bounds connecting and each read.

use std::time::{Duration, Instant, SystemTime};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::{Error, Result};
use crate::lm::{Backend, Message, OutputFormat, Request, Response, TokenSink, Usage};

/// Most bytes read of a response body (or of a whole stream).
pub const MAX_BODY_BYTES: usize = 8 << 20;
/// Longest line of a streamed answer (an SSE `data:` line, an NDJSON line).
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// Most bytes of an error body kept for the message.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Characters of the server's error message shown.
const MAX_ERROR_CHARS: usize = 300;

/// Connection settings shared by the HTTP backends.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Bound on opening a connection.
    pub connect_timeout: Duration,
    /// Bound on each read (the wait for the next bytes, not the whole answer).
    pub read_timeout: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions { connect_timeout: Duration::from_secs(10), read_timeout: Duration::from_secs(120) }
    }
}

fn client(name: &str, opts: &HttpOptions) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(opts.connect_timeout)
        .read_timeout(opts.read_timeout)
        // A redirected POST would be replayed as a GET elsewhere: treat it as an error.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| backend_err(name, format!("cannot build the HTTP client: {e}"), false, None))
}

fn endpoint(base: &str, path: &str) -> Result<String> {
    let base = base.trim_end_matches('/');
    let url = reqwest::Url::parse(base).map_err(|e| Error::invalid(format!("backend URL {base:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Error::invalid(format!("backend URL {base:?}: the scheme is http or https")));
    }
    Ok(format!("{base}{path}"))
}

fn backend_err(name: &str, message: impl Into<String>, retryable: bool, retry_after: Option<Duration>) -> Error {
    Error::Backend { backend: name.to_owned(), message: message.into(), retryable, retry_after }
}

/// A transport failure (connect, send, read): retryable.
fn transport_err(name: &str, what: &str, e: &reqwest::Error) -> Error {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "failed"
    };
    // The URL is already known to the operator; the error text without it stays short.
    let e = e.to_string();
    backend_err(name, format!("{what} {kind}: {e}"), true, None)
}

/// The schema text as a raw JSON value (embedded verbatim: property order kept).
fn raw_schema(format: &OutputFormat) -> Result<Option<&RawValue>> {
    match format {
        OutputFormat::Text => Ok(None),
        OutputFormat::Json { schema } => serde_json::from_str::<&RawValue>(schema)
            .map(Some)
            .map_err(|e| Error::invalid(format!("the output schema is not valid JSON: {e}"))),
    }
}

/// Whether a status is worth retrying: 408, 429 and 5xx.
pub fn status_is_retryable(status: u16) -> bool {
    status == 408 || status == 429 || (500..=599).contains(&status)
}

/// Parses a `Retry-After` value: delay seconds, or an HTTP date (a date in the past is
/// zero). `None` for anything else.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Turns a non-success response into an error: status class, `Retry-After`, and the
/// server's message (its `error.message` or `error` field, else the start of the body).
async fn status_error(name: &str, mut resp: reqwest::Response) -> Error {
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    let mut body = Vec::new();
    // Best effort: the status alone decides the class.
    while body.len() < MAX_ERROR_BODY {
        match resp.chunk().await {
            Ok(Some(c)) => body.extend_from_slice(&c[..c.len().min(MAX_ERROR_BODY - body.len())]),
            _ => break,
        }
    }
    let detail = error_detail(&body);
    let mut message = format!("HTTP {status}");
    if !detail.is_empty() {
        message.push_str(": ");
        message.push_str(&detail);
    }
    if status.is_redirection() {
        message.push_str(" (redirects are not followed: check the base URL)");
    }
    backend_err(name, message, status_is_retryable(status.as_u16()), retry_after)
}

fn error_detail(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let from_json = serde_json::from_str::<serde_json::Value>(&text).ok().and_then(|v| {
        let e = v.get("error")?;
        e.get("message").and_then(|m| m.as_str()).or_else(|| e.as_str()).map(str::to_owned)
    });
    let detail = from_json.unwrap_or_else(|| text.trim().to_owned());
    let mut out: String = detail.chars().filter(|c| !c.is_control()).take(MAX_ERROR_CHARS).collect();
    if detail.chars().count() > MAX_ERROR_CHARS {
        out.push('…');
    }
    out
}

/// Reads a whole body, at most [`MAX_BODY_BYTES`].
async fn read_body(name: &str, resp: &mut reqwest::Response) -> Result<Vec<u8>> {
    let too_big =
        || backend_err(name, format!("the response body is over the {} MiB bound", MAX_BODY_BYTES >> 20), false, None);
    if resp.content_length().is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_big());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| transport_err(name, "reading the response", &e))? {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(too_big());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn parse_json<'de, T: Deserialize<'de>>(name: &str, what: &str, bytes: &'de [u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| {
        let start: String =
            String::from_utf8_lossy(&bytes[..bytes.len().min(80)]).chars().filter(|c| !c.is_control()).collect();
        backend_err(name, format!("{what} is not the expected JSON ({e}); it starts with {start:?}"), false, None)
    })
}

/// Splits a streamed body into lines, bounding each line and the whole stream.
struct LineReader {
    buf: Vec<u8>,
    /// Bytes of `buf` already searched for a newline.
    scanned: usize,
    total: usize,
    eof: bool,
}

impl LineReader {
    fn new() -> LineReader {
        LineReader { buf: Vec::new(), scanned: 0, total: 0, eof: false }
    }

    /// The next line, without its `\n` or `\r\n`; `None` at the end of the body.
    async fn next(&mut self, name: &str, resp: &mut reqwest::Response) -> Result<Option<String>> {
        loop {
            if let Some(line) = self.take_line(name)? {
                return Ok(Some(line));
            }
            if self.eof {
                return Ok(None);
            }
            match resp.chunk().await.map_err(|e| transport_err(name, "reading the stream", &e))? {
                Some(chunk) => self.push(name, &chunk)?,
                None => self.eof = true,
            }
        }
    }

    fn push(&mut self, name: &str, chunk: &[u8]) -> Result<()> {
        self.total += chunk.len();
        if self.total > MAX_BODY_BYTES {
            return Err(backend_err(
                name,
                format!("the stream is over the {} MiB bound", MAX_BODY_BYTES >> 20),
                false,
                None,
            ));
        }
        self.buf.extend_from_slice(chunk);
        Ok(())
    }

    fn take_line(&mut self, name: &str) -> Result<Option<String>> {
        let found = self.buf[self.scanned..].iter().position(|&b| b == b'\n').map(|i| i + self.scanned);
        let (end, newline) = match found {
            Some(i) => (i, true),
            None if self.eof && !self.buf.is_empty() => (self.buf.len(), false),
            None => {
                self.scanned = self.buf.len();
                if self.buf.len() > MAX_LINE_BYTES {
                    return Err(self.line_too_long(name));
                }
                return Ok(None);
            }
        };
        if end > MAX_LINE_BYTES {
            return Err(self.line_too_long(name));
        }
        let mut line: Vec<u8> = if newline {
            let mut l: Vec<u8> = self.buf.drain(..=end).collect();
            l.pop(); // the '\n'
            l
        } else {
            std::mem::take(&mut self.buf)
        };
        self.scanned = 0;
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        String::from_utf8(line).map(Some).map_err(|_| backend_err(name, "a stream line is not UTF-8", false, None))
    }

    fn line_too_long(&self, name: &str) -> Error {
        backend_err(name, format!("a stream line is over the {} MiB bound", MAX_LINE_BYTES >> 20), false, None)
    }
}

fn send_token(sink: Option<&TokenSink>, delta: &str) {
    if let Some(s) = sink
        && !delta.is_empty()
    {
        // A caller that stopped listening still gets the whole answer back.
        let _ = s.send(delta.to_owned());
    }
}

// ---------------------------------------------------------------------------------------
// OpenAI-compatible

/// An OpenAI-compatible chat-completions server.
#[derive(Clone)]
pub struct OpenAiBackend {
    client: reqwest::Client,
    url: String,
    api_key: Option<String>,
    model: String,
    name: String,
}

impl std::fmt::Debug for OpenAiBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiBackend")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .finish_non_exhaustive()
    }
}

impl OpenAiBackend {
    /// A backend for `model` at `base_url` (`https://api.openai.com`,
    /// `http://127.0.0.1:8080`; the path `/v1/chat/completions` is appended), named
    /// `openai:{model}`, with default [`HttpOptions`].
    ///
    /// # Errors
    /// [`Error::Invalid`] for a URL that is not http(s).
    pub fn new(base_url: &str, model: impl Into<String>) -> Result<OpenAiBackend> {
        OpenAiBackend::with_options(base_url, model, &HttpOptions::default())
    }

    /// As [`OpenAiBackend::new`], with connection settings.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a URL that is not http(s); [`Error::Backend`] if the HTTP
    /// client cannot be built.
    pub fn with_options(base_url: &str, model: impl Into<String>, opts: &HttpOptions) -> Result<OpenAiBackend> {
        let model = model.into();
        let name = format!("openai:{model}");
        Ok(OpenAiBackend {
            client: client(&name, opts)?,
            url: endpoint(base_url, "/v1/chat/completions")?,
            api_key: None,
            model,
            name,
        })
    }

    /// Sends `Authorization: Bearer {key}`.
    #[must_use]
    pub fn api_key(mut self, key: impl Into<String>) -> OpenAiBackend {
        self.api_key = Some(key.into());
        self
    }

    /// Renames the backend (two servers of one model in a fallback chain).
    #[must_use]
    pub fn named(mut self, name: impl Into<String>) -> OpenAiBackend {
        self.name = name.into();
        self
    }

    /// The model name sent.
    pub fn model(&self) -> &str {
        &self.model
    }

    async fn run(&self, req: &Request, sink: Option<TokenSink>) -> Result<Response> {
        let start = Instant::now();
        let schema = raw_schema(&req.format)?;
        let body = OpenAiBody {
            model: &self.model,
            messages: &req.messages,
            temperature: req.sampling.temperature,
            top_p: req.sampling.top_p,
            seed: req.sampling.seed,
            max_tokens: req.sampling.max_tokens,
            stop: &req.stop,
            response_format: schema.map(|schema| ResponseFormat {
                ty: "json_schema",
                json_schema: JsonSchema { name: "answer", strict: true, schema },
            }),
            stream: sink.is_some(),
            stream_options: sink.is_some().then_some(StreamOptions { include_usage: true }),
        };
        let mut http = self.client.post(&self.url).json(&body);
        if let Some(key) = &self.api_key {
            http = http.bearer_auth(key);
        }
        let mut resp = http.send().await.map_err(|e| transport_err(&self.name, "the request", &e))?;
        if !resp.status().is_success() {
            return Err(status_error(&self.name, resp).await);
        }
        let mut out = Response {
            text: String::new(),
            usage: Usage::default(),
            backend: self.name.clone(),
            model: self.model.clone(),
            latency: Duration::ZERO,
            cached: false,
            attempts: 1,
            finish_reason: "stop".into(),
        };
        match sink {
            None => {
                let bytes = read_body(&self.name, &mut resp).await?;
                let parsed: OpenAiResponse = parse_json(&self.name, "the response", &bytes)?;
                let choice = parsed
                    .choices
                    .into_iter()
                    .next()
                    .ok_or_else(|| backend_err(&self.name, "the response has no choices", false, None))?;
                out.text = choice.message.content.unwrap_or_default();
                if let Some(r) = choice.finish_reason {
                    out.finish_reason = r;
                }
                if let Some(u) = parsed.usage {
                    out.usage = Usage { prompt_tokens: u.prompt_tokens, completion_tokens: u.completion_tokens };
                }
                if let Some(m) = parsed.model {
                    out.model = m;
                }
            }
            Some(sink) => self.read_stream(&mut resp, &sink, &mut out).await?,
        }
        out.latency = start.elapsed();
        Ok(out)
    }

    async fn read_stream(&self, resp: &mut reqwest::Response, sink: &TokenSink, out: &mut Response) -> Result<()> {
        let mut lines = LineReader::new();
        let mut finished = false;
        while let Some(line) = lines.next(&self.name, resp).await? {
            let Some(data) = line.strip_prefix("data:") else { continue }; // event:, id:, comments, blank
            let data = data.trim_start();
            if data == "[DONE]" {
                return Ok(());
            }
            let chunk: OpenAiChunk<'_> = parse_json(&self.name, "a stream event", data.as_bytes())?;
            if let Some(e) = chunk.error {
                return Err(backend_err(
                    &self.name,
                    format!("error in the stream: {}", error_detail(format!(r#"{{"error":{}}}"#, e.get()).as_bytes())),
                    false,
                    None,
                ));
            }
            for c in chunk.choices {
                if let Some(d) = c.delta.and_then(|d| d.content) {
                    send_token(Some(sink), &d);
                    out.text.push_str(&d);
                }
                if let Some(r) = c.finish_reason {
                    out.finish_reason = r;
                    finished = true;
                }
            }
            if let Some(u) = chunk.usage {
                out.usage = Usage { prompt_tokens: u.prompt_tokens, completion_tokens: u.completion_tokens };
            }
            if let Some(m) = chunk.model {
                out.model = m;
            }
        }
        if finished {
            // Some servers end the body without the [DONE] line.
            return Ok(());
        }
        Err(backend_err(&self.name, "the stream ended before the answer did (no [DONE])", true, None))
    }
}

#[derive(Serialize)]
struct OpenAiBody<'a> {
    model: &'a str,
    messages: &'a [Message],
    temperature: f32,
    top_p: f32,
    seed: u64,
    max_tokens: u32,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<ResponseFormat<'a>>,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
}

#[derive(Serialize)]
struct ResponseFormat<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    json_schema: JsonSchema<'a>,
}

#[derive(Serialize)]
struct JsonSchema<'a> {
    name: &'static str,
    strict: bool,
    schema: &'a RawValue,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Deserialize)]
struct OpenAiResponse {
    choices: Vec<OpenAiChoice>,
    #[serde(default)]
    usage: Option<OpenAiUsage>,
    #[serde(default)]
    model: Option<String>,
}

#[derive(Deserialize)]
struct OpenAiChoice {
    message: OpenAiMessage,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct OpenAiMessage {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct OpenAiUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

#[derive(Deserialize)]
struct OpenAiChunk<'a> {
    #[serde(default)]
    choices: Vec<OpenAiChunkChoice>,
    #[serde(default)]
    usage: Option<OpenAiUsage>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default, borrow)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct OpenAiChunkChoice {
    #[serde(default)]
    delta: Option<OpenAiMessage>,
    #[serde(default)]
    finish_reason: Option<String>,
}

impl Backend for OpenAiBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn complete<'a>(&'a self, req: &'a Request, sink: Option<TokenSink>) -> BoxFuture<'a, Result<Response>> {
        Box::pin(self.run(req, sink))
    }
}

// ---------------------------------------------------------------------------------------
// Ollama

/// An Ollama server's chat API.
#[derive(Debug, Clone)]
pub struct OllamaBackend {
    client: reqwest::Client,
    url: String,
    model: String,
    name: String,
}

impl OllamaBackend {
    /// A backend for `model` at `base_url` (`http://127.0.0.1:11434`; the path
    /// `/api/chat` is appended), named `ollama:{model}`, with default [`HttpOptions`].
    ///
    /// # Errors
    /// [`Error::Invalid`] for a URL that is not http(s).
    pub fn new(base_url: &str, model: impl Into<String>) -> Result<OllamaBackend> {
        OllamaBackend::with_options(base_url, model, &HttpOptions::default())
    }

    /// As [`OllamaBackend::new`], with connection settings.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a URL that is not http(s); [`Error::Backend`] if the HTTP
    /// client cannot be built.
    pub fn with_options(base_url: &str, model: impl Into<String>, opts: &HttpOptions) -> Result<OllamaBackend> {
        let model = model.into();
        let name = format!("ollama:{model}");
        Ok(OllamaBackend { client: client(&name, opts)?, url: endpoint(base_url, "/api/chat")?, model, name })
    }

    /// Renames the backend.
    #[must_use]
    pub fn named(mut self, name: impl Into<String>) -> OllamaBackend {
        self.name = name.into();
        self
    }

    /// The model name sent.
    pub fn model(&self) -> &str {
        &self.model
    }

    async fn run(&self, req: &Request, sink: Option<TokenSink>) -> Result<Response> {
        let start = Instant::now();
        let body = OllamaBody {
            model: &self.model,
            messages: &req.messages,
            stream: sink.is_some(),
            format: raw_schema(&req.format)?,
            options: OllamaOptions {
                temperature: req.sampling.temperature,
                top_p: req.sampling.top_p,
                seed: req.sampling.seed,
                num_predict: req.sampling.max_tokens,
                stop: &req.stop,
            },
        };
        let mut resp = self
            .client
            .post(&self.url)
            .json(&body)
            .send()
            .await
            .map_err(|e| transport_err(&self.name, "the request", &e))?;
        if !resp.status().is_success() {
            return Err(status_error(&self.name, resp).await);
        }
        let mut out = Response {
            text: String::new(),
            usage: Usage::default(),
            backend: self.name.clone(),
            model: self.model.clone(),
            latency: Duration::ZERO,
            cached: false,
            attempts: 1,
            finish_reason: "stop".into(),
        };
        match sink {
            None => {
                let bytes = read_body(&self.name, &mut resp).await?;
                let line: OllamaLine = parse_json(&self.name, "the response", &bytes)?;
                if let Some(e) = line.error {
                    return Err(backend_err(&self.name, format!("error: {e}"), false, None));
                }
                self.apply(&line, &mut out, None);
                if !line.done {
                    return Err(backend_err(&self.name, "the response is not done (\"done\": false)", false, None));
                }
            }
            Some(sink) => {
                let mut lines = LineReader::new();
                let mut done = false;
                while let Some(text) = lines.next(&self.name, &mut resp).await? {
                    if text.trim().is_empty() {
                        continue;
                    }
                    let line: OllamaLine = parse_json(&self.name, "a stream line", text.as_bytes())?;
                    if let Some(e) = line.error {
                        return Err(backend_err(&self.name, format!("error in the stream: {e}"), false, None));
                    }
                    self.apply(&line, &mut out, Some(&sink));
                    if line.done {
                        done = true;
                        break;
                    }
                }
                if !done {
                    return Err(backend_err(
                        &self.name,
                        "the stream ended before the answer did (no done line)",
                        true,
                        None,
                    ));
                }
            }
        }
        out.latency = start.elapsed();
        Ok(out)
    }

    fn apply(&self, line: &OllamaLine, out: &mut Response, sink: Option<&TokenSink>) {
        if let Some(m) = &line.message {
            send_token(sink, &m.content);
            out.text.push_str(&m.content);
        }
        if line.done {
            out.usage = Usage { prompt_tokens: line.prompt_eval_count, completion_tokens: line.eval_count };
            if let Some(r) = &line.done_reason {
                out.finish_reason.clone_from(r);
            }
        }
        if let Some(m) = &line.model {
            out.model.clone_from(m);
        }
    }
}

#[derive(Serialize)]
struct OllamaBody<'a> {
    model: &'a str,
    messages: &'a [Message],
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<&'a RawValue>,
    options: OllamaOptions<'a>,
}

#[derive(Serialize)]
struct OllamaOptions<'a> {
    temperature: f32,
    top_p: f32,
    seed: u64,
    num_predict: u32,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
}

#[derive(Deserialize)]
struct OllamaLine {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    message: Option<OllamaMessage>,
    #[serde(default)]
    done: bool,
    #[serde(default)]
    done_reason: Option<String>,
    #[serde(default)]
    prompt_eval_count: u64,
    #[serde(default)]
    eval_count: u64,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct OllamaMessage {
    #[serde(default)]
    content: String,
}

impl Backend for OllamaBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn complete<'a>(&'a self, req: &'a Request, sink: Option<TokenSink>) -> BoxFuture<'a, Result<Response>> {
        Box::pin(self.run(req, sink))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("1", now), Some(Duration::from_secs(1)));
        assert_eq!(parse_retry_after(" 120 ", now), Some(Duration::from_secs(120)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(parse_retry_after(&later, now), Some(Duration::from_secs(30)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
    }

    #[test]
    fn status_classes() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(status_is_retryable(s), "{s}");
        }
        for s in [400, 401, 403, 404, 422, 301] {
            assert!(!status_is_retryable(s), "{s}");
        }
    }

    #[test]
    fn error_detail_reads_openai_and_ollama_errors() {
        assert_eq!(error_detail(br#"{"error":{"message":"bad key","type":"x"}}"#), "bad key");
        assert_eq!(error_detail(br#"{"error":"model not found"}"#), "model not found");
        assert_eq!(error_detail(b"  plain\ntext "), "plaintext");
        let long = "x".repeat(1000);
        assert_eq!(error_detail(long.as_bytes()).chars().count(), MAX_ERROR_CHARS + 1);
    }

    #[test]
    fn lines_split_across_chunks_and_bounded() {
        let mut r = LineReader::new();
        r.push("t", b"data: a\r").unwrap();
        assert_eq!(r.take_line("t").unwrap(), None);
        r.push("t", b"\ndata: b\n\npartial").unwrap();
        assert_eq!(r.take_line("t").unwrap().as_deref(), Some("data: a"));
        assert_eq!(r.take_line("t").unwrap().as_deref(), Some("data: b"));
        assert_eq!(r.take_line("t").unwrap().as_deref(), Some(""));
        assert_eq!(r.take_line("t").unwrap(), None);
        r.eof = true;
        assert_eq!(r.take_line("t").unwrap().as_deref(), Some("partial"));
        assert_eq!(r.take_line("t").unwrap(), None);

        let mut r = LineReader::new();
        r.push("t", &vec![b'x'; MAX_LINE_BYTES + 1]).unwrap();
        let e = r.take_line("t").unwrap_err().to_string();
        assert!(e.contains("stream line is over"), "{e}");
    }

    #[test]
    fn schema_is_embedded_verbatim() {
        let schema = r#"{"type":"object","properties":{"zeta":{"type":"string"},"alpha":{"type":"number"}}}"#;
        let format = OutputFormat::Json { schema: schema.into() };
        let raw = raw_schema(&format).unwrap();
        let body = serde_json::to_string(&JsonSchema { name: "answer", strict: true, schema: raw.unwrap() }).unwrap();
        assert!(body.contains(schema), "{body}");
        assert!(raw_schema(&OutputFormat::Json { schema: "{".into() }).is_err());
    }

    #[test]
    fn urls_checked() {
        assert!(OpenAiBackend::new("ftp://x", "m").is_err());
        assert!(OllamaBackend::new("not a url", "m").is_err());
        let b = OpenAiBackend::new("http://127.0.0.1:1/", "m").unwrap().api_key("sk-secret");
        assert_eq!(b.url, "http://127.0.0.1:1/v1/chat/completions");
        assert!(!format!("{b:?}").contains("sk-secret"));
    }
}
