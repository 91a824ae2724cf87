//! The operations runbooks (`docs/operations/*.md`) show only what exists: every
//! `kernelize …` command of a fenced code block (or an inline code span) names a real
//! subcommand path and only flags that subcommand accepts (its `--help`, as `deploy.rs`
//! checks the deployment files); every `curl … $S/…` line a method and path of the OpenAPI
//! document; every test named (`file.rs::function`, as on the "Exercised by:" lines) a `fn`
//! in that file.

use crate::deploy::{help_text, root};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

/// What `kernelize PATH… --help` says.
struct Usage {
    /// Flags (long and short), each with whether it takes a value.
    flags: BTreeMap<String, bool>,
    /// Subcommands.
    commands: BTreeSet<String>,
    /// Whether it takes positional arguments.
    arguments: bool,
}

/// Reads clap's help: subcommands are the entries under `Commands:` (indented by two
/// spaces); flag entries start with `-` (`  -c, --collection <COLLECTION>`, or indented by
/// six without a short form); descriptions are indented further.
fn parse_usage(help: &str) -> Usage {
    let mut flags = BTreeMap::new();
    let mut commands = BTreeSet::new();
    let mut section = "";
    let arguments = help.lines().any(|l| l == "Arguments:");
    for line in help.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            section = line;
            continue;
        }
        let entry = line.trim_start();
        let indent = line.len() - entry.len();
        if section == "Commands:" && indent == 2 {
            commands.extend(entry.split_whitespace().next().map(str::to_owned));
        } else if section != "Commands:" && indent <= 6 && entry.starts_with('-') {
            let words: Vec<&str> = entry.split_whitespace().collect();
            let names: Vec<&str> =
                words.iter().take_while(|w| w.starts_with('-')).map(|w| w.trim_end_matches(',')).collect();
            let takes_value = words.get(names.len()).is_some_and(|w| w.starts_with('<') || w.starts_with("[<"));
            flags.extend(names.into_iter().map(|n| (n.to_owned(), takes_value)));
        }
    }
    Usage { flags, commands, arguments }
}

/// Help of each subcommand path, read once.
#[derive(Default)]
struct Helps(HashMap<Vec<String>, Usage>);

impl Helps {
    fn of(&mut self, path: &[String]) -> &Usage {
        self.0.entry(path.to_vec()).or_insert_with(|| {
            let args: Vec<&str> = path.iter().map(String::as_str).collect();
            parse_usage(&help_text(&args))
        })
    }
}

/// Words that end a shell command.
const OPERATORS: &[&str] = &["|", "||", "&&", ";", "&", ">", ">>", "<", "2>", "2>&1"];

/// Shell words of one line: quotes removed, a `#` starting a word outside quotes begins
/// a comment.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut quote = None;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.get_or_insert_default().push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                word.get_or_insert_default();
            }
            (None, '#') if word.is_none() => break,
            (None, c) if c.is_whitespace() => words.extend(word.take()),
            (None, c) => word.get_or_insert_default().push(c),
        }
    }
    words.extend(word);
    words
}

/// Pieces of a runbook, each with its line number.
type Numbered = Vec<(usize, String)>;

/// The shell lines of the fenced code blocks (continuation lines joined), and the inline
/// code spans of the prose, each with the number of its (paragraph's first) line.
fn code(text: &str) -> (Numbered, Numbered) {
    let (mut blocks, mut spans) = (Vec::new(), Vec::new());
    let mut fenced = false;
    let mut pending: Option<(usize, String)> = None;
    let mut paragraph: Option<(usize, String)> = None;
    let mut end_paragraph = |p: &mut Option<(usize, String)>| {
        if let Some((n, text)) = p.take() {
            spans.extend(text.split('`').skip(1).step_by(2).map(|s| (n, s.to_owned())));
        }
    };
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim_start().starts_with("```") {
            end_paragraph(&mut paragraph);
            fenced = !fenced;
            continue;
        }
        if !fenced {
            if line.trim().is_empty() {
                end_paragraph(&mut paragraph);
            } else {
                let p = paragraph.get_or_insert_with(|| (n, String::new()));
                p.1.push_str(line);
                p.1.push('\n');
            }
            continue;
        }
        let (start, mut joined) = pending.take().unwrap_or((n, String::new()));
        match line.trim_end().strip_suffix('\\') {
            Some(head) => {
                joined.push_str(head);
                joined.push(' ');
                pending = Some((start, joined));
            }
            None => {
                joined.push_str(line);
                blocks.push((start, joined));
            }
        }
    }
    end_paragraph(&mut paragraph);
    (blocks, spans)
}

/// Every `kernelize …` command in `words`, up to the end of its shell command.
fn kernelize_commands(words: &[String]) -> Vec<&[String]> {
    let mut out = Vec::new();
    for (i, w) in words.iter().enumerate() {
        let after_cargo_flag = i > 0 && matches!(words[i - 1].as_str(), "-p" | "--package" | "--bin");
        if w == "kernelize" && !after_cargo_flag {
            let end = words[i..].iter().position(|w| OPERATORS.contains(&w.as_str())).map_or(words.len(), |e| i + e);
            out.push(&words[i..end]);
        }
    }
    out
}

/// Checks one `kernelize …` command: each word is a flag of the subcommand reached so far
/// (its value skipped), a subcommand of it, or a positional argument. Returns the number
/// of flags checked.
fn check_command(helps: &mut Helps, words: &[String]) -> Result<usize, String> {
    let mut path: Vec<String> = Vec::new();
    let (mut flags, mut positional, mut help_or_version) = (0, false, false);
    let mut i = 1;
    while i < words.len() {
        let w = &words[i];
        let usage = helps.of(&path);
        if w.starts_with('-') && w.len() > 1 {
            let name = w.split('=').next().unwrap_or(w);
            let Some(&takes_value) = usage.flags.get(name) else {
                return Err(format!("`kernelize {}` has no flag {name}", path.join(" ")));
            };
            help_or_version |= matches!(name, "-h" | "--help" | "-V" | "--version") && path.is_empty();
            if takes_value && !w.contains('=') {
                i += 1;
            }
            flags += 1;
        } else if !positional && !usage.commands.is_empty() {
            if !usage.commands.contains(w) {
                return Err(format!("`kernelize {}` has no subcommand {w:?}", path.join(" ")));
            }
            path.push(w.clone());
        } else if usage.arguments {
            positional = true;
        } else {
            return Err(format!("`kernelize {}` takes no argument {w:?}", path.join(" ")));
        }
        i += 1;
    }
    if !positional && !help_or_version && !helps.of(&path).commands.is_empty() {
        return Err(format!("`kernelize {}` needs a subcommand", path.join(" ")));
    }
    Ok(flags)
}

/// `(method, path)` of a `curl` command's request to `$S` (or an `http(s)://` URL).
fn curl_request(words: &[String]) -> Option<(String, String)> {
    let mut method = None;
    let mut data = false;
    let mut url = None;
    for (i, w) in words.iter().enumerate() {
        match w.as_str() {
            "-X" | "--request" => method = words.get(i + 1).cloned(),
            "-d" | "--data" | "--data-raw" | "--data-binary" | "-F" | "--form" => data = true,
            _ if w.contains("$S/") => url = w.split_once("$S").map(|(_, p)| p.to_owned()),
            _ if w.starts_with("http://") || w.starts_with("https://") => {
                url = w.splitn(4, '/').nth(3).map(|p| format!("/{p}"));
            }
            _ => {}
        }
    }
    let url = url?;
    let path = url.split(['?', '#']).next().unwrap_or_default().to_owned();
    let method = method.unwrap_or_else(|| if data { "POST" } else { "GET" }.to_owned()).to_lowercase();
    Some((method, path))
}

/// Whether `path` (placeholders like `<id>` allowed) is an instance of `template`
/// (`{id}` segments).
fn path_matches(path: &str, template: &str) -> bool {
    let (p, t): (Vec<&str>, Vec<&str>) = (path.split('/').collect(), template.split('/').collect());
    p.len() == t.len() && p.iter().zip(&t).all(|(p, t)| t.starts_with('{') || p == t)
}

/// The tests a runbook names, as `path/to/file.rs::function` code spans: `(line, file, fn)`.
fn named_tests(spans: &Numbered) -> Vec<(usize, String, String)> {
    spans
        .iter()
        .filter_map(|(n, s)| {
            let (file, name) = s.rsplit_once("::")?;
            let ident = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            (file.ends_with(".rs") && ident).then(|| (*n, file.to_owned(), name.to_owned()))
        })
        .collect()
}

/// Every problem of the runbook `name` (its text given).
fn problems(
    name: &str,
    text: &str,
    helps: &mut Helps,
    routes: &serde_json::Value,
    counts: &mut [usize; 4],
) -> Vec<String> {
    let mut found = Vec::new();
    let (blocks, spans) = code(text);
    let commands = blocks.iter().map(|(n, l)| (n, shell_words(l)));
    // Inline spans count when they are a whole command (not `kernelize fleet … keys`).
    let inline = spans.iter().filter(|(_, s)| s.starts_with("kernelize ") && !s.contains('…'));
    for (n, words) in commands.chain(inline.map(|(n, s)| (n, shell_words(s)))) {
        for cmd in kernelize_commands(&words) {
            match check_command(helps, cmd) {
                Ok(flags) => {
                    counts[0] += 1;
                    counts[1] += flags;
                }
                Err(e) => found.push(format!("{name}:{n}: {e}: {}", cmd.join(" "))),
            }
        }
        if let Some(at) = words.iter().position(|w| w == "curl") {
            let Some((method, path)) = curl_request(&words[at..]) else { continue };
            let paths = routes.as_object().unwrap();
            let known = paths.iter().any(|(t, ops)| path_matches(&path, t) && ops.get(&method).is_some());
            if !known {
                found.push(format!("{name}:{n}: {} {path} is not in the OpenAPI document", method.to_uppercase()));
            }
            counts[2] += 1;
        }
    }
    let tests = named_tests(&spans);
    for (n, file, f) in &tests {
        let code = fs_err::read_to_string(root().join(file)).unwrap_or_default();
        let defined = ["fn ", "async fn "].iter().any(|k| code.contains(&format!("{k}{f}(")));
        if !defined {
            found.push(format!("{name}:{n}: no `fn {f}` in {file}"));
        }
        counts[3] += 1;
    }
    let said = text.contains("\nExercised by:") || text.contains("\nNot exercised by a test:");
    if name != "README.md" && !said {
        found.push(format!("{name}: neither an \"Exercised by:\" nor a \"Not exercised by a test:\" line"));
    }
    found
}

fn runbooks() -> Vec<(String, String)> {
    let dir = root().join("docs/operations");
    let mut files: Vec<PathBuf> = fs_err::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), fs_err::read_to_string(&p).unwrap()))
        .collect()
}

#[test]
fn runbooks_use_only_commands_flags_routes_and_tests_that_exist() {
    let doc = serde_json::to_value(kernelize_server::api::openapi()).unwrap();
    let routes = &doc["paths"];
    let mut helps = Helps::default();
    let mut counts = [0; 4];
    let books = runbooks();
    let mut found = Vec::new();
    for (name, text) in &books {
        found.extend(problems(name, text, &mut helps, routes, &mut counts));
    }
    // The index lists every runbook, and every runbook it lists exists.
    let index = &books.iter().find(|(n, _)| n == "README.md").expect("docs/operations/README.md").1;
    for (name, _) in books.iter().filter(|(n, _)| n != "README.md") {
        if !index.contains(&format!("]({name})")) {
            found.push(format!("README.md does not list {name}"));
        }
    }
    for link in index.split("](").skip(1).filter_map(|s| s.split(')').next()).filter(|l| l.ends_with(".md")) {
        if !books.iter().any(|(n, _)| n == link) {
            found.push(format!("README.md lists {link}, which does not exist"));
        }
    }
    assert!(found.is_empty(), "{} problems:\n{}", found.len(), found.join("\n"));
    let [commands, flags, curls, tests] = counts;
    assert!(commands >= 40 && flags >= 60 && curls >= 20 && tests >= 40, "too little checked: {counts:?}");
}

#[test]
fn the_checks_catch_a_wrong_flag_subcommand_route_and_test() {
    let doc = serde_json::to_value(kernelize_server::api::openapi()).unwrap();
    let mut helps = Helps::default();
    let bad = "# x\n```sh\nkernelize --data-dir d backup --bogus-flag x.tar\nkernelize cluster chek\n\
               kernelize fleet deployments\nkernelize fleet keys rotate\ncurl -s -X DELETE -H \"$H\" $S/v1/collections/docs/search\n```\n\
               Use `kernelize verify --deep` too.\n\n\
               Exercised by: `crates/cli/tests/it/cli.rs::no_such_test`.\n";
    let found = problems("bad.md", bad, &mut helps, &doc["paths"], &mut [0; 4]);
    let expect = [
        "bad.md:3: `kernelize backup` has no flag --bogus-flag",
        "bad.md:4: `kernelize cluster` has no subcommand \"chek\"",
        "bad.md:5: `kernelize fleet deployments` needs a subcommand",
        "bad.md:6: `kernelize fleet keys` takes no argument \"rotate\"",
        "bad.md:7: DELETE /v1/collections/docs/search is not in the OpenAPI document",
        "bad.md:9: `kernelize verify` has no flag --deep",
        "bad.md:11: no `fn no_such_test` in crates/cli/tests/it/cli.rs",
    ];
    assert_eq!(found.len(), expect.len(), "{found:#?}");
    for (f, e) in found.iter().zip(expect) {
        assert!(f.starts_with(e), "{f}\n  expected: {e}");
    }
    // The good forms of the same lines pass.
    let good = "```sh\nkernelize --data-dir d backup -c docs x.tar\nkernelize cluster check --cluster c.toml\n\
                curl -s -H \"$H\" -H \"$J\" $S/v1/collections/docs/search -d '{}'\n```\n\n\
                Exercised by: `crates/cli/tests/it/cli.rs::create_upsert_get_stats_backup_verify_restore_export`.\n";
    let found = problems("good.md", good, &mut helps, &doc["paths"], &mut [0; 4]);
    assert!(found.is_empty(), "{found:#?}");
}
