//! `kernelize fleet …`: the operator's side of the fleet control plane, over the server's
//! HTTP API (`/v1/fleet/…`). Every command is one or two requests; answers are printed as
//! JSON (pretty for one object, one line per item for lists). An error answer is printed
//! with its HTTP status, code and message, and the exit code is 1.

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Map, Value, json};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// `fleet` arguments: where the server is and how to authenticate.
#[derive(Args, Debug)]
pub struct FleetArgs {
    /// The server's base URL.
    #[arg(long, env = "KERNELIZE_SERVER", default_value = "http://127.0.0.1:7700", global = true)]
    pub server: String,
    /// API key (`kz_…`); reads need reader, releases and deployments writer, device
    /// decisions, tokens, groups, bulk and approvals admin.
    #[arg(long, env = "KERNELIZE_API_KEY", hide_env_values = true, global = true)]
    pub api_key: Option<String>,
    /// Request timeout in seconds (not applied to `events`).
    #[arg(long, default_value_t = 30, global = true)]
    pub timeout: u64,
    /// What to do.
    #[command(subcommand)]
    pub cmd: FleetCmd,
}

/// `fleet` subcommands.
#[derive(Subcommand, Debug)]
pub enum FleetCmd {
    /// Devices: list, show, accept, reject, revoke, bulk operations.
    #[command(subcommand)]
    Devices(DevicesCmd),
    /// Enrollment tokens (pre-authorizations): create, list, revoke.
    #[command(subcommand)]
    Tokens(TokensCmd),
    /// Static and dynamic groups of devices.
    #[command(subcommand)]
    Groups(GroupsCmd),
    /// Releases: a signed kernel published to a channel with a version.
    #[command(subcommand)]
    Releases(ReleasesCmd),
    /// Deployments: staged rollouts of a release with approval.
    #[command(subcommand)]
    Deployments(DeploymentsCmd),
    /// The release key devices trust (`public_key`: give it to `kernelize agent
    /// --release-key`), its root version and the root documents that rotated it.
    Keys,
    /// Follow the event stream (device online/offline, phases, aborts…): one JSON line
    /// per event, until interrupted.
    Events {
        /// Replay the events after this sequence number still in the server's backlog.
        #[arg(long)]
        after: Option<u64>,
    },
}

/// `fleet devices` subcommands.
#[derive(Subcommand, Debug)]
pub enum DevicesCmd {
    /// List devices (one JSON line each).
    List {
        /// Only this status: pending, accepted, rejected, revoked, decommissioned.
        #[arg(long)]
        status: Option<String>,
        /// A filter over the device document, e.g. `labels.region = "eu" and online = true`.
        #[arg(long, conflicts_with = "group")]
        filter: Option<String>,
        /// Only members of this group.
        #[arg(long)]
        group: Option<String>,
        /// At most this many.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Show one device.
    Show {
        /// Device id.
        id: String,
    },
    /// Accept a pending (or rejected) device.
    Accept {
        /// Device id.
        id: String,
    },
    /// Reject a pending device.
    Reject {
        /// Device id.
        id: String,
    },
    /// Revoke an accepted device: its token stops working at once.
    Revoke {
        /// Device id.
        id: String,
    },
    /// Label, move or decommission the devices a selector matches. Without
    /// --expect-count a dry run shows the matched count and a sample first, and the
    /// operation goes ahead only after a yes on a terminal (elsewhere --expect-count is
    /// required).
    Bulk(BulkArgs),
}

/// `fleet devices bulk` arguments.
#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("select").required(true).args(["select_filter", "select_group", "select_ids"])))]
pub struct BulkArgs {
    /// Devices matching this filter.
    #[arg(long)]
    pub select_filter: Option<String>,
    /// Members of this group.
    #[arg(long)]
    pub select_group: Option<String>,
    /// These device ids, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub select_ids: Option<Vec<String>>,
    /// label (merge --label; an empty value removes a label), move (to static --group, or
    /// out of any group without it), decommission.
    #[arg(long, value_parser = ["label", "move", "decommission"])]
    pub action: String,
    /// `key=value` for `label` (repeatable).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Target static group of `move`.
    #[arg(long)]
    pub group: Option<String>,
    /// Only count and sample what would be touched.
    #[arg(long)]
    pub dry_run: bool,
    /// The count a dry run showed; the server refuses when the selector now matches a
    /// different number.
    #[arg(long)]
    pub expect_count: Option<u64>,
    /// Answer yes to the confirmation (still runs the dry run and prints it).
    #[arg(long, short = 'y')]
    pub yes: bool,
}

/// `fleet tokens` subcommands.
#[derive(Subcommand, Debug)]
pub enum TokensCmd {
    /// Make an enrollment token; prints it with its secret (shown only now).
    Create {
        /// Lifetime, e.g. `1h`, `7d` (at most 30 days).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// How many devices may enroll with it.
        #[arg(long)]
        uses: u64,
        /// `key=value` label given to devices enrolling with it (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Static group they join.
        #[arg(long)]
        group: Option<String>,
    },
    /// List enrollment tokens (without secrets).
    List,
    /// Revoke an enrollment token.
    Revoke {
        /// Token id.
        id: String,
    },
}

/// `fleet groups` subcommands.
#[derive(Subcommand, Debug)]
pub enum GroupsCmd {
    /// Create a static group, or a dynamic one with --filter.
    Create {
        /// Name.
        name: String,
        /// Filter over the device document (makes the group dynamic).
        #[arg(long)]
        filter: Option<String>,
    },
    /// List groups with their member counts.
    List,
    /// Show one group.
    Show {
        /// Name.
        name: String,
    },
    /// Delete a group.
    Delete {
        /// Name.
        name: String,
    },
}

/// `fleet releases` subcommands.
#[derive(Subcommand, Debug)]
pub enum ReleasesCmd {
    /// List releases, newest first.
    List,
    /// Show one release with its signed manifest.
    Show {
        /// Release id.
        id: String,
    },
    /// Publish a kernel to a channel (POST /v1/fleet/releases).
    #[command(disable_version_flag = true)]
    Publish {
        /// Kernel id (a signed kernel known to the server).
        #[arg(long)]
        kernel: String,
        /// Channel, e.g. `stable`.
        #[arg(long)]
        channel: String,
        /// Version; must be higher than every earlier release on the channel.
        #[arg(long = "version", id = "release_version", value_name = "N")]
        version: u64,
        /// JSON file with the golden queries (an array) devices run before committing.
        #[arg(long)]
        golden: Option<PathBuf>,
        /// Any further body field, `key=JSON` (a value that is not JSON is sent as a
        /// string); repeatable.
        #[arg(long = "set")]
        set: Vec<String>,
    },
}

/// `fleet deployments` subcommands.
#[derive(Subcommand, Debug)]
pub enum DeploymentsCmd {
    /// Create a deployment; it waits for approval by another principal.
    Create {
        /// A name for people.
        #[arg(long)]
        name: String,
        /// Release id.
        #[arg(long)]
        release: String,
        /// Target: a group.
        #[arg(long, required_unless_present = "filter", conflicts_with = "filter")]
        group: Option<String>,
        /// Target: a filter over the device document.
        #[arg(long)]
        filter: Option<String>,
        /// JSON file with the plan: `{phases: [...], abort_policy, …}`.
        #[arg(long)]
        plan: PathBuf,
    },
    /// List deployments with their counts.
    List,
    /// Show one deployment: plan, state, phase, counts.
    Show {
        /// Deployment id.
        id: String,
    },
    /// A deployment's execution records (one JSON line each), in rank order.
    Executions {
        /// Deployment id.
        id: String,
        /// Only executions in this state.
        #[arg(long)]
        state: Option<String>,
        /// At most this many.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Approve a deployment: fetches it, shows its release, target, plan and digest
    /// (on stderr), and approves that digest.
    Approve {
        /// Deployment id.
        id: String,
        /// Approve only if the digest is this one (what you reviewed earlier).
        #[arg(long)]
        digest: Option<String>,
    },
    /// Pause: no new offers until resumed.
    Pause {
        /// Deployment id.
        id: String,
    },
    /// Resume a paused deployment.
    Resume {
        /// Deployment id.
        id: String,
    },
    /// Go to the next phase now, skipping the bake.
    Promote {
        /// Deployment id.
        id: String,
    },
    /// Abort: no more offers; with the `revert` policy touched devices go back.
    Abort {
        /// Deployment id.
        id: String,
    },
}

/// An HTTP client of the fleet API.
struct Api {
    http: reqwest::Client,
    base: reqwest::Url,
    key: Option<String>,
}

/// Largest answer read into memory (lists of 100,000 devices fit).
const MAX_ANSWER: usize = 256 << 20;

impl Api {
    fn new(a: &FleetArgs) -> Result<Api> {
        let base = reqwest::Url::parse(&a.server).with_context(|| format!("--server {:?} is not a URL", a.server))?;
        if !matches!(base.scheme(), "http" | "https") {
            bail!("--server {:?}: the scheme must be http or https", a.server);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .context("building the HTTP client")?;
        Ok(Api { http, base, key: a.api_key.clone() })
    }

    fn url(&self, path: &str, query: &[(&str, Option<String>)]) -> Result<reqwest::Url> {
        let mut u = self.base.join(path).with_context(|| format!("joining {path} to the server URL"))?;
        {
            let mut q = u.query_pairs_mut();
            for (k, v) in query {
                if let Some(v) = v {
                    q.append_pair(k, v);
                }
            }
        }
        if u.query() == Some("") {
            u.set_query(None);
        }
        Ok(u)
    }

    fn request(&self, method: Method, url: reqwest::Url) -> reqwest::RequestBuilder {
        let r = self.http.request(method, url);
        match &self.key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }

    /// Sends a request; the JSON answer (`Null` for an empty one) or an error naming the
    /// HTTP status and the server's `{code, message}`.
    async fn call(&self, method: Method, url: reqwest::Url, body: Option<&Value>, timeout: Duration) -> Result<Value> {
        let what = format!("{method} {}", url.path());
        let mut r = self.request(method, url).timeout(timeout);
        if let Some(b) = body {
            r = r.header(reqwest::header::CONTENT_TYPE, "application/json").body(serde_json::to_vec(b)?);
        }
        let mut resp = r.send().await.with_context(|| format!("{what}: no answer from {}", self.base))?;
        let status = resp.status();
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.with_context(|| format!("{what}: reading the answer"))? {
            if bytes.len() + chunk.len() > MAX_ANSWER {
                bail!("{what}: the answer is larger than {MAX_ANSWER} bytes");
            }
            bytes.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            return Err(http_error(&what, status, &bytes));
        }
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).with_context(|| format!("{what}: the answer ({status}) is not JSON"))
    }
}

/// The error of a non-2xx answer: `HTTP 409 Conflict (conflict): message`.
fn http_error(what: &str, status: reqwest::StatusCode, body: &[u8]) -> anyhow::Error {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    match (v["code"].as_str(), v["message"].as_str()) {
        (Some(code), Some(msg)) => anyhow!("{what}: HTTP {status} ({code}): {msg}"),
        _ => {
            let text = String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned();
            anyhow!("{what}: HTTP {status}: {}", if text.is_empty() { "(empty answer)".into() } else { text })
        }
    }
}

/// `key=value` pairs into a map.
fn pairs(flag: &str, items: &[String]) -> Result<Map<String, Value>> {
    let mut m = Map::new();
    for it in items {
        let (k, v) = it.split_once('=').ok_or_else(|| anyhow!("{flag} {it:?}: expected key=value"))?;
        if k.is_empty() {
            bail!("{flag} {it:?}: the key is empty");
        }
        m.insert(k.to_owned(), Value::from(v));
    }
    Ok(m)
}

/// A JSON file, bounded.
fn json_file(flag: &str, path: &Path) -> Result<Value> {
    let meta = fs_err::metadata(path).with_context(|| flag.to_owned())?;
    if meta.len() > 16 << 20 {
        bail!("{flag} {}: larger than 16 MiB", path.display());
    }
    let text = fs_err::read_to_string(path).with_context(|| flag.to_owned())?;
    serde_json::from_str(&text).map_err(|e| anyhow!("{flag} {}: not JSON: {e} (line {})", path.display(), e.line()))
}

fn pretty(v: &Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

/// Prints `v[key]` (an array) one JSON line per item.
fn lines(v: &Value, key: &str) -> Result<()> {
    let items = v[key].as_array().ok_or_else(|| anyhow!("the answer has no {key:?} list: {v}"))?;
    let mut out = std::io::stdout().lock();
    for it in items {
        serde_json::to_writer(&mut out, it)?;
        writeln!(out)?;
    }
    Ok(())
}

fn seg(s: &str) -> String {
    // Path segments: ids and names are percent-encoded so `/`, `?` or `#` cannot
    // change the route.
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Runs a `fleet` command.
pub fn run(a: &FleetArgs) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    rt.block_on(run_async(a))?;
    Ok(ExitCode::SUCCESS)
}

async fn run_async(a: &FleetArgs) -> Result<()> {
    let api = Api::new(a)?;
    let t = Duration::from_secs(a.timeout.max(1));
    let get = |path: String, q: Vec<(&'static str, Option<String>)>| {
        let api = &api;
        async move { api.call(Method::GET, api.url(&path, &q)?, None, t).await }
    };
    let post = |path: String, body: Value| {
        let api = &api;
        async move { api.call(Method::POST, api.url(&path, &[])?, Some(&body), t).await }
    };
    let delete = |path: String| {
        let api = &api;
        async move { api.call(Method::DELETE, api.url(&path, &[])?, None, t).await }
    };
    match &a.cmd {
        FleetCmd::Devices(cmd) => match cmd {
            DevicesCmd::List { status, filter, group, limit } => {
                let q = vec![
                    ("status", status.clone()),
                    ("filter", filter.clone()),
                    ("group", group.clone()),
                    ("limit", limit.map(|l| l.to_string())),
                ];
                lines(&get("/v1/fleet/devices".into(), q).await?, "devices")?;
            }
            DevicesCmd::Show { id } => pretty(&get(format!("/v1/fleet/devices/{}", seg(id)), vec![]).await?)?,
            DevicesCmd::Accept { id } => {
                pretty(&post(format!("/v1/fleet/devices/{}/accept", seg(id)), json!({})).await?)?
            }
            DevicesCmd::Reject { id } => {
                pretty(&post(format!("/v1/fleet/devices/{}/reject", seg(id)), json!({})).await?)?
            }
            DevicesCmd::Revoke { id } => {
                pretty(&post(format!("/v1/fleet/devices/{}/revoke", seg(id)), json!({})).await?)?
            }
            DevicesCmd::Bulk(b) => bulk(&api, b, t).await?,
        },
        FleetCmd::Tokens(cmd) => match cmd {
            TokensCmd::Create { ttl, uses, labels, group } => {
                let secs = ttl.as_secs();
                if secs == 0 || ttl.subsec_nanos() != 0 {
                    bail!("--ttl {}: a whole number of seconds, at least 1", humantime::format_duration(*ttl));
                }
                let body =
                    json!({"ttl_seconds": secs, "uses": uses, "labels": pairs("--label", labels)?, "group": group});
                pretty(&post("/v1/fleet/enrollment-tokens".into(), body).await?)?;
            }
            TokensCmd::List => lines(&get("/v1/fleet/enrollment-tokens".into(), vec![]).await?, "tokens")?,
            TokensCmd::Revoke { id } => {
                delete(format!("/v1/fleet/enrollment-tokens/{}", seg(id))).await?;
                eprintln!("revoked enrollment token {id}");
            }
        },
        FleetCmd::Groups(cmd) => match cmd {
            GroupsCmd::Create { name, filter } => {
                pretty(&post("/v1/fleet/groups".into(), json!({"name": name, "filter": filter})).await?)?;
            }
            GroupsCmd::List => lines(&get("/v1/fleet/groups".into(), vec![]).await?, "groups")?,
            GroupsCmd::Show { name } => pretty(&get(format!("/v1/fleet/groups/{}", seg(name)), vec![]).await?)?,
            GroupsCmd::Delete { name } => {
                delete(format!("/v1/fleet/groups/{}", seg(name))).await?;
                eprintln!("deleted group {name}");
            }
        },
        FleetCmd::Keys => pretty(&get("/v1/fleet/keys".into(), vec![]).await?)?,
        FleetCmd::Releases(cmd) => match cmd {
            ReleasesCmd::List => lines(&get("/v1/fleet/releases".into(), vec![]).await?, "releases")?,
            ReleasesCmd::Show { id } => pretty(&get(format!("/v1/fleet/releases/{}", seg(id)), vec![]).await?)?,
            ReleasesCmd::Publish { kernel, channel, version, golden, set } => {
                let body = publish_body(kernel, channel, *version, golden.as_deref(), set)?;
                pretty(&post("/v1/fleet/releases".into(), body).await?)?;
            }
        },
        FleetCmd::Deployments(cmd) => match cmd {
            DeploymentsCmd::Create { name, release, group, filter, plan } => {
                let target = match (group, filter) {
                    (Some(g), None) => json!({"group": g}),
                    (None, Some(f)) => json!({"filter": f}),
                    _ => bail!("give --group or --filter"),
                };
                let plan = json_file("--plan", plan)?;
                let body = json!({"name": name, "release_id": release, "target": target, "plan": plan});
                pretty(&post("/v1/fleet/deployments".into(), body).await?)?;
            }
            DeploymentsCmd::List => lines(&get("/v1/fleet/deployments".into(), vec![]).await?, "deployments")?,
            DeploymentsCmd::Show { id } => pretty(&get(format!("/v1/fleet/deployments/{}", seg(id)), vec![]).await?)?,
            DeploymentsCmd::Executions { id, state, limit } => {
                let q = vec![("state", state.clone()), ("limit", limit.map(|l| l.to_string()))];
                lines(&get(format!("/v1/fleet/deployments/{}/executions", seg(id)), q).await?, "executions")?;
            }
            DeploymentsCmd::Approve { id, digest } => {
                let d = get(format!("/v1/fleet/deployments/{}", seg(id)), vec![]).await?;
                let current = d["digest"].as_str().ok_or_else(|| anyhow!("deployment {id} has no digest: {d}"))?;
                eprintln!("deployment {id} ({}), state {}", d["name"], d["state"]);
                eprintln!("  release: {}", d["release_id"]);
                eprintln!("  target:  {}", d["target"]);
                eprintln!("  created by {}", d["created_by"]);
                eprintln!("  plan:\n{}", serde_json::to_string_pretty(&d["plan"])?);
                eprintln!("  digest:  {current}");
                if let Some(want) = digest
                    && want != current
                {
                    bail!("deployment {id}: its digest is {current}, not the {want} you reviewed; review it again");
                }
                let body = json!({"digest": current});
                pretty(&post(format!("/v1/fleet/deployments/{}/approve", seg(id)), body).await?)?;
            }
            DeploymentsCmd::Pause { id } => action(&post, id, "pause").await?,
            DeploymentsCmd::Resume { id } => action(&post, id, "resume").await?,
            DeploymentsCmd::Promote { id } => action(&post, id, "promote").await?,
            DeploymentsCmd::Abort { id } => action(&post, id, "abort").await?,
        },
        FleetCmd::Events { after } => events(&api, *after).await?,
    }
    Ok(())
}

async fn action<F, Fut>(post: &F, id: &str, what: &str) -> Result<()>
where
    F: Fn(String, Value) -> Fut,
    Fut: std::future::Future<Output = Result<Value>>,
{
    pretty(&post(format!("/v1/fleet/deployments/{}/{what}", seg(id)), json!({})).await?)
}

/// The body of `releases publish`.
fn publish_body(kernel: &str, channel: &str, version: u64, golden: Option<&Path>, set: &[String]) -> Result<Value> {
    let mut body = Map::new();
    body.insert("kernel_id".into(), kernel.into());
    body.insert("channel".into(), channel.into());
    body.insert("version".into(), version.into());
    if let Some(g) = golden {
        let v = json_file("--golden", g)?;
        if !v.is_array() {
            bail!("--golden {}: expected a JSON array of golden queries", g.display());
        }
        body.insert("golden_queries".into(), v);
    }
    for s in set {
        let (k, v) = s.split_once('=').ok_or_else(|| anyhow!("--set {s:?}: expected key=JSON"))?;
        if k.is_empty() {
            bail!("--set {s:?}: the key is empty");
        }
        if body.contains_key(k) {
            bail!("--set {k}: already given by another flag");
        }
        body.insert(k.to_owned(), serde_json::from_str(v).unwrap_or_else(|_| Value::from(v)));
    }
    Ok(Value::Object(body))
}

async fn bulk(api: &Api, b: &BulkArgs, t: Duration) -> Result<()> {
    let select = match (&b.select_filter, &b.select_group, &b.select_ids) {
        (Some(f), None, None) => json!({"filter": f}),
        (None, Some(g), None) => json!({"group": g}),
        (None, None, Some(ids)) => json!({"devices": ids}),
        _ => bail!("give exactly one of --select-filter, --select-group, --select-ids"),
    };
    if b.action == "label" && b.labels.is_empty() {
        bail!("--action label needs at least one --label key=value");
    }
    if b.action != "label" && !b.labels.is_empty() {
        bail!("--label only goes with --action label");
    }
    if b.action != "move" && b.group.is_some() {
        bail!("--group only goes with --action move");
    }
    let mut body = json!({
        "select": select, "action": b.action, "labels": pairs("--label", &b.labels)?, "group": b.group,
    });
    let url = api.url("/v1/fleet/devices:bulk", &[])?;
    if b.dry_run || b.expect_count.is_none() {
        body["dry_run"] = json!(true);
        let dry = api.call(Method::POST, url.clone(), Some(&body), t).await?;
        if b.dry_run {
            return pretty(&dry);
        }
        let matched = dry["matched"].as_u64().ok_or_else(|| anyhow!("the dry run's answer has no count: {dry}"))?;
        eprintln!("{} would touch {matched} device(s); first ones:", b.action);
        for id in dry["sample"].as_array().into_iter().flatten() {
            eprintln!("  {}", id.as_str().unwrap_or_default());
        }
        if !b.yes {
            if !std::io::stdin().is_terminal() {
                bail!(
                    "not a terminal: to act on these {matched} device(s) repeat the command with --expect-count {matched} (or --yes)"
                );
            }
            eprint!("{} these {matched} device(s)? [y/N] ", b.action);
            std::io::stderr().flush()?;
            let mut answer = String::new();
            std::io::stdin().read_line(&mut answer)?;
            if !matches!(answer.trim(), "y" | "Y" | "yes") {
                bail!("not confirmed; nothing changed");
            }
        }
        body["expect_count"] = json!(matched);
    } else {
        body["expect_count"] = json!(b.expect_count);
    }
    body["dry_run"] = json!(false);
    pretty(&api.call(Method::POST, url, Some(&body), t).await?)
}

/// Follows `/v1/fleet/events`: each event's data (a JSON object) on its own line, with
/// `lagged` notices on stderr. Reconnects with `Last-Event-ID` after a dropped stream.
async fn events(api: &Api, after: Option<u64>) -> Result<()> {
    let mut last = after;
    let mut failures = 0u32;
    loop {
        let url = api.url("/v1/fleet/events", &[("after", last.map(|s| s.to_string()))])?;
        let resp = api.request(Method::GET, url).header(reqwest::header::ACCEPT, "text/event-stream").send().await;
        let mut resp = match resp {
            Ok(r) => r,
            Err(e) if failures < 5 => {
                failures += 1;
                eprintln!("event stream: {e}; reconnecting ({failures}/5)");
                tokio::time::sleep(Duration::from_secs(1 << failures)).await;
                continue;
            }
            Err(e) => return Err(e).context("GET /v1/fleet/events"),
        };
        let status = resp.status();
        if !status.is_success() {
            let body = resp.bytes().await.unwrap_or_default();
            return Err(http_error("GET /v1/fleet/events", status, &body));
        }
        failures = 0;
        let mut parser = SseParser::default();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    for ev in parser.push(&chunk)? {
                        if let Some(id) = ev.id.as_deref().and_then(|i| i.parse().ok()) {
                            last = Some(id);
                        }
                        if ev.event == "lagged" {
                            eprintln!("event stream lagged: {}", ev.data);
                            continue;
                        }
                        let v: Value = serde_json::from_str(&ev.data).unwrap_or(Value::String(ev.data.clone()));
                        let mut out = std::io::stdout().lock();
                        serde_json::to_writer(&mut out, &v)?;
                        writeln!(out)?;
                        out.flush()?;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    eprintln!("event stream: {e}; reconnecting");
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One server-sent event.
#[derive(Debug, Default, PartialEq)]
struct SseEvent {
    event: String,
    id: Option<String>,
    data: String,
}

/// An incremental `text/event-stream` parser (fields `event`, `id`, `data`; comments and
/// keep-alives skipped), bounded to 1 MiB per pending line.
#[derive(Debug, Default)]
struct SseParser {
    buf: Vec<u8>,
    cur: SseEvent,
    has_data: bool,
}

impl SseParser {
    fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if self.has_data {
                    out.push(std::mem::take(&mut self.cur));
                } else {
                    self.cur = SseEvent::default();
                }
                self.has_data = false;
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => self.cur.event = value.to_owned(),
                "id" => self.cur.id = Some(value.to_owned()),
                "data" => {
                    if self.has_data {
                        self.cur.data.push('\n');
                    }
                    self.cur.data.push_str(value);
                    self.has_data = true;
                }
                _ => {}
            }
        }
        if self.buf.len() > 1 << 20 {
            bail!("event stream: a line longer than 1 MiB");
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_parser_splits_events_across_chunks_and_skips_keepalives() {
        let mut p = SseParser::default();
        assert!(p.push(b": keep-alive\n\nid: 3\nevent: device_off").unwrap().is_empty());
        let evs = p.push(b"line\ndata: {\"a\":1}\n\nid: 4\ndata: x\ndata: y\n\n").unwrap();
        assert_eq!(
            evs,
            vec![
                SseEvent { event: "device_offline".into(), id: Some("3".into()), data: "{\"a\":1}".into() },
                SseEvent { event: String::new(), id: Some("4".into()), data: "x\ny".into() },
            ]
        );
    }

    #[test]
    fn path_segments_cannot_change_the_route() {
        assert_eq!(seg("a/b?c#d"), "a%2Fb%3Fc%23d");
        assert_eq!(seg("dev-01.x"), "dev-01.x");
    }

    #[test]
    fn publish_body_takes_golden_arrays_only_and_refuses_duplicate_fields() {
        let dir = tempfile::tempdir().unwrap();
        let g = dir.path().join("g.json");
        fs_err::write(&g, r#"[{"text": "q", "expect_ids": ["a"]}]"#).unwrap();
        let b = publish_body("k1", "stable", 3, Some(&g), &["min_agent_version=\"0.2.0\"".into()]).unwrap();
        assert_eq!(b["golden_queries"][0]["text"], "q");
        assert_eq!(b["min_agent_version"], "0.2.0");
        fs_err::write(&g, r#"{"text": "q"}"#).unwrap();
        assert!(publish_body("k1", "stable", 3, Some(&g), &[]).unwrap_err().to_string().contains("array"));
        assert!(publish_body("k1", "stable", 3, None, &["channel=x".into()]).is_err());
    }
}
