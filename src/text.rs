//! Request-supplied text made safe to show: control and invisible formatting characters
//! escaped (a Pod author cannot start a new line in a denial, a log line or an annotation, nor
//! send escape codes to a terminal), and long strings clipped in the middle. Pure.

use std::borrow::Cow;
use std::fmt;

/// Whether `c` must not reach a terminal or a log line as it is: C0 and C1 controls (newline,
/// carriage return, ESC, DEL…), the line and paragraph separators and the bidirectional and
/// zero-width formatting characters that make text read differently than it is.
fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206f}'
                | '\u{feff}'
        )
}

/// `s` with every unsafe character written as a Rust escape (`\n`, `\t`, `\u{1b}`,
/// `\u{202e}`); everything else, quotes and backslashes included, unchanged.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if unsafe_char(c) {
            if c.is_control() {
                out.extend(c.escape_debug());
            } else {
                out.extend(c.escape_unicode());
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `s` shortened to at most `max` characters by cutting out its middle (replaced by `…`), so
/// both ends — a registry and a tag — stay readable.
pub fn clip(s: &str, max: usize) -> Cow<'_, str> {
    let len = s.chars().count();
    if len <= max {
        return Cow::Borrowed(s);
    }
    let keep = max.saturating_sub(1);
    let head = keep.div_ceil(2);
    let tail = keep - head;
    let mut out: String = s.chars().take(head).collect();
    out.push('…');
    out.extend(s.chars().skip(len - tail));
    Cow::Owned(out)
}

/// `s` clipped to `max` characters, then escaped: the form request-supplied names take in
/// messages and annotations.
pub fn shown(s: &str, max: usize) -> Cow<'_, str> {
    match clip(s, max) {
        Cow::Borrowed(b) => escape(b),
        Cow::Owned(o) => Cow::Owned(escape(&o).into_owned()),
    }
}

/// The field formatter of `--log-format text`: every field value is written as the default
/// formatter would, with unsafe characters escaped, so one event is one line whatever a
/// request put in its fields (tracing-subscriber escapes ESC, but not a newline).
pub fn log_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + Send + Sync + 'static
{
    use tracing_subscriber::field::MakeExt;
    tracing_subscriber::fmt::format::debug_fn(
        |w: &mut tracing_subscriber::fmt::format::Writer<'_>,
         field: &tracing::field::Field,
         value: &dyn fmt::Debug| {
            let text = format!("{value:?}");
            let text = escape(&text);
            match field.name() {
                "message" => write!(w, "{text}"),
                name => write!(w, "{}={text}", name.strip_prefix("r#").unwrap_or(name)),
            }
        },
    )
    .delimited(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[test]
    fn escapes_controls_and_bidi_only() {
        assert!(matches!(escape("shop/web-1"), Cow::Borrowed(_)));
        assert_eq!(escape("a\nb"), r"a\nb");
        assert_eq!(escape("\u{1b}[31mred"), r"\u{1b}[31mred");
        assert_eq!(escape("x\r\t\u{7f}\u{85}"), r"x\r\t\u{7f}\u{85}");
        assert_eq!(escape("evil\u{202e}gpj.exe"), r"evil\u{202e}gpj.exe");
        assert_eq!(escape(r#"say "hi" \ ünïcode"#), r#"say "hi" \ ünïcode"#);
    }

    #[test]
    fn clips_in_the_middle() {
        assert_eq!(clip("abcdef", 6), "abcdef");
        assert_eq!(clip("abcdefgh", 5), "ab…gh");
        assert_eq!(clip(&"é".repeat(100), 9).chars().count(), 9);
        assert_eq!(clip("abc", 0), "…");
        assert_eq!(shown(&format!("{}\n", "a".repeat(50)), 10), r"aaaaa…aaa\n");
    }

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_text_log_line_stays_one_line() {
        let sink = Sink::default();
        let out = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(log_fields())
            .with_ansi(false)
            .with_writer(move || out.clone())
            .finish();
        let forged =
            "unknown variant `CREATE\n{\"event\":\"admission.denied\",\"uid\":\"x\"}\u{1b}[2J`";
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(endpoint = "validate", status = 400u16, error = %forged, "rejected malformed admission request");
            tracing::info!(name = ?"web\nx", "second");
        });
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].contains(r#"rejected malformed admission request endpoint="validate" status=400 error=unknown variant `CREATE\n{"event""#),
            "{text}"
        );
        assert!(lines[0].contains(r"\u{1b}[2J"), "{text}");
        assert!(lines[1].contains(r#"name="web\nx""#), "{text}");
        assert!(!text.contains('\u{1b}'));
    }
}
