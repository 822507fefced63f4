//! Text traces for the vmwgfx dirty-tracker reference model.
//!
//! One event per line, whitespace-separated tokens, `#` starts a comment
//! that runs to the end of the line, blank lines are ignored. Page numbers
//! are BO-relative and decimal. The full format, with the vmwgfx meaning of
//! every event, is documented in `tools/TRACE_FORMAT.md`.
//!
//! [`parse_trace`] checks syntax only (keywords, arity, numbers). Semantic
//! checks (`bo` first and once, pages inside the BO, known mappings and
//! resources, ...) are done by [`crate::vmwgfx::model::Model::apply`] and
//! [`crate::vmwgfx::model::run_trace`].

use std::fmt;

/// One trace event. See `tools/TRACE_FORMAT.md` for the semantics.
// Each variant's doc gives its trace line, which names its fields.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Event {
    /// `bo N`: the buffer object has `pages` pages. Must be the first event.
    Bo { pages: u64 },
    /// `map M FIRST COUNT`: mapping `m` maps BO pages `[first, first+count)`.
    Map { m: u32, first: u64, count: u64 },
    /// `unmap M`: mapping `m` goes away (pre_unmap semantics, then PTEs dropped).
    Unmap { m: u32 },
    /// `add W FIRST COUNT`: coherent resource `w` on BO pages `[first, first+count)`.
    Add { w: u32, first: u64, count: u64 },
    /// `release W`: resource `w` is destroyed.
    Release { w: u32 },
    /// `write M P [P...]`: mapping `m` writes each page, in order.
    Write { m: u32, pages: Vec<u64> },
    /// `read M P [P...]`: mapping `m` reads each page, in order.
    Read { m: u32, pages: Vec<u64> },
    /// `scan`: the tracker scan (spec §3).
    Scan,
    /// `transfer W`: `transfer_to_res` for resource `w` (spec §4.6).
    Transfer { w: u32 },
    /// `clear W`: `clear_res` for resource `w` (spec §4.7).
    Clear { w: u32 },
    /// `clearall`: `dirty_clear` of the whole BO (spec §4.8).
    ClearAll,
    /// `sync`: scan, then transfer every live resource by ascending (FIRST, W).
    Sync,
}

impl Event {
    /// The keyword that starts this event's line.
    pub fn keyword(&self) -> &'static str {
        match self {
            Event::Bo { .. } => "bo",
            Event::Map { .. } => "map",
            Event::Unmap { .. } => "unmap",
            Event::Add { .. } => "add",
            Event::Release { .. } => "release",
            Event::Write { .. } => "write",
            Event::Read { .. } => "read",
            Event::Scan => "scan",
            Event::Transfer { .. } => "transfer",
            Event::Clear { .. } => "clear",
            Event::ClearAll => "clearall",
            Event::Sync => "sync",
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kw = self.keyword();
        match self {
            Event::Bo { pages } => write!(f, "{kw} {pages}"),
            Event::Map { m, first, count } => write!(f, "{kw} {m} {first} {count}"),
            Event::Add { w, first, count } => write!(f, "{kw} {w} {first} {count}"),
            Event::Unmap { m } => write!(f, "{kw} {m}"),
            Event::Release { w } | Event::Transfer { w } | Event::Clear { w } => {
                write!(f, "{kw} {w}")
            }
            Event::Write { m, pages } | Event::Read { m, pages } => {
                write!(f, "{kw} {m}")?;
                for p in pages {
                    write!(f, " {p}")?;
                }
                Ok(())
            }
            Event::Scan | Event::ClearAll | Event::Sync => f.write_str(kw),
        }
    }
}

/// A syntax error in a trace, with its 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceError {
    /// 1-based line number of the offending line.
    pub line: usize,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for TraceError {}

/// Parses a trace (syntax only). Line numbers in errors are 1-based.
pub fn parse_trace(text: &str) -> Result<Vec<Event>, TraceError> {
    Ok(parse_trace_lines(text)?.into_iter().map(|(_, ev)| ev).collect())
}

/// Like [`parse_trace`], but pairs each event with its 1-based line number,
/// so that semantic errors reported by event index can be mapped back to a
/// line.
pub fn parse_trace_lines(text: &str) -> Result<Vec<(usize, Event)>, TraceError> {
    let mut out = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let line = idx + 1;
        let content = match raw.find('#') {
            Some(pos) => &raw[..pos],
            None => raw,
        };
        let tokens: Vec<&str> = content.split_whitespace().collect();
        if tokens.is_empty() {
            continue;
        }
        let ev = parse_tokens(&tokens).map_err(|message| TraceError { line, message })?;
        out.push((line, ev));
    }
    Ok(out)
}

fn parse_tokens(tokens: &[&str]) -> Result<Event, String> {
    let kw = tokens[0];
    let args = &tokens[1..];
    let arity = |n: usize, usage: &str| -> Result<(), String> {
        if args.len() == n {
            Ok(())
        } else {
            Err(format!(
                "wrong number of arguments for `{kw}`: expected `{usage}`, got {} argument(s)",
                args.len()
            ))
        }
    };
    let ev = match kw {
        "bo" => {
            arity(1, "bo N")?;
            Event::Bo {
                pages: num_u64(args[0], "N")?,
            }
        }
        "map" => {
            arity(3, "map M FIRST COUNT")?;
            Event::Map {
                m: num_u32(args[0], "M")?,
                first: num_u64(args[1], "FIRST")?,
                count: num_u64(args[2], "COUNT")?,
            }
        }
        "unmap" => {
            arity(1, "unmap M")?;
            Event::Unmap {
                m: num_u32(args[0], "M")?,
            }
        }
        "add" => {
            arity(3, "add W FIRST COUNT")?;
            Event::Add {
                w: num_u32(args[0], "W")?,
                first: num_u64(args[1], "FIRST")?,
                count: num_u64(args[2], "COUNT")?,
            }
        }
        "release" => {
            arity(1, "release W")?;
            Event::Release {
                w: num_u32(args[0], "W")?,
            }
        }
        "write" | "read" => {
            if args.len() < 2 {
                return Err(format!(
                    "wrong number of arguments for `{kw}`: expected `{kw} M P [P...]`, got {} argument(s)",
                    args.len()
                ));
            }
            let m = num_u32(args[0], "M")?;
            let pages = args[1..]
                .iter()
                .map(|t| num_u64(t, "P"))
                .collect::<Result<Vec<_>, _>>()?;
            if kw == "write" {
                Event::Write { m, pages }
            } else {
                Event::Read { m, pages }
            }
        }
        "scan" => {
            arity(0, "scan")?;
            Event::Scan
        }
        "transfer" => {
            arity(1, "transfer W")?;
            Event::Transfer {
                w: num_u32(args[0], "W")?,
            }
        }
        "clear" => {
            arity(1, "clear W")?;
            Event::Clear {
                w: num_u32(args[0], "W")?,
            }
        }
        "clearall" => {
            arity(0, "clearall")?;
            Event::ClearAll
        }
        "sync" => {
            arity(0, "sync")?;
            Event::Sync
        }
        other => return Err(format!("unknown keyword `{other}`")),
    };
    Ok(ev)
}

fn digits<'a>(tok: &'a str, what: &str) -> Result<&'a str, String> {
    if !tok.is_empty() && tok.bytes().all(|b| b.is_ascii_digit()) {
        Ok(tok)
    } else {
        Err(format!("bad number for {what}: `{tok}` (expected decimal digits)"))
    }
}

fn num_u64(tok: &str, what: &str) -> Result<u64, String> {
    digits(tok, what)?
        .parse::<u64>()
        .map_err(|_| format!("bad number for {what}: `{tok}` does not fit in u64"))
}

fn num_u32(tok: &str, what: &str) -> Result<u32, String> {
    digits(tok, what)?
        .parse::<u32>()
        .map_err(|_| format!("bad number for {what}: `{tok}` does not fit in u32"))
}
