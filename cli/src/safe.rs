//! Server-supplied text printed safely. Names, messages and above all a step's captured output
//! come from hosts, which may be hostile or simply broken: an escape sequence printed raw can
//! rewrite the screen, retitle the terminal or hide earlier lines, and a bidi override can make
//! a line read differently from what it holds. Everything the CLI prints from the server goes
//! through these functions, which escape such characters visibly (`\x1b`, `\u{202e}`) instead.

use std::borrow::Cow;
use std::fmt::Write;

/// Characters that reorder text when displayed (Unicode bidi controls).
fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
    )
}

fn needs_escape(c: char, keep_newlines: bool) -> bool {
    if keep_newlines && (c == '\n' || c == '\t') {
        return false;
    }
    c.is_control() || is_bidi_control(c)
}

fn push_escaped(out: &mut String, c: char) {
    let n = u32::from(c);
    if n < 0x100 {
        let _ = write!(out, "\\x{n:02x}");
    } else {
        let _ = write!(out, "\\u{{{n:04x}}}");
    }
}

fn escape(s: &str, keep_newlines: bool) -> Cow<'_, str> {
    if !s.chars().any(|c| needs_escape(c, keep_newlines)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        // CRLF line ends (a Windows tool's output) are plain newlines, not an overwrite.
        if keep_newlines && c == '\r' && chars.peek() == Some(&'\n') {
            continue;
        }
        if needs_escape(c, keep_newlines) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// For one line or table cell: every control character (newlines and tabs too) is escaped.
pub fn line(s: &str) -> Cow<'_, str> {
    escape(s, false)
}

/// For multi-line text (the server's plan text, captured output): newlines and tabs are kept,
/// every other control character is escaped.
pub fn text(s: &str) -> Cow<'_, str> {
    escape(s, true)
}

/// Captured bytes as safe text: invalid UTF-8 becomes U+FFFD, then [`text`].
pub fn bytes(b: &[u8]) -> String {
    text(&String::from_utf8_lossy(b)).into_owned()
}

/// Serialized JSON made terminal-safe without changing what it says: serde_json already
/// escapes C0 controls, and DEL, C1 controls and bidi controls (which can only occur inside
/// strings) become `\uXXXX` escapes too, which every JSON reader decodes back.
pub fn json(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if needs_escape(c, true) {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

/// Prepares a value for YAML output: the YAML emitter quotes and escapes control characters
/// itself, but counts U+0085 and the bidi controls as printable, so those are replaced in
/// every string by their visible escape.
pub fn yaml_value(value: &mut serde_yaml_ng::Value) {
    use serde_yaml_ng::Value as V;
    let fix = |s: &mut String| {
        if s.chars().any(|c| c == '\u{85}' || is_bidi_control(c)) {
            let mut out = String::with_capacity(s.len() + 8);
            for c in s.chars() {
                if c == '\u{85}' || is_bidi_control(c) {
                    push_escaped(&mut out, c);
                } else {
                    out.push(c);
                }
            }
            *s = out;
        }
    };
    match value {
        V::String(s) => fix(s),
        V::Sequence(items) => items.iter_mut().for_each(yaml_value),
        V::Mapping(map) => {
            let entries = std::mem::take(map);
            for (mut k, mut v) in entries {
                yaml_value(&mut k);
                yaml_value(&mut v);
                map.insert(k, v);
            }
        }
        V::Tagged(t) => yaml_value(&mut t.value),
        V::Null | V::Bool(_) | V::Number(_) => {}
    }
}

/// Emitted YAML, checked: after [`yaml_value`] the emitter leaves no control character but
/// newlines; anything else is escaped here rather than trusted.
pub fn yaml(s: &str) -> String {
    escape(s, true).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        assert!(matches!(line("web-01 ok"), Cow::Borrowed("web-01 ok")));
        assert!(matches!(text("a\n\tb"), Cow::Borrowed("a\n\tb")));
        assert_eq!(line("héllo ✓"), "héllo ✓");
    }

    #[test]
    fn escape_sequences_are_neutralised() {
        // Clear screen, set the window title, OSC 8 hyperlink, C1 CSI, DEL, bell.
        let hostile = "\u{1b}[2J\u{1b}]0;pwned\u{7}\u{1b}]8;;http://x\u{1b}\\ok\u{9b}31m\u{7f}";
        let safe = line(hostile);
        assert!(!safe.chars().any(|c| c.is_control()), "{safe:?}");
        assert_eq!(
            safe,
            "\\x1b[2J\\x1b]0;pwned\\x07\\x1b]8;;http://x\\x1b\\ok\\x9b31m\\x7f"
        );
        assert_eq!(text(hostile), safe);
    }

    #[test]
    fn newlines_only_where_allowed() {
        assert_eq!(line("a\nb\tc\r"), "a\\x0ab\\x09c\\x0d");
        assert_eq!(text("a\r\nb\rc\n"), "a\nb\\x0dc\n");
    }

    #[test]
    fn bidi_overrides_are_visible() {
        assert_eq!(line("abc\u{202e}fed"), "abc\\u{202e}fed");
        assert_eq!(text("\u{2066}x\u{2069}"), "\\u{2066}x\\u{2069}");
    }

    #[test]
    fn json_stays_json() {
        let v = serde_json::json!({"out": "\u{1b}[2J \u{9b}1m \u{202e}x \u{7f}"});
        let s = json(&serde_json::to_string(&v).unwrap());
        assert!(
            !s.chars().any(|c| c.is_control() || is_bidi_control(c)),
            "{s:?}"
        );
        let back: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(back, v, "the escapes decode to the same value");
    }

    #[test]
    fn yaml_has_no_raw_controls() {
        let mut v: serde_yaml_ng::Value = serde_yaml_ng::from_str("k: v").unwrap();
        if let serde_yaml_ng::Value::Mapping(m) = &mut v {
            m.insert(
                "out\u{202e}".into(),
                "\u{1b}[2J \u{9b}1m \u{85}nel \u{202e}x \u{7f}\ttab".into(),
            );
        }
        let mut fixed = v.clone();
        yaml_value(&mut fixed);
        let s = yaml(&serde_yaml_ng::to_string(&fixed).unwrap());
        assert!(
            !s.chars()
                .any(|c| (c.is_control() && c != '\n') || is_bidi_control(c)),
            "{s:?}"
        );
        // Real control characters survive the round trip (the emitter escaped them).
        let back: serde_yaml_ng::Value = serde_yaml_ng::from_str(&s).unwrap();
        let out = back.get("out\\u{202e}").and_then(|v| v.as_str()).unwrap();
        assert!(
            out.starts_with("\u{1b}[2J \u{9b}1m \\x85nel \\u{202e}x"),
            "{out:?}"
        );
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        assert_eq!(bytes(b"ok \xff\x1b[31m\n"), "ok \u{fffd}\\x1b[31m\n");
    }
}
