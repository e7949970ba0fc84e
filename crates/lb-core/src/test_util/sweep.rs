//! Property sweeps of parsers of outside input (feature `test-util`): many random and
//! mutated inputs, checking that the parser never panics, never takes long, and that
//! every error it returns says what is wrong.
//!
//! Inputs are mostly mutations of valid examples, so the sweep reaches deep into a
//! parser: byte-level edits (flips, insertions of tokens the format cares about,
//! deletions, duplications, splices of two examples) and, for examples that are
//! JSON, edits of the parsed document (a value replaced by one of another type or
//! an extreme one, a key dropped, renamed or added, a subtree moved or wrapped).
//!
//! ```
//! use lb_core::test_util::sweep::{Mutator, sweep};
//!
//! let mut inputs = Mutator::new(7, &["12", "-3", "0"]);
//! let report = sweep(
//!     "i32",
//!     1_000,
//!     || inputs.next_input(),
//!     |bytes| std::str::from_utf8(bytes).map_err(|e| e.to_string())?.parse::<i32>().map_err(|e| e.to_string()),
//!     |_, error| if error.is_empty() { Err("empty message".into()) } else { Ok(()) },
//! );
//! assert_eq!(report.cases, 1_000);
//! assert!(report.accepted > 0 && report.rejected > 0);
//! ```

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

/// The longest one parse may take before the sweep calls it a hang.
pub const SLOW: Duration = Duration::from_secs(2);

/// What a sweep saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// The parser's name.
    pub name: String,
    /// Inputs fed.
    pub cases: usize,
    /// Inputs the parser accepted.
    pub accepted: usize,
    /// Inputs it rejected with an error that passed the check.
    pub rejected: usize,
    /// The longest single parse.
    pub slowest: Duration,
}

impl fmt::Display for SweepReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} inputs, {} accepted, {} rejected, slowest {:?}",
            self.name, self.cases, self.accepted, self.rejected, self.slowest
        )
    }
}

/// Feeds `cases` inputs from `input` to `parse`. Panics, naming the input, when the
/// parser panics, when one parse takes longer than [`SLOW`], or when `check` finds
/// fault with an error (it returns why). Prints and returns the report.
pub fn sweep<T, E>(
    name: &str,
    cases: usize,
    mut input: impl FnMut() -> Vec<u8>,
    mut parse: impl FnMut(&[u8]) -> Result<T, E>,
    mut check: impl FnMut(&[u8], &E) -> Result<(), String>,
) -> SweepReport {
    let mut report = SweepReport {
        name: name.to_owned(),
        cases,
        accepted: 0,
        rejected: 0,
        slowest: Duration::ZERO,
    };
    for i in 0..cases {
        let bytes = input();
        let started = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| parse(&bytes)));
        let took = started.elapsed();
        report.slowest = report.slowest.max(took);
        let shown = String::from_utf8_lossy(&bytes);
        match outcome {
            Err(_) => panic!("{name}: input {i} made the parser panic: {shown:?}"),
            Ok(_) if took > SLOW => {
                panic!("{name}: input {i} took {took:?}: {shown:?}")
            }
            Ok(Ok(_)) => report.accepted += 1,
            Ok(Err(error)) => match check(&bytes, &error) {
                Ok(()) => report.rejected += 1,
                Err(why) => panic!("{name}: input {i}: {why}: {shown:?}"),
            },
        }
    }
    eprintln!("sweep {report}");
    report
}

/// Tokens that upset parsers of text: quotes, brackets, separators, escapes,
/// numbers at the edges, and bytes that are not text.
const TOKENS: &[&str] = &[
    "\"",
    "\\",
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    "/",
    "//",
    ":///",
    "://",
    "?",
    "#",
    "%",
    "%zz",
    "%00",
    "@",
    ".",
    "..",
    "-",
    "+",
    "0",
    "-0",
    "00",
    "1e999",
    "-1e999",
    "1e-999",
    "NaN",
    "Infinity",
    "null",
    "true",
    "false",
    "18446744073709551616",
    "-9223372036854775809",
    "4294967296",
    "65536",
    "2147483648",
    "99999999999999999999999",
    "0.0000001",
    "1.5",
    "\\u0000",
    "\\ud800",
    "\u{0}",
    "\u{7f}",
    "\u{ff}",
    "\u{feff}",
    "é",
    "𝄞",
    " ",
    "\t",
    "\n",
    "\r\n",
    "s",
    "ns",
    "H",
    "M",
    "S",
    "m",
    "u",
    "n",
    "-1s",
    "1.5s",
    "315576000001s",
    "0s",
];

/// Scalars a JSON value may be swapped for.
fn odd_scalar(rng: &mut fastrand::Rng) -> Value {
    let pick = rng.usize(..24);
    match pick {
        0 => Value::Null,
        1 => Value::Bool(true),
        2 => Value::Bool(false),
        3 => Value::from(0),
        4 => Value::from(-1),
        5 => Value::from(1),
        6 => Value::from(1.5),
        7 => Value::from(-0.0),
        8 => Value::from(1e308),
        9 => Value::from(-1e308),
        10 => Value::from(5e-324),
        11 => Value::from(u64::MAX),
        12 => Value::from(i64::MIN),
        13 => Value::from(u32::MAX),
        14 => Value::from(""),
        15 => Value::from("x"),
        16 => Value::from("-1s"),
        17 => Value::from("1.5s"),
        18 => Value::from("315576000001s"),
        19 => Value::from("NaN"),
        20 => Value::from("\u{0}"),
        21 => Value::from("x".repeat(rng.usize(100..5000))),
        22 => Value::from(rng.i64(..)),
        _ => Value::from(random_text(rng, 12)),
    }
}

fn random_text(rng: &mut fastrand::Rng, max: usize) -> String {
    let len = rng.usize(..=max);
    (0..len)
        .map(|_| match rng.usize(..10) {
            0 => rng.char(..),
            _ => char::from(rng.u8(0x20..0x7f)),
        })
        .collect()
}

/// Makes inputs for [`sweep`] from a corpus of valid examples.
pub struct Mutator {
    rng: fastrand::Rng,
    corpus: Vec<Vec<u8>>,
    /// The corpus entries that are JSON, parsed.
    json: Vec<Value>,
    /// Every object key and string of the JSON corpus: what edits insert.
    words: Vec<String>,
    /// Every subtree of the JSON corpus: what edits splice in.
    subtrees: Vec<Value>,
    tokens: Vec<Vec<u8>>,
}

impl fmt::Debug for Mutator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mutator")
            .field("corpus", &self.corpus.len())
            .field("json", &self.json.len())
            .finish_non_exhaustive()
    }
}

impl Mutator {
    /// A mutator seeded with `seed` (the same seed, the same inputs) over `corpus`.
    pub fn new(seed: u64, corpus: &[&str]) -> Self {
        let corpus: Vec<Vec<u8>> = corpus.iter().map(|c| c.as_bytes().to_vec()).collect();
        Self::from_bytes(seed, &corpus)
    }

    /// [`Mutator::new`] over binary examples (a protobuf encoding, say).
    pub fn from_bytes(seed: u64, corpus: &[Vec<u8>]) -> Self {
        let json: Vec<Value> = corpus
            .iter()
            .filter_map(|c| serde_json::from_slice::<Value>(c).ok())
            .filter(|v| v.is_object() || v.is_array())
            .collect();
        let mut words = Vec::new();
        let mut subtrees = Vec::new();
        for v in &json {
            collect(v, &mut words, &mut subtrees);
        }
        words.sort();
        words.dedup();
        Self {
            rng: fastrand::Rng::with_seed(seed),
            corpus: corpus.to_vec(),
            json,
            words,
            subtrees,
            tokens: TOKENS.iter().map(|t| t.as_bytes().to_vec()).collect(),
        }
    }

    /// Adds tokens the byte-level edits insert (a format's own keywords).
    #[must_use]
    pub fn with_tokens(mut self, tokens: &[&str]) -> Self {
        self.tokens
            .extend(tokens.iter().map(|t| t.as_bytes().to_vec()));
        self
    }

    /// The next input: now and then random bytes or text, mostly an example with one
    /// to eight edits.
    pub fn next_input(&mut self) -> Vec<u8> {
        match self.rng.usize(..20) {
            0 => {
                let len = self.rng.usize(..64);
                (0..len).map(|_| self.rng.u8(..)).collect()
            }
            1 => random_text(&mut self.rng, 64).into_bytes(),
            2..=9 if !self.json.is_empty() => {
                let mut bytes = self.json_edit().into_bytes();
                if self.rng.usize(..5) == 0 {
                    self.byte_edits(&mut bytes);
                }
                bytes
            }
            _ => {
                let mut bytes = self.pick_example();
                self.byte_edits(&mut bytes);
                bytes
            }
        }
    }

    /// [`Mutator::next_input`] as text (invalid UTF-8 replaced), for parsers of `&str`.
    pub fn next_text(&mut self) -> String {
        String::from_utf8_lossy(&self.next_input()).into_owned()
    }

    fn pick_example(&mut self) -> Vec<u8> {
        if self.corpus.is_empty() {
            return Vec::new();
        }
        self.corpus[self.rng.usize(..self.corpus.len())].clone()
    }

    fn byte_edits(&mut self, bytes: &mut Vec<u8>) {
        for _ in 0..self.rng.usize(1..=8) {
            self.byte_edit(bytes);
        }
    }

    fn byte_edit(&mut self, bytes: &mut Vec<u8>) {
        let len = bytes.len();
        let at = |rng: &mut fastrand::Rng| rng.usize(..=len);
        match self.rng.usize(..8) {
            0 if len > 0 => {
                let i = self.rng.usize(..len);
                bytes[i] ^= 1 << self.rng.u8(..8);
            }
            1 if len > 0 => {
                let i = self.rng.usize(..len);
                bytes[i] = self.rng.u8(..);
            }
            2 | 3 => {
                let token = self.tokens[self.rng.usize(..self.tokens.len())].clone();
                let i = at(&mut self.rng);
                bytes.splice(i..i, token);
            }
            4 if len > 0 => {
                let start = self.rng.usize(..len);
                let end = self.rng.usize(start..=len.min(start + 16));
                bytes.drain(start..end);
            }
            5 if len > 0 => {
                let start = self.rng.usize(..len);
                let end = self.rng.usize(start..=len.min(start + 32));
                let copy = bytes[start..end].to_vec();
                let i = at(&mut self.rng);
                bytes.splice(i..i, copy);
            }
            6 => {
                // Splice: this one's head, another example's tail.
                let other = self.pick_example();
                let cut = at(&mut self.rng);
                let from = self.rng.usize(..=other.len());
                bytes.truncate(cut);
                bytes.extend_from_slice(&other[from..]);
            }
            _ => {
                let i = at(&mut self.rng);
                bytes.truncate(i);
            }
        }
    }

    /// A JSON example with one to four edits of its document.
    fn json_edit(&mut self) -> String {
        let mut doc = self.json[self.rng.usize(..self.json.len())].clone();
        for _ in 0..self.rng.usize(1..=4) {
            let count = count_nodes(&doc);
            let target = self.rng.usize(..count);
            let mut seen = 0;
            self.edit_node(&mut doc, target, &mut seen);
        }
        doc.to_string()
    }

    /// Walks to node number `target` (pre-order) and edits it.
    fn edit_node(&mut self, node: &mut Value, target: usize, seen: &mut usize) -> bool {
        if *seen == target {
            self.edit_value(node);
            return true;
        }
        *seen += 1;
        match node {
            Value::Object(map) => {
                let keys: Vec<String> = map.keys().cloned().collect();
                for key in keys {
                    if let Some(child) = map.get_mut(&key)
                        && self.edit_node(child, target, seen)
                    {
                        return true;
                    }
                }
                false
            }
            Value::Array(items) => {
                for child in items.iter_mut() {
                    if self.edit_node(child, target, seen) {
                        return true;
                    }
                }
                false
            }
            _ => false,
        }
    }

    fn word(&mut self) -> String {
        if self.words.is_empty() || self.rng.usize(..8) == 0 {
            return random_text(&mut self.rng, 10);
        }
        self.words[self.rng.usize(..self.words.len())].clone()
    }

    fn subtree(&mut self) -> Value {
        if self.subtrees.is_empty() {
            return odd_scalar(&mut self.rng);
        }
        self.subtrees[self.rng.usize(..self.subtrees.len())].clone()
    }

    fn edit_value(&mut self, node: &mut Value) {
        match self.rng.usize(..12) {
            0..=2 => *node = odd_scalar(&mut self.rng),
            3 => *node = self.subtree(),
            4 => {
                *node = if self.rng.bool() {
                    Value::Object(Map::new())
                } else {
                    Value::Array(Vec::new())
                }
            }
            5 => {
                let inner = std::mem::take(node);
                *node = Value::Array(vec![inner]);
            }
            6 => {
                let inner = std::mem::take(node);
                let key = self.word();
                *node = Value::Object(Map::from_iter([(key, inner)]));
            }
            7 => *node = Value::from(self.word()),
            _ => match node {
                Value::Object(map) => {
                    let keys: Vec<String> = map.keys().cloned().collect();
                    let key =
                        (!keys.is_empty()).then(|| keys[self.rng.usize(..keys.len())].clone());
                    match (self.rng.usize(..4), key) {
                        (0, Some(key)) => {
                            map.remove(&key);
                        }
                        (1, Some(key)) => {
                            // A typo: one character changed, or the case of all.
                            if let Some(v) = map.remove(&key) {
                                let renamed = typo(&mut self.rng, &key);
                                map.insert(renamed, v);
                            }
                        }
                        _ => {
                            let key = self.word();
                            let value = if self.rng.bool() {
                                self.subtree()
                            } else {
                                odd_scalar(&mut self.rng)
                            };
                            map.insert(key, value);
                        }
                    }
                }
                Value::Array(items) => match (self.rng.usize(..3), items.is_empty()) {
                    (0, false) => {
                        let i = self.rng.usize(..items.len());
                        items.remove(i);
                    }
                    (1, false) => {
                        let i = self.rng.usize(..items.len());
                        let copy = items[i].clone();
                        items.insert(i, copy);
                    }
                    _ => {
                        let value = self.subtree();
                        items.push(value);
                    }
                },
                _ => *node = odd_scalar(&mut self.rng),
            },
        }
    }
}

fn typo(rng: &mut fastrand::Rng, key: &str) -> String {
    let mut chars: Vec<char> = key.chars().collect();
    if chars.is_empty() || rng.usize(..4) == 0 {
        return key.to_ascii_uppercase();
    }
    let i = rng.usize(..chars.len());
    match rng.usize(..3) {
        0 => {
            chars.remove(i);
        }
        1 => chars.insert(i, char::from(rng.u8(b'a'..=b'z'))),
        _ => chars[i] = char::from(rng.u8(b'a'..=b'z')),
    }
    chars.into_iter().collect()
}

fn count_nodes(v: &Value) -> usize {
    1 + match v {
        Value::Object(map) => map.values().map(count_nodes).sum(),
        Value::Array(items) => items.iter().map(count_nodes).sum(),
        _ => 0,
    }
}

fn collect(v: &Value, words: &mut Vec<String>, subtrees: &mut Vec<Value>) {
    subtrees.push(v.clone());
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                words.push(k.clone());
                collect(child, words, subtrees);
            }
        }
        Value::Array(items) => {
            for child in items {
                collect(child, words, subtrees);
            }
        }
        Value::String(s) => words.push(s.clone()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_inputs_and_edits_reach_inside_json() {
        let corpus = [r#"{"a": {"b": [1, 2, {"c": "d"}]}}"#, "plain text"];
        let mut one = Mutator::new(1, &corpus);
        let mut two = Mutator::new(1, &corpus);
        let a: Vec<Vec<u8>> = (0..200).map(|_| one.next_input()).collect();
        let b: Vec<Vec<u8>> = (0..200).map(|_| two.next_input()).collect();
        assert_eq!(a, b);
        // Some edits keep the document JSON and change a nested part.
        let nested_edits = a
            .iter()
            .filter_map(|bytes| serde_json::from_slice::<Value>(bytes).ok())
            .filter(|v| {
                v.get("a").is_some() && v["a"] != serde_json::json!({"b": [1, 2, {"c": "d"}]})
            })
            .count();
        assert!(nested_edits > 10, "{nested_edits}");
    }

    #[test]
    fn a_panicking_parser_is_reported_with_its_input() {
        let mut m = Mutator::new(3, &["ok"]);
        let caught = catch_unwind(AssertUnwindSafe(|| {
            sweep(
                "panics",
                100,
                || m.next_input(),
                |b: &[u8]| -> Result<(), String> {
                    assert!(b != b"ok", "boom");
                    Ok(())
                },
                |_, _| Ok(()),
            )
        }));
        assert!(caught.is_err());
    }
}
