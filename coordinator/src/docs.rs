//! `GET /openapi.json` and `GET /docs`: the API described once, for programs and for people.
//!
//! The OpenAPI 3.1 document is written by hand in `openapi.json`, next to this file, and
//! embedded in the binary with `include_str!`. It is hand-written rather than generated or
//! shown with Swagger UI because the build must work offline: no Swagger UI or Redoc assets
//! may be downloaded at build time, and the page must fetch nothing from the network when
//! it is read. So one JSON document is the single source for both endpoints: served as it
//! is at `/openapi.json`, and rendered here, with `serde_json`, into one self-contained HTML
//! page (inline CSS, no JavaScript) at `/docs`. `tests/docs.rs` checks the document against
//! the router, so a route without documentation, or documentation without a route, fails.

use std::fmt::{self, Write};
use std::sync::OnceLock;

use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use serde_json::Value;

use crate::error::ApiError;

/// The OpenAPI 3.1 document of every route, embedded at compile time.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

/// HTTP methods in the order an operation list shows them.
const METHODS: [&str; 8] = [
    "get", "put", "post", "patch", "delete", "head", "options", "trace",
];

/// `GET /openapi.json`: the embedded OpenAPI document, as it is.
pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON)
}

/// `GET /docs`: the OpenAPI document as a human-readable HTML page, rendered once.
pub async fn docs() -> impl IntoResponse {
    static PAGE: OnceLock<Result<String, String>> = OnceLock::new();
    page_response(PAGE.get_or_init(|| render(OPENAPI_JSON)))
}

/// 200 with the page, or the project's 500 if the document could not be rendered.
fn page_response(page: &'static Result<String, String>) -> Response {
    match page {
        Ok(html) => Html(html.as_str()).into_response(),
        Err(error) => {
            ApiError::internal(format!("openapi.json cannot be rendered: {error}")).into_response()
        }
    }
}

/// Renders an OpenAPI document (JSON text) into one self-contained HTML page.
fn render(spec: &str) -> Result<String, String> {
    let root: Value = serde_json::from_str(spec).map_err(|e| e.to_string())?;
    if !root.get("paths").is_some_and(Value::is_object) {
        return Err("the document has no \"paths\" object".to_owned());
    }
    let mut out = String::with_capacity(spec.len() * 2);
    page(&mut out, &root).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Escapes text for HTML element content and double- or single-quoted attributes.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes `text`, then turns the Markdown the document uses (`code`, **bold**) into HTML.
fn inline(text: &str) -> String {
    let escaped = escape(text);
    let coded = pairs(&escaped, "`", "code");
    pairs(&coded, "**", "strong")
}

/// Replaces each pair of `marker`s around some text with `<tag>` and `</tag>`; an unpaired
/// marker is left as it is. Only ever given escaped text, so it cannot open other markup.
fn pairs(text: &str, marker: &str, tag: &str) -> String {
    let parts: Vec<&str> = text.split(marker).collect();
    let mut out = String::with_capacity(text.len());
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            let closing = i % 2 == 0;
            let paired = closing || i + 1 < parts.len();
            match (paired, closing) {
                (false, _) => out.push_str(marker),
                (true, false) => {
                    let _ = write!(out, "<{tag}>");
                }
                (true, true) => {
                    let _ = write!(out, "</{tag}>");
                }
            }
        }
        out.push_str(part);
    }
    out
}

/// Paragraphs (separated by blank lines), each with [`inline`] markup.
fn paragraphs(out: &mut String, text: &str) -> fmt::Result {
    for paragraph in text.split("\n\n").filter(|p| !p.trim().is_empty()) {
        writeln!(out, "<p>{}</p>", inline(paragraph.trim()))?;
    }
    Ok(())
}

/// A string field of a JSON object, or "".
fn text<'a>(value: &'a Value, key: &str) -> &'a str {
    value.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// Follows local `$ref`s (`#/components/...`) to what they name.
fn resolve<'a>(root: &'a Value, mut value: &'a Value) -> &'a Value {
    for _ in 0..8 {
        let target = value
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix('#'))
            .and_then(|pointer| root.pointer(pointer));
        match target {
            Some(target) => value = target,
            None => break,
        }
    }
    value
}

/// The name a `$ref` points to (`#/components/schemas/Task` is `Task`).
fn ref_name(value: &Value) -> Option<&str> {
    value
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.rsplit('/').next())
}

/// An HTML anchor id made of the safe characters of `name`.
fn anchor(prefix: &str, name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("{prefix}-{safe}")
}

/// A schema's type in a few words, as HTML: linked names for `$ref`s.
fn type_of(schema: &Value) -> String {
    if let Some(name) = ref_name(schema) {
        return format!(
            "<a href=\"#{}\">{}</a>",
            escape(&anchor("schema", name)),
            escape(name)
        );
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(variants) = schema.get(key).and_then(Value::as_array) {
            return variants.iter().map(type_of).collect::<Vec<_>>().join(" | ");
        }
    }
    if let Some(constant) = schema.get("const") {
        return format!("<code>{}</code>", escape(&constant.to_string()));
    }
    let mut types: Vec<String> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.clone()],
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    for t in &mut types {
        *t = match (t.as_str(), schema.get("items")) {
            ("array", Some(items)) => format!("array of {}", type_of(items)),
            _ => escape(t),
        };
    }
    let mut shown = if types.is_empty() {
        "any".to_owned()
    } else {
        types.join(" | ")
    };
    if let Some(format) = schema.get("format").and_then(Value::as_str) {
        let _ = write!(shown, " ({})", escape(format));
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        let values: Vec<String> = values
            .iter()
            .map(|v| format!("<code>{}</code>", escape(&v.to_string())))
            .collect();
        let _ = write!(shown, ": {}", values.join(", "));
    }
    shown
}

/// Limits and defaults of a schema, as plain words (`1 to 10, default 1`).
fn constraints(schema: &Value) -> String {
    let mut words = Vec::new();
    match (schema.get("minimum"), schema.get("maximum")) {
        (Some(min), Some(max)) => words.push(format!("{min} to {max}")),
        (Some(min), None) => words.push(format!("at least {min}")),
        (None, Some(max)) => words.push(format!("at most {max}")),
        (None, None) => {}
    }
    if let Some(max) = schema.get("maxItems") {
        words.push(format!("at most {max} items"));
    }
    if let Some(default) = schema.get("default") {
        words.push(format!("default {default}"));
    }
    escape(&words.join(", "))
}

/// A JSON example in a `<pre>` block.
fn example(out: &mut String, label: &str, value: &Value) -> fmt::Result {
    let pretty = serde_json::to_string_pretty(value).map_err(|_| fmt::Error)?;
    if !label.is_empty() {
        writeln!(out, "<div class=\"label\">{}</div>", inline(label))?;
    }
    writeln!(out, "<pre>{}</pre>", escape(&pretty))
}

/// The examples of a media type object: `example`, then every entry of `examples`.
fn examples(out: &mut String, root: &Value, media: &Value) -> fmt::Result {
    if let Some(value) = media.get("example") {
        match value {
            Value::String(s) => writeln!(out, "<pre>{}</pre>", escape(s))?,
            value => example(out, "Example", value)?,
        }
    }
    if let Some(map) = media.get("examples").and_then(Value::as_object) {
        for (name, entry) in map {
            let entry = resolve(root, entry);
            let summary = entry.get("summary").and_then(Value::as_str).unwrap_or(name);
            if let Some(value) = entry.get("value") {
                example(out, &format!("Example: {summary}"), value)?;
            }
        }
    }
    Ok(())
}

/// Each content type of a request body or response: its schema and examples.
fn content(out: &mut String, root: &Value, holder: &Value) -> fmt::Result {
    if let Some(content) = holder.get("content").and_then(Value::as_object) {
        for (media_type, media) in content {
            write!(
                out,
                "<div class=\"media\"><code>{}</code>",
                escape(media_type)
            )?;
            if let Some(schema) = media.get("schema") {
                write!(out, " — {}", type_of(schema))?;
            }
            writeln!(out, "</div>")?;
            examples(out, root, media)?;
        }
    }
    Ok(())
}

/// The whole page.
fn page(out: &mut String, root: &Value) -> fmt::Result {
    let info = root.get("info").unwrap_or(&Value::Null);
    let title = text(info, "title");
    writeln!(out, "<!DOCTYPE html>\n<html lang=\"en\">\n<head>")?;
    writeln!(out, "<meta charset=\"utf-8\">")?;
    writeln!(
        out,
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
    )?;
    writeln!(out, "<title>{}</title>", escape(title))?;
    writeln!(out, "<style>{STYLE}</style>\n</head>\n<body>\n<main>")?;
    writeln!(out, "<header>\n<h1>{}</h1>", escape(title))?;
    writeln!(
        out,
        "<div class=\"meta\">Version {} · OpenAPI {} · <a href=\"/openapi.json\">openapi.json</a></div>",
        escape(text(info, "version")),
        escape(text(root, "openapi"))
    )?;
    if !text(info, "summary").is_empty() {
        writeln!(
            out,
            "<p class=\"summary\">{}</p>",
            inline(text(info, "summary"))
        )?;
    }
    paragraphs(out, text(info, "description"))?;
    writeln!(out, "</header>")?;

    let groups = groups(root);
    contents(out, root, &groups)?;
    for group in &groups {
        writeln!(
            out,
            "<section class=\"tag\" id=\"{}\">\n<h2>{}</h2>",
            escape(&anchor("tag", &group.name)),
            escape(&group.name)
        )?;
        paragraphs(out, &group.description)?;
        for op in &group.operations {
            operation(out, root, op)?;
        }
        writeln!(out, "</section>")?;
    }
    schemas(out, root)?;
    writeln!(out, "</main>\n</body>\n</html>")
}

/// One operation: a method on a path.
struct Operation<'a> {
    method: &'a str,
    path: &'a str,
    item: &'a Value,
    op: &'a Value,
}

impl Operation<'_> {
    fn id(&self) -> String {
        let id = text(self.op, "operationId");
        if id.is_empty() {
            anchor("op", &format!("{}{}", self.method, self.path))
        } else {
            anchor("op", id)
        }
    }
}

/// Operations under one tag.
struct Group<'a> {
    name: String,
    description: String,
    operations: Vec<Operation<'a>>,
}

/// Operations grouped by their first tag, in the order of the document's `tags`; untagged
/// ones (or ones with an undeclared tag) last. Within a group: by path, then method.
fn groups(root: &Value) -> Vec<Group<'_>> {
    let mut groups: Vec<Group<'_>> = root
        .get("tags")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|tag| Group {
            name: text(tag, "name").to_owned(),
            description: text(tag, "description").to_owned(),
            operations: Vec::new(),
        })
        .collect();
    let paths = root
        .get("paths")
        .and_then(Value::as_object)
        .into_iter()
        .flatten();
    for (path, item) in paths {
        for method in METHODS {
            let Some(op) = item.get(method) else { continue };
            let tag = op
                .get("tags")
                .and_then(|t| t.get(0))
                .and_then(Value::as_str)
                .unwrap_or("other");
            let index = match groups.iter().position(|g| g.name == tag) {
                Some(index) => index,
                None => {
                    groups.push(Group {
                        name: tag.to_owned(),
                        description: String::new(),
                        operations: Vec::new(),
                    });
                    groups.len() - 1
                }
            };
            groups[index].operations.push(Operation {
                method,
                path,
                item,
                op,
            });
        }
    }
    groups.retain(|g| !g.operations.is_empty());
    groups
}

/// The table of contents: every operation, by tag.
fn contents(out: &mut String, root: &Value, groups: &[Group<'_>]) -> fmt::Result {
    writeln!(out, "<nav>\n<h2>Contents</h2>")?;
    for group in groups {
        writeln!(
            out,
            "<h3><a href=\"#{}\">{}</a></h3>\n<ul>",
            escape(&anchor("tag", &group.name)),
            escape(&group.name)
        )?;
        for op in &group.operations {
            writeln!(
                out,
                "<li><a href=\"#{}\"><span class=\"method {m}\">{M}</span> <code>{}</code></a> {}</li>",
                escape(&op.id()),
                escape(op.path),
                inline(text(op.op, "summary")),
                m = escape(op.method),
                M = escape(&op.method.to_uppercase()),
            )?;
        }
        writeln!(out, "</ul>")?;
    }
    if root
        .pointer("/components/schemas")
        .and_then(Value::as_object)
        .is_some_and(|s| !s.is_empty())
    {
        writeln!(out, "<h3><a href=\"#schemas\">Schemas</a></h3>")?;
    }
    writeln!(out, "</nav>")
}

/// One operation's section: summary, description, parameters, body and responses.
fn operation(out: &mut String, root: &Value, op: &Operation<'_>) -> fmt::Result {
    writeln!(
        out,
        "<section class=\"op\" id=\"{}\">\n<h3><span class=\"method {m}\">{M}</span> <code>{}</code></h3>",
        escape(&op.id()),
        escape(op.path),
        m = escape(op.method),
        M = escape(&op.method.to_uppercase()),
    )?;
    if !text(op.op, "summary").is_empty() {
        writeln!(
            out,
            "<p class=\"summary\">{}</p>",
            inline(text(op.op, "summary"))
        )?;
    }
    if !text(op.op, "operationId").is_empty() {
        writeln!(
            out,
            "<div class=\"meta\">operationId <code>{}</code></div>",
            escape(text(op.op, "operationId"))
        )?;
    }
    paragraphs(out, text(op.op, "description"))?;

    let parameters: Vec<&Value> = [op.item.get("parameters"), op.op.get("parameters")]
        .into_iter()
        .flatten()
        .filter_map(Value::as_array)
        .flatten()
        .map(|p| resolve(root, p))
        .collect();
    if !parameters.is_empty() {
        writeln!(out, "<h4>Parameters</h4>\n<table>\n<tr><th>Name</th><th>In</th><th>Type</th><th>Required</th><th>Description</th></tr>")?;
        for parameter in parameters {
            let schema = parameter.get("schema").unwrap_or(&Value::Null);
            let required = parameter.get("required").and_then(Value::as_bool) == Some(true);
            let limits = constraints(schema);
            let mut description = inline(text(parameter, "description"));
            if !limits.is_empty() {
                let _ = write!(description, " <span class=\"dim\">({limits})</span>");
            }
            if let Some(value) = parameter.get("example") {
                let shown = value
                    .as_str()
                    .map_or_else(|| value.to_string(), str::to_owned);
                let _ = write!(
                    description,
                    " <span class=\"dim\">Example: <code>{}</code></span>",
                    escape(&shown)
                );
            }
            writeln!(
                out,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(text(parameter, "name")),
                escape(text(parameter, "in")),
                type_of(schema),
                if required { "yes" } else { "no" },
                description,
            )?;
        }
        writeln!(out, "</table>")?;
    }

    if let Some(body) = op.op.get("requestBody") {
        let body = resolve(root, body);
        let required = body.get("required").and_then(Value::as_bool) == Some(true);
        writeln!(
            out,
            "<h4>Request body <span class=\"dim\">({})</span></h4>",
            if required { "required" } else { "optional" }
        )?;
        paragraphs(out, text(body, "description"))?;
        content(out, root, body)?;
    }

    if let Some(responses) = op.op.get("responses").and_then(Value::as_object) {
        writeln!(out, "<h4>Responses</h4>")?;
        for (status, response) in responses {
            let response = resolve(root, response);
            let class = match status.chars().next() {
                Some('2') => "ok",
                Some('4') => "client",
                Some('5') => "server",
                _ => "other",
            };
            writeln!(
                out,
                "<div class=\"response\">\n<div><span class=\"status {class}\">{}</span> {}</div>",
                escape(status),
                inline(text(response, "description"))
            )?;
            content(out, root, response)?;
            writeln!(out, "</div>")?;
        }
    }
    writeln!(out, "</section>")
}

/// The shared schemas: description, variants or values, and a table of properties.
fn schemas(out: &mut String, root: &Value) -> fmt::Result {
    let Some(schemas) = root
        .pointer("/components/schemas")
        .and_then(Value::as_object)
    else {
        return Ok(());
    };
    if schemas.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "<section class=\"tag\" id=\"schemas\">\n<h2>Schemas</h2>"
    )?;
    for (name, schema) in schemas {
        writeln!(
            out,
            "<section class=\"schema\" id=\"{}\">\n<h3>{}</h3>",
            escape(&anchor("schema", name)),
            escape(name)
        )?;
        paragraphs(out, text(schema, "description"))?;
        let properties = schema.get("properties").and_then(Value::as_object);
        if properties.is_none() {
            writeln!(out, "<p>Type: {}</p>", type_of(schema))?;
        }
        if let Some(properties) = properties {
            let required: Vec<&str> = schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            writeln!(out, "<table>\n<tr><th>Field</th><th>Type</th><th>Required</th><th>Description</th></tr>")?;
            for (field, property) in properties {
                let limits = constraints(property);
                let mut description = inline(text(property, "description"));
                if !limits.is_empty() {
                    let _ = write!(description, " <span class=\"dim\">({limits})</span>");
                }
                writeln!(
                    out,
                    "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    escape(field),
                    type_of(property),
                    if required.contains(&field.as_str()) {
                        "yes"
                    } else {
                        "no"
                    },
                    description,
                )?;
            }
            writeln!(out, "</table>")?;
            if schema.get("additionalProperties") == Some(&Value::Bool(false)) {
                writeln!(out, "<p class=\"dim\">No other fields are accepted.</p>")?;
            }
        }
        writeln!(out, "</section>")?;
    }
    writeln!(out, "</section>")
}

/// The page's style: a dark theme, inline, nothing fetched.
const STYLE: &str = r#"
:root { color-scheme: dark; }
body { margin: 0; background: #0f1216; color: #d8dee6; font: 15px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 20px 80px; }
a { color: #7cb7ff; text-decoration: none; }
a:hover { text-decoration: underline; }
h1 { font-size: 28px; margin: 8px 0 4px; }
h2 { font-size: 22px; margin: 40px 0 8px; padding-bottom: 6px; border-bottom: 1px solid #2a313b; text-transform: capitalize; }
h3 { font-size: 17px; margin: 0 0 6px; }
h4 { font-size: 14px; margin: 16px 0 6px; color: #aab4c0; text-transform: uppercase; letter-spacing: .04em; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 13px; }
p code, td code, li code, .label code, div code { background: #1b2129; padding: 1px 4px; border-radius: 3px; }
pre { background: #161b22; border: 1px solid #2a313b; border-radius: 6px; padding: 10px 12px; overflow-x: auto; margin: 6px 0 12px; }
.meta, .dim, .label { color: #8b96a3; font-size: 13px; }
.summary { font-size: 16px; color: #e8edf3; margin: 4px 0; }
nav { background: #141920; border: 1px solid #2a313b; border-radius: 8px; padding: 4px 18px 12px; margin-top: 24px; }
nav h2 { border: 0; margin: 12px 0 0; font-size: 18px; }
nav h3 { margin: 12px 0 4px; font-size: 15px; text-transform: capitalize; }
nav ul { list-style: none; margin: 0; padding: 0; }
nav li { margin: 2px 0; }
.op, .schema { background: #141920; border: 1px solid #2a313b; border-radius: 8px; padding: 14px 18px; margin: 16px 0; }
.method { display: inline-block; min-width: 52px; text-align: center; border-radius: 4px; padding: 1px 6px; font: 700 12px/1.6 ui-monospace, monospace; color: #0f1216; background: #8b96a3; }
.method.get { background: #5fbf7f; } .method.post { background: #6aa7ff; } .method.patch { background: #e0a84f; }
.method.put { background: #c38cf0; } .method.delete { background: #f07178; }
.status { display: inline-block; min-width: 36px; text-align: center; border-radius: 4px; padding: 0 6px; font: 700 13px/1.6 ui-monospace, monospace; color: #0f1216; }
.status.ok { background: #5fbf7f; } .status.client { background: #e0a84f; } .status.server { background: #f07178; } .status.other { background: #8b96a3; }
.response { border-left: 3px solid #2a313b; padding: 2px 0 2px 12px; margin: 10px 0; }
.media { margin: 6px 0 2px; color: #aab4c0; font-size: 13px; }
table { border-collapse: collapse; width: 100%; margin: 6px 0 10px; font-size: 14px; }
th, td { border: 1px solid #2a313b; padding: 5px 8px; text-align: left; vertical-align: top; }
th { background: #1b2129; color: #aab4c0; font-weight: 600; }
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn the_embedded_document_renders_every_path() {
        let html = render(OPENAPI_JSON).expect("openapi.json renders");
        let root: Value = serde_json::from_str(OPENAPI_JSON).expect("openapi.json parses");
        let paths = root["paths"].as_object().expect("paths");
        assert!(!paths.is_empty());
        for path in paths.keys() {
            assert!(
                html.contains(&format!("<code>{}</code>", escape(path))),
                "{path}"
            );
        }
        assert!(html.contains("<h1>AICP Coordinator API</h1>"));
        assert!(!html.contains("<script"));
    }

    #[test]
    fn every_ref_in_the_embedded_document_resolves() {
        fn check(root: &Value, value: &Value, refs: &mut usize) {
            match value {
                Value::Object(map) => {
                    if let Some(r) = map.get("$ref").and_then(Value::as_str) {
                        let pointer = r.strip_prefix('#').expect("a local $ref");
                        assert!(root.pointer(pointer).is_some(), "{r} names nothing");
                        *refs += 1;
                    }
                    map.values().for_each(|v| check(root, v, refs));
                }
                Value::Array(items) => items.iter().for_each(|v| check(root, v, refs)),
                _ => {}
            }
        }
        let root: Value = serde_json::from_str(OPENAPI_JSON).expect("openapi.json parses");
        let mut refs = 0;
        check(&root, &root, &mut refs);
        assert!(refs > 0);
    }

    #[test]
    fn strings_from_the_document_are_escaped() {
        let spec = serde_json::json!({
            "openapi": "3.1.0",
            "info": {"title": "<script>alert('t')</script>", "version": "1", "description": "a & b `<i>`"},
            "paths": {"/x<y>": {"get": {
                "operationId": "x\"onmouseover=\"bad",
                "summary": "<b>s</b>",
                "parameters": [{"name": "<n>", "in": "query", "schema": {"type": "string"}, "example": "<e>"}],
                "responses": {"200": {"description": "<d>", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/<S>"}, "example": {"k": "<v>"}}}}}
            }}},
        });
        let html = render(&spec.to_string()).expect("renders");
        for raw in [
            "<script", "<b>s", "<n>", "<e>", "<d>", "<v>", "<S>", "<i>", "/x<y>",
        ] {
            assert!(!html.contains(raw), "{raw} is not escaped in:\n{html}");
        }
        assert!(!html.contains("\"onmouseover"));
        assert!(html.contains("&lt;script&gt;alert(&#39;t&#39;)&lt;/script&gt;"));
        assert!(html.contains("a &amp; b <code>&lt;i&gt;</code>"));
    }

    #[test]
    fn markdown_pairs_become_tags_and_lone_markers_stay() {
        assert_eq!(inline("a `b` c"), "a <code>b</code> c");
        assert_eq!(inline("**x** `y"), "<strong>x</strong> `y");
        assert_eq!(inline("`a` and `b`"), "<code>a</code> and <code>b</code>");
    }

    #[test]
    fn a_document_that_does_not_parse_is_an_error() {
        assert!(render("{not json").is_err());
        assert!(render("[]").is_err());
        assert!(render(r#"{"openapi": "3.1.0"}"#).is_err());
    }

    #[tokio::test]
    async fn a_broken_document_answers_500_in_the_error_shape() {
        static BROKEN: OnceLock<Result<String, String>> = OnceLock::new();
        let response = page_response(BROKEN.get_or_init(|| render("{not json")));
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("body");
        let body: Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(body["error"]["code"], "internal");
        assert!(body["error"]["message"].is_string());
    }

    #[tokio::test]
    async fn the_handlers_answer_json_and_html() {
        let response = openapi().await.into_response();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let response = docs().await.into_response();
        assert_eq!(response.status(), StatusCode::OK);
        let content_type = response.headers()[header::CONTENT_TYPE]
            .to_str()
            .expect("ASCII");
        assert!(content_type.starts_with("text/html"), "{content_type}");
    }
}
