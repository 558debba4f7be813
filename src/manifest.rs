//! Manifest files as text: each YAML (or JSON) document parsed into a JSON value together with
//! the byte span and quoting style of every scalar, so that an image string can be replaced
//! without touching any other byte (comments, key order, quoting, indentation, flow or block
//! style, document separators, the trailing newline).
//!
//! Built on saphyr-parser's event stream, which reports where each event starts and ends;
//! serde_yaml_ng (used to read policies and `pinhook check`'s input) reports no positions.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};
use serde_json::{Map, Number, Value};

/// A manifest that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line} column {column}: {message}")]
pub struct ParseError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// The parser's words.
    pub message: String,
}

/// How a scalar is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// `plain`
    Plain,
    /// `'single quoted'`
    Single,
    /// `"double quoted"`
    Double,
    /// `|` or `>` block scalar.
    Block,
}

/// Where a scalar is written in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scalar {
    /// Byte offset of its first character (the opening quote, if quoted).
    pub start: usize,
    /// Byte offset just after it (after the closing quote).
    pub end: usize,
    /// Its style.
    pub style: Style,
    /// 1-based line, for messages.
    pub line: usize,
}

/// Where a mapping is written, for adding a key to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// `{…}` rather than block style.
    pub flow: bool,
    /// Column of its keys (block style).
    pub indent: usize,
    /// Byte offset just after its last value.
    pub last_end: usize,
}

/// One document of a file.
#[derive(Debug, Clone)]
pub struct Document {
    /// 1-based position in the file.
    pub number: usize,
    /// The document as JSON (YAML 1.2 core schema for plain scalars).
    pub value: Value,
    scalars: HashMap<String, Scalar>,
    mappings: HashMap<String, Mapping>,
}

impl Document {
    /// The scalar at `pointer` (a JSON pointer into [`Document::value`]).
    pub fn scalar(&self, pointer: &str) -> Option<Scalar> {
        self.scalars.get(pointer).copied()
    }

    /// The mapping at `pointer`.
    pub fn mapping(&self, pointer: &str) -> Option<Mapping> {
        self.mappings.get(pointer).copied()
    }
}

/// A change to a file: replace the bytes `start..end` with `text`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Splice {
    /// First byte replaced.
    pub start: usize,
    /// Byte after the last one replaced (`start` to insert).
    pub end: usize,
    /// The new bytes.
    pub text: String,
}

/// Why a scalar cannot be rewritten in place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    /// Block scalars (`|`, `>`) are left alone.
    #[error(
        "line {line}: the image is a block scalar (| or >); write it on one line to have it pinned"
    )]
    Block {
        /// 1-based line.
        line: usize,
    },
    /// Nothing is written at that place (the value comes from elsewhere).
    #[error("the image at {pointer} is not written in this document")]
    Missing {
        /// The JSON pointer.
        pointer: String,
    },
}

/// The splice that replaces the scalar at `pointer` with `value`, in the same style.
pub fn replace(doc: &Document, pointer: &str, value: &str) -> Result<Splice, EditError> {
    let s = doc.scalar(pointer).ok_or_else(|| EditError::Missing {
        pointer: pointer.to_owned(),
    })?;
    let text = match s.style {
        Style::Plain => value.to_owned(),
        Style::Single => format!("'{}'", value.replace('\'', "''")),
        Style::Double => format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\"")),
        Style::Block => return Err(EditError::Block { line: s.line }),
    };
    Ok(Splice {
        start: s.start,
        end: s.end,
        text,
    })
}

/// The splice that adds `key: value` (both plain) at the end of the mapping at `pointer`.
pub fn append(doc: &Document, text: &str, pointer: &str, key: &str, value: &str) -> Option<Splice> {
    let m = doc.mapping(pointer)?;
    if m.flow {
        return Some(Splice {
            start: m.last_end,
            end: m.last_end,
            text: format!(", {key}: {value}"),
        });
    }
    // After the line of the last value, so a comment at its end stays on that line; with the
    // file's own line ending.
    let eol = if text.contains("\r\n") { "\r\n" } else { "\n" };
    let line = format!("{}{key}: {value}", " ".repeat(m.indent));
    Some(match text[m.last_end..].find('\n') {
        Some(i) => Splice {
            start: m.last_end + i + 1,
            end: m.last_end + i + 1,
            text: format!("{line}{eol}"),
        },
        None => Splice {
            start: text.len(),
            end: text.len(),
            text: format!("{eol}{line}"),
        },
    })
}

/// `text` with `splices` applied (they must not overlap).
pub fn apply(text: &str, mut splices: Vec<Splice>) -> String {
    splices.sort_by_key(|s| std::cmp::Reverse(s.start));
    let mut out = text.to_owned();
    for s in splices {
        out.replace_range(s.start..s.end, &s.text);
    }
    out
}

/// The manifest files named by `paths`: files as given (`-` for stdin), directories walked
/// (sorted, recursively, without hidden entries or symbolic links to directories) for
/// `*.yaml`, `*.yml` and `*.json`.
pub fn files(paths: &[std::path::PathBuf]) -> Vec<Result<std::path::PathBuf, WalkError>> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            walk(path, &mut out);
        } else {
            out.push(Ok(path.clone()));
        }
    }
    out
}

/// The text of a manifest file, or of standard input for `-`.
pub fn read(path: &std::path::Path) -> std::io::Result<String> {
    if path == std::path::Path::new("-") {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
        Ok(s)
    } else {
        std::fs::read_to_string(path)
    }
}

/// A directory that cannot be listed.
#[derive(Debug, thiserror::Error)]
#[error("{}: cannot list: {source}", dir.display())]
pub struct WalkError {
    /// The directory.
    pub dir: std::path::PathBuf,
    /// The I/O error.
    pub source: std::io::Error,
}

fn walk(dir: &std::path::Path, out: &mut Vec<Result<std::path::PathBuf, WalkError>>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(source) => {
            out.push(Err(WalkError {
                dir: dir.to_owned(),
                source,
            }));
            return;
        }
    };
    let mut entries: Vec<(std::path::PathBuf, std::fs::FileType)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_type().ok().map(|t| (e.path(), t)))
        .collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (p, kind) in entries {
        let hidden = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        // Hidden entries (.git, .github, editor files) are not manifests of the tree, and a
        // symbolic link to a directory is not followed (it may loop).
        if hidden {
            continue;
        }
        if kind.is_dir() {
            walk(&p, out);
        } else if p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
            && !(kind.is_symlink() && p.is_dir())
        {
            out.push(Ok(p));
        }
    }
}

/// Parses every document of `text`.
pub fn parse(text: &str) -> Result<Vec<Document>, ParseError> {
    let offsets = ByteOffsets::new(text);
    let mut builder = Builder {
        offsets: &offsets,
        docs: Vec::new(),
        stack: Vec::new(),
        anchors: HashMap::new(),
        scalars: HashMap::new(),
        mappings: HashMap::new(),
        root: None,
    };
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| ParseError {
            line: e.marker().line(),
            column: e.marker().col() + 1,
            message: e.info().to_owned(),
        })?;
        builder.on(event, span);
    }
    Ok(builder.docs)
}

/// Char index → byte offset (saphyr's markers count characters).
struct ByteOffsets {
    table: Option<Vec<usize>>,
    len: usize,
}

impl ByteOffsets {
    fn new(text: &str) -> Self {
        let table = (!text.is_ascii()).then(|| text.char_indices().map(|(i, _)| i).collect());
        Self {
            table,
            len: text.len(),
        }
    }

    fn byte(&self, char_index: usize) -> usize {
        match &self.table {
            None => char_index.min(self.len),
            Some(t) => t.get(char_index).copied().unwrap_or(self.len),
        }
    }
}

/// A node being built.
enum Frame {
    Map {
        pointer: String,
        anchor: usize,
        map: Map<String, Value>,
        key: Option<String>,
        merges: Vec<(Value, String)>,
        mapping: Mapping,
    },
    Seq {
        pointer: String,
        anchor: usize,
        items: Vec<Value>,
    },
}

/// A completed anchored node: its value and the scalars under it, relative to it.
struct Anchored {
    value: Value,
    scalars: Vec<(String, Scalar)>,
}

struct Builder<'o> {
    offsets: &'o ByteOffsets,
    docs: Vec<Document>,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Anchored>,
    scalars: HashMap<String, Scalar>,
    mappings: HashMap<String, Mapping>,
    root: Option<Value>,
}

impl Builder<'_> {
    /// The pointer of the node about to be added to the innermost frame.
    fn next_pointer(&self) -> String {
        match self.stack.last() {
            None => String::new(),
            Some(Frame::Map { pointer, key, .. }) => match key {
                Some(k) => format!("{pointer}/{}", escape(k)),
                // A key is being read: it gets no pointer of its own.
                None => format!("{pointer}/\u{0}key"),
            },
            Some(Frame::Seq { pointer, items, .. }) => format!("{pointer}/{}", items.len()),
        }
    }

    fn on(&mut self, event: Event<'_>, span: Span) {
        let start = self.offsets.byte(span.start.index());
        let end = self.offsets.byte(span.end.index());
        match event {
            Event::DocumentStart(_) => {
                self.scalars.clear();
                self.mappings.clear();
                self.root = None;
            }
            Event::DocumentEnd => {
                self.docs.push(Document {
                    number: self.docs.len() + 1,
                    value: self.root.take().unwrap_or(Value::Null),
                    scalars: std::mem::take(&mut self.scalars),
                    mappings: std::mem::take(&mut self.mappings),
                });
            }
            Event::Scalar(text, style, anchor, tag) => {
                let pointer = self.next_pointer();
                let is_key = matches!(self.stack.last(), Some(Frame::Map { key: None, .. }));
                if is_key {
                    if let Some(Frame::Map { key, .. }) = self.stack.last_mut() {
                        *key = Some(text.into_owned());
                    }
                    return;
                }
                let style = match style {
                    ScalarStyle::Plain => Style::Plain,
                    ScalarStyle::SingleQuoted => Style::Single,
                    ScalarStyle::DoubleQuoted => Style::Double,
                    _ => Style::Block,
                };
                let value = if style == Style::Plain && tag.is_none() {
                    plain_value(&text)
                } else {
                    Value::String(text.into_owned())
                };
                let scalar = Scalar {
                    start,
                    end,
                    style,
                    line: span.start.line(),
                };
                self.scalars.insert(pointer.clone(), scalar);
                if anchor > 0 {
                    self.anchors.insert(
                        anchor,
                        Anchored {
                            value: value.clone(),
                            scalars: vec![(String::new(), scalar)],
                        },
                    );
                }
                self.add(value, pointer);
            }
            Event::Alias(anchor) => {
                let pointer = self.next_pointer();
                let is_key = matches!(self.stack.last(), Some(Frame::Map { key: None, .. }));
                let Some(a) = self.anchors.get(&anchor) else {
                    return;
                };
                let value = a.value.clone();
                if is_key {
                    if let (Some(Frame::Map { key, .. }), Some(k)) =
                        (self.stack.last_mut(), value.as_str())
                    {
                        *key = Some(k.to_owned());
                    }
                    return;
                }
                for (rel, s) in &a.scalars {
                    self.scalars.insert(format!("{pointer}{rel}"), *s);
                }
                self.add(value, pointer);
            }
            Event::MappingStart(anchor, _) => {
                let pointer = self.next_pointer();
                self.stack.push(Frame::Map {
                    pointer,
                    anchor,
                    map: Map::new(),
                    key: None,
                    merges: Vec::new(),
                    mapping: Mapping {
                        flow: end > start,
                        indent: span.start.col(),
                        last_end: end,
                    },
                });
            }
            Event::SequenceStart(anchor, _) => {
                let pointer = self.next_pointer();
                self.stack.push(Frame::Seq {
                    pointer,
                    anchor,
                    items: Vec::new(),
                });
            }
            Event::MappingEnd => {
                if let Some(Frame::Map {
                    pointer,
                    anchor,
                    mut map,
                    merges,
                    mapping,
                    ..
                }) = self.stack.pop()
                {
                    // `<<: *base`: keys of the merged mappings that this one does not set.
                    for (merged, from) in merges {
                        let (sources, listed) = match merged {
                            Value::Array(list) => (list, true),
                            other => (vec![other], false),
                        };
                        for (i, source) in sources.into_iter().enumerate() {
                            let Value::Object(source) = source else {
                                continue;
                            };
                            for (k, v) in source {
                                if map.contains_key(&k) {
                                    continue;
                                }
                                let old = if listed {
                                    format!("{from}/{i}/{}", escape(&k))
                                } else {
                                    format!("{from}/{}", escape(&k))
                                };
                                self.rebase(&old, &format!("{pointer}/{}", escape(&k)));
                                map.insert(k, v);
                            }
                        }
                    }
                    self.mappings.insert(pointer.clone(), mapping);
                    let value = Value::Object(map);
                    self.remember(anchor, &pointer, &value);
                    self.add(value, pointer);
                }
            }
            Event::SequenceEnd => {
                if let Some(Frame::Seq {
                    pointer,
                    anchor,
                    items,
                }) = self.stack.pop()
                {
                    let value = Value::Array(items);
                    self.remember(anchor, &pointer, &value);
                    self.add(value, pointer);
                }
            }
            _ => {}
        }
    }

    /// Copies the scalar spans under `from` to `to` (merged keys).
    fn rebase(&mut self, from: &str, to: &str) {
        let moved: Vec<(String, Scalar)> = self
            .scalars
            .iter()
            .filter_map(|(p, s)| {
                p.strip_prefix(from)
                    .filter(|rest| rest.is_empty() || rest.starts_with('/'))
                    .map(|rest| (format!("{to}{rest}"), *s))
            })
            .collect();
        self.scalars.extend(moved);
    }

    /// Keeps an anchored node for its aliases.
    fn remember(&mut self, anchor: usize, pointer: &str, value: &Value) {
        if anchor == 0 {
            return;
        }
        let scalars = self
            .scalars
            .iter()
            .filter_map(|(p, s)| {
                p.strip_prefix(pointer)
                    .filter(|rest| rest.starts_with('/'))
                    .map(|rest| (rest.to_owned(), *s))
            })
            .collect();
        self.anchors.insert(
            anchor,
            Anchored {
                value: value.clone(),
                scalars,
            },
        );
    }

    /// Adds a completed node to its parent (or makes it the document's root).
    fn add(&mut self, value: Value, pointer: String) {
        let end = self.scalars.get(&pointer).map(|s| s.end);
        match self.stack.last_mut() {
            None => self.root = Some(value),
            Some(Frame::Map {
                map,
                key,
                merges,
                mapping,
                ..
            }) => {
                if let Some(end) = end {
                    mapping.last_end = end;
                }
                match key.take() {
                    Some(k) if k == "<<" => merges.push((value, pointer)),
                    Some(k) => {
                        map.insert(k, value);
                    }
                    None => {}
                }
            }
            Some(Frame::Seq { items, .. }) => items.push(value),
        }
    }
}

/// A JSON pointer token for `key`.
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// A plain scalar read with YAML 1.2's core schema.
fn plain_value(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && let Ok(i) = text.parse::<i64>()
    {
        return Value::Number(i.into());
    }
    if digits.bytes().any(|b| b.is_ascii_digit())
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
        && let Ok(f) = text.parse::<f64>()
        && let Some(n) = Number::from_f64(f)
    {
        return Value::Number(n);
    }
    Value::String(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const POD: &str = "# a pod\napiVersion: v1   # core\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - name: web\n    image: nginx:1.27   # the web server\n  - {name: side, image: 'busybox:1.36'}\n  - name: x\n    image: \"quay.io/é/x:1\"\n";

    #[test]
    fn values_follow_the_core_schema() {
        let docs = parse("a: 1\nb: true\nc: ~\nd: '1'\ne: 1.5\nf: 0x1\ng: nginx:1\n").unwrap();
        assert_eq!(
            docs[0].value,
            json!({"a": 1, "b": true, "c": null, "d": "1", "e": 1.5, "f": "0x1", "g": "nginx:1"})
        );
    }

    #[test]
    fn each_scalar_knows_its_bytes_and_style() {
        let docs = parse(POD).unwrap();
        let d = &docs[0];
        let at = |p: &str| {
            let s = d.scalar(p).unwrap();
            (&POD[s.start..s.end], s.style)
        };
        assert_eq!(at("/spec/containers/0/image"), ("nginx:1.27", Style::Plain));
        assert_eq!(
            at("/spec/containers/1/image"),
            ("'busybox:1.36'", Style::Single)
        );
        assert_eq!(
            at("/spec/containers/2/image"),
            ("\"quay.io/é/x:1\"", Style::Double)
        );
        assert_eq!(d.value["spec"]["containers"][2]["image"], "quay.io/é/x:1");
    }

    #[test]
    fn replacing_an_image_changes_nothing_else() {
        let docs = parse(POD).unwrap();
        let d = &docs[0];
        let splices = vec![
            replace(d, "/spec/containers/0/image", "nginx:1.27@sha256:aa").unwrap(),
            replace(d, "/spec/containers/1/image", "busybox:1.36@sha256:bb").unwrap(),
            replace(d, "/spec/containers/2/image", "quay.io/é/x:1@sha256:cc").unwrap(),
        ];
        let out = apply(POD, splices);
        let expected = POD
            .replace("nginx:1.27", "nginx:1.27@sha256:aa")
            .replace("'busybox:1.36'", "'busybox:1.36@sha256:bb'")
            .replace("quay.io/é/x:1", "quay.io/é/x:1@sha256:cc");
        assert_eq!(out, expected);
    }

    #[test]
    fn documents_are_numbered_and_kept_apart() {
        let text = "a: 1\n---\n# only a comment\n---\nkind: Pod\n";
        let docs = parse(text).unwrap();
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[1].value, Value::Null);
        assert_eq!(docs[2].value["kind"], "Pod");
        assert_eq!(docs[2].number, 3);
    }

    #[test]
    fn an_anchored_image_is_edited_where_it_is_written() {
        let text =
            "x-img: &img shop/web:1.0.0\nspec:\n  containers:\n  - name: a\n    image: *img\n";
        let docs = parse(text).unwrap();
        let s = replace(
            &docs[0],
            "/spec/containers/0/image",
            "shop/web:1.0.0@sha256:aa",
        )
        .unwrap();
        assert_eq!(&text[s.start..s.end], "shop/web:1.0.0");
        assert_eq!(s.start, text.find("shop/web").unwrap());
    }

    #[test]
    fn merge_keys_bring_their_values_and_spans() {
        let text = "base: &b {image: 'a:1', name: x}\nc:\n  <<: *b\n  name: y\n";
        let docs = parse(text).unwrap();
        assert_eq!(docs[0].value["c"], json!({"image": "a:1", "name": "y"}));
        let s = docs[0].scalar("/c/image").unwrap();
        assert_eq!(&text[s.start..s.end], "'a:1'");
    }

    #[test]
    fn a_key_is_appended_in_the_mappings_own_style() {
        let text = "images:\n- name: a\n  newTag: v1   # pinned soon\n- {name: b, newTag: v2}\n- name: c\n  newTag: v3";
        let docs = parse(text).unwrap();
        let d = &docs[0];
        let splices = vec![
            append(d, text, "/images/0", "digest", "sha256:aa").unwrap(),
            append(d, text, "/images/1", "digest", "sha256:bb").unwrap(),
            append(d, text, "/images/2", "digest", "sha256:cc").unwrap(),
        ];
        let out = apply(text, splices);
        assert_eq!(
            out,
            "images:\n- name: a\n  newTag: v1   # pinned soon\n  digest: sha256:aa\n- {name: b, newTag: v2, digest: sha256:bb}\n- name: c\n  newTag: v3\n  digest: sha256:cc"
        );
        let again = parse(&out).unwrap();
        assert_eq!(again[0].value["images"][2]["digest"], "sha256:cc");
    }

    #[test]
    fn a_walk_skips_hidden_entries_and_never_follows_a_directory_link() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("apps/.git")).unwrap();
        std::fs::write(d.join("apps/b.yaml"), "").unwrap();
        std::fs::write(d.join("apps/a.json"), "").unwrap();
        std::fs::write(d.join("apps/.git/c.yaml"), "").unwrap();
        std::fs::write(d.join("apps/README.md"), "").unwrap();
        std::os::unix::fs::symlink(d, d.join("apps/loop")).unwrap();
        let found: Vec<std::path::PathBuf> = files(&[d.to_owned()])
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(found, [d.join("apps/a.json"), d.join("apps/b.yaml")]);
    }

    #[test]
    fn crlf_files_keep_their_line_endings() {
        let text = "images:\r\n- name: a # c\r\n  newTag: v1\r\nkind: Kustomization\r\n";
        let docs = parse(text).unwrap();
        let out = apply(
            text,
            vec![append(&docs[0], text, "/images/0", "digest", "sha256:aa").unwrap()],
        );
        assert_eq!(
            out,
            "images:\r\n- name: a # c\r\n  newTag: v1\r\n  digest: sha256:aa\r\nkind: Kustomization\r\n"
        );
    }

    #[test]
    fn a_block_scalar_is_not_rewritten() {
        let text = "image: |\n  nginx:1.0\n";
        let docs = parse(text).unwrap();
        assert!(matches!(
            replace(&docs[0], "/image", "x"),
            Err(EditError::Block { .. })
        ));
    }

    #[test]
    fn broken_yaml_names_line_and_column() {
        let e = parse("a: [1, 2\nb: c\n").unwrap_err();
        assert!(e.line >= 1, "{e}");
    }

    #[test]
    fn json_is_yaml_too() {
        let text = "{\"kind\": \"Pod\", \"spec\": {\"containers\": [{\"name\": \"a\", \"image\": \"x:1\"}]}}\n";
        let docs = parse(text).unwrap();
        let s = replace(&docs[0], "/spec/containers/0/image", "x:1@sha256:aa").unwrap();
        assert_eq!(
            apply(text, vec![s]),
            text.replace("\"x:1\"", "\"x:1@sha256:aa\"")
        );
    }
}
