//! Label and field selectors: `role=db,site in (fra1,ams1),!retired`.
//!
//! The grammar is Kubernetes' so that operators' habits carry over: requirements separated by
//! commas are ANDed; each is `key`, `!key`, `key=value` (or `==`), `key!=value`,
//! `key in (a,b)` or `key notin (a,b)`. Parsing is strict: anything else is an error that says
//! where it stopped, never a selector that silently matches more than was meant.

use std::collections::BTreeSet;
use std::fmt;

use thiserror::Error;

use crate::names::{validate_label_key, validate_label_value};

/// A selector that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid selector {input:?}: {problem} at character {position}")]
pub struct SelectorError {
    /// The selector as given.
    pub input: String,
    /// 0-based character offset where parsing stopped.
    pub position: usize,
    /// What was expected.
    pub problem: String,
}

/// The test one requirement applies to a label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operator {
    /// The label is set to one of these values (`=`, `==`, `in`).
    In(BTreeSet<String>),
    /// The label is absent or set to none of these values (`!=`, `notin`).
    NotIn(BTreeSet<String>),
    /// The label is set, to any value.
    Exists,
    /// The label is not set.
    DoesNotExist,
}

/// One comma-separated clause of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// Label (or field) key.
    pub key: String,
    /// What the value must satisfy.
    pub op: Operator,
}

impl Requirement {
    /// Whether a label with value `value` (None: absent) satisfies this requirement.
    pub fn matches(&self, value: Option<&str>) -> bool {
        match (&self.op, value) {
            (Operator::In(set), Some(v)) => set.contains(v),
            (Operator::In(_), None) => false,
            (Operator::NotIn(set), Some(v)) => !set.contains(v),
            (Operator::NotIn(_), None) => true,
            (Operator::Exists, v) => v.is_some(),
            (Operator::DoesNotExist, v) => v.is_none(),
        }
    }
}

/// A parsed selector: every requirement must hold. The empty selector matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector {
    /// The requirements, in the order written.
    pub requirements: Vec<Requirement>,
}

impl Selector {
    /// Parses a label selector, validating keys and values as label keys and values.
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        Parser::new(input, true).parse()
    }

    /// Parses a field selector: same grammar, keys are field names, values are free text
    /// without separators.
    pub fn parse_fields(input: &str) -> Result<Self, SelectorError> {
        Parser::new(input, false).parse()
    }

    /// True when the selector has no requirement (matches everything).
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether labels looked up through `get` satisfy every requirement.
    pub fn matches<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.requirements.iter().all(|r| r.matches(get(&r.key)))
    }

    /// The `key in (values)` requirements, which an index can answer without a scan.
    pub fn indexable(&self) -> impl Iterator<Item = (&str, &BTreeSet<String>)> {
        self.requirements.iter().filter_map(|r| match &r.op {
            Operator::In(values) => Some((r.key.as_str(), values)),
            _ => None,
        })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(",");
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match &r.op {
                Operator::In(s) if s.len() == 1 => write!(f, "{}={}", r.key, join(s))?,
                Operator::In(s) => write!(f, "{} in ({})", r.key, join(s))?,
                Operator::NotIn(s) if s.len() == 1 => write!(f, "{}!={}", r.key, join(s))?,
                Operator::NotIn(s) => write!(f, "{} notin ({})", r.key, join(s))?,
                Operator::Exists => write!(f, "{}", r.key)?,
                Operator::DoesNotExist => write!(f, "!{}", r.key)?,
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Eq,
    NotEq,
    Bang,
    Comma,
    Open,
    Close,
}

struct Parser<'a> {
    input: &'a str,
    tokens: Vec<(usize, Token)>,
    next: usize,
    labels: bool,
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ':' | '@' | '+')
}

impl<'a> Parser<'a> {
    fn new(input: &'a str, labels: bool) -> Self {
        Self {
            input,
            tokens: Vec::new(),
            next: 0,
            labels,
        }
    }

    fn err(&self, position: usize, problem: impl Into<String>) -> SelectorError {
        SelectorError {
            input: self.input.to_string(),
            position,
            problem: problem.into(),
        }
    }

    fn lex(&mut self) -> Result<(), SelectorError> {
        let chars: Vec<(usize, char)> = self.input.char_indices().collect();
        let mut i = 0;
        while i < chars.len() {
            let (pos, c) = chars[i];
            match c {
                c if c.is_whitespace() => i += 1,
                ',' => {
                    self.tokens.push((pos, Token::Comma));
                    i += 1;
                }
                '(' => {
                    self.tokens.push((pos, Token::Open));
                    i += 1;
                }
                ')' => {
                    self.tokens.push((pos, Token::Close));
                    i += 1;
                }
                '=' => {
                    // `=` and `==` mean the same.
                    i += if chars.get(i + 1).map(|x| x.1) == Some('=') {
                        2
                    } else {
                        1
                    };
                    self.tokens.push((pos, Token::Eq));
                }
                '!' => {
                    if chars.get(i + 1).map(|x| x.1) == Some('=') {
                        self.tokens.push((pos, Token::NotEq));
                        i += 2;
                    } else {
                        self.tokens.push((pos, Token::Bang));
                        i += 1;
                    }
                }
                c if is_word_char(c) => {
                    let start = i;
                    while i < chars.len() && is_word_char(chars[i].1) {
                        i += 1;
                    }
                    let word: String = chars[start..i].iter().map(|x| x.1).collect();
                    self.tokens.push((pos, Token::Word(word)));
                }
                other => return Err(self.err(pos, format!("unexpected {other:?}"))),
            }
        }
        Ok(())
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.next).map(|t| &t.1)
    }

    fn pos(&self) -> usize {
        self.tokens.get(self.next).map_or(self.input.len(), |t| t.0)
    }

    fn bump(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.next).map(|t| t.1.clone());
        self.next += 1;
        t
    }

    fn key(&mut self) -> Result<String, SelectorError> {
        let pos = self.pos();
        match self.bump() {
            Some(Token::Word(w)) => {
                if self.labels {
                    validate_label_key("selector", &w).map_err(|e| self.err(pos, e.problem))?;
                }
                Ok(w)
            }
            _ => Err(self.err(pos, "expected a key")),
        }
    }

    fn value(&mut self) -> Result<String, SelectorError> {
        let pos = self.pos();
        match self.peek() {
            Some(Token::Word(_)) => {
                let Some(Token::Word(w)) = self.bump() else {
                    unreachable!("peeked a word")
                };
                if self.labels {
                    validate_label_value("selector", &w).map_err(|e| self.err(pos, e.problem))?;
                }
                Ok(w)
            }
            // An empty value (`key=`) selects the empty label value, as in Kubernetes.
            Some(Token::Comma) | Some(Token::Close) | None => Ok(String::new()),
            Some(_) => Err(self.err(pos, "expected a value")),
        }
    }

    fn set(&mut self) -> Result<BTreeSet<String>, SelectorError> {
        let pos = self.pos();
        if self.bump() != Some(Token::Open) {
            return Err(self.err(pos, "expected '(' to open a value list"));
        }
        let mut values = BTreeSet::new();
        loop {
            values.insert(self.value()?);
            let pos = self.pos();
            match self.bump() {
                Some(Token::Comma) => continue,
                Some(Token::Close) => break,
                _ => return Err(self.err(pos, "expected ',' or ')' in a value list")),
            }
        }
        Ok(values)
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        if self.peek() == Some(&Token::Bang) {
            self.bump();
            let key = self.key()?;
            return Ok(Requirement {
                key,
                op: Operator::DoesNotExist,
            });
        }
        let key = self.key()?;
        let op = match self.peek() {
            None | Some(Token::Comma) => Operator::Exists,
            Some(Token::Eq) => {
                self.bump();
                Operator::In(BTreeSet::from([self.value()?]))
            }
            Some(Token::NotEq) => {
                self.bump();
                Operator::NotIn(BTreeSet::from([self.value()?]))
            }
            Some(Token::Word(w)) if w == "in" => {
                self.bump();
                Operator::In(self.set()?)
            }
            Some(Token::Word(w)) if w == "notin" => {
                self.bump();
                Operator::NotIn(self.set()?)
            }
            Some(_) => {
                return Err(self.err(self.pos(), "expected '=', '!=', 'in', 'notin' or ','"));
            }
        };
        Ok(Requirement { key, op })
    }

    fn parse(mut self) -> Result<Selector, SelectorError> {
        self.lex()?;
        let mut requirements = Vec::new();
        if self.tokens.is_empty() {
            return Ok(Selector { requirements });
        }
        loop {
            requirements.push(self.requirement()?);
            let pos = self.pos();
            match self.bump() {
                None => break,
                Some(Token::Comma) => continue,
                Some(_) => return Err(self.err(pos, "expected ',' between requirements")),
            }
        }
        Ok(Selector { requirements })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sel_matches(sel: &str, l: &BTreeMap<String, String>) -> bool {
        Selector::parse(sel)
            .unwrap()
            .matches(|k| l.get(k).map(String::as_str))
    }

    #[test]
    fn parses_and_matches_the_documented_example() {
        let s = Selector::parse("role=db,site in (fra1,ams1),!retired").unwrap();
        assert_eq!(s.requirements.len(), 3);
        let db_fra = labels(&[("role", "db"), ("site", "fra1")]);
        let db_lon = labels(&[("role", "db"), ("site", "lon1")]);
        let retired = labels(&[("role", "db"), ("site", "ams1"), ("retired", "")]);
        assert!(s.matches(|k| db_fra.get(k).map(String::as_str)));
        assert!(!s.matches(|k| db_lon.get(k).map(String::as_str)));
        assert!(!s.matches(|k| retired.get(k).map(String::as_str)));
    }

    #[test]
    fn operators() {
        let l = labels(&[("role", "web"), ("tier", "1")]);
        assert!(sel_matches("", &l));
        assert!(sel_matches("role==web", &l));
        assert!(sel_matches("role!=db", &l));
        assert!(sel_matches("zone!=a", &l), "!= matches an absent label");
        assert!(sel_matches("role notin (db, cache)", &l));
        assert!(!sel_matches("role notin (web)", &l));
        assert!(sel_matches("tier", &l));
        assert!(!sel_matches("!tier", &l));
        assert!(sel_matches("muster.io/x notin (a)", &l));
    }

    #[test]
    fn rejects_bad_syntax_with_a_position() {
        for bad in [
            "role=",
            "role=db,",
            "role in db",
            "role in (db",
            "role ~ db",
            "=db",
            "role=db site=x",
            "role=d b",
            "ro le",
            "role in (a,,b",
        ] {
            let r = Selector::parse(bad);
            if bad == "role=" {
                assert!(r.is_ok(), "empty value is allowed: {bad}");
                continue;
            }
            let e = r.expect_err(bad);
            assert!(e.to_string().contains("invalid selector"), "{e}");
        }
        let e = Selector::parse("role ~ db").unwrap_err();
        assert_eq!(e.position, 5);
    }

    #[test]
    fn display_round_trips() {
        let s = Selector::parse("b notin (x,y),a=1,!c,d").unwrap();
        let again = Selector::parse(&s.to_string()).unwrap();
        assert_eq!(s, again);
    }

    #[test]
    fn field_selectors_allow_enum_values() {
        let s = Selector::parse_fields("kind=SERVER,lifecycle!=DECOMMISSIONED").unwrap();
        assert_eq!(s.requirements.len(), 2);
        assert_eq!(s.indexable().count(), 1);
    }
}
