//! The line protocol between `cohmem-stress` and its worker processes.
//!
//! The parent writes to a worker's stdin: `stop` (finish the current round,
//! report and exit; end of input means the same), and in chaos mode `fork`
//! (after the current round, fork a child that drops every inherited
//! object and exits) and `switch` (after the current round, switch the
//! process's tracking mechanism). A worker writes one line
//! per event to its stdout:
//!
//! * `ready PID BO_IDS…` once its BOs exist and are mapped;
//! * `round N KEY=VALUE…` after every round (the round's [`Tally`]);
//! * `lost BO PAGE FIRST_BYTE` for a page whose GPU copy differs (a few per
//!   round at most; the round's tally counts all of them);
//! * `retry WHAT: ERROR` when a call had to wait for the daemon (chaos);
//! * `done KEY=VALUE…` with its whole tally, just before a clean exit;
//! * `error MESSAGE` before exiting with a failure.

use std::fmt;

/// Counts for one round or a whole run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Tally {
    /// Completed rounds.
    pub rounds: u64,
    /// Syncs that completed and whose GPU copy was then compared.
    pub syncs: u64,
    /// Pages compared byte for byte with the expected content.
    pub pages: u64,
    /// Bytes compared.
    pub bytes: u64,
    /// Compared pages whose GPU copy differed from what the worker wrote.
    pub lost: u64,
    /// Pages the verified syncs reported uploading.
    pub uploaded_pages: u64,
    /// Bytes the verified syncs reported uploading.
    pub uploaded_bytes: u64,
    /// Write ops (before splitting among threads).
    pub ops: u64,
    /// Bytes those ops wrote.
    pub written_bytes: u64,
    /// Distinct pages written.
    pub written_pages: u64,
    /// Daemon calls that failed with a disconnect and were retried.
    pub retries: u64,
    /// Syncs that completed but could not be verified (the daemon went away
    /// before the export) and were repeated.
    pub unverified_syncs: u64,
    /// Times the client library re-established its session with a
    /// (restarted) daemon.
    pub reconnects: u64,
    /// Signals the worker's handlers (installed without `SA_RESTART`) ran.
    pub signals: u64,
    /// Forked children that dropped every inherited object and exited.
    pub forks: u64,
    /// Mechanism switches of the worker's process.
    pub switches: u64,
}

impl Tally {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Tally) {
        self.rounds += other.rounds;
        self.syncs += other.syncs;
        self.pages += other.pages;
        self.bytes += other.bytes;
        self.lost += other.lost;
        self.uploaded_pages += other.uploaded_pages;
        self.uploaded_bytes += other.uploaded_bytes;
        self.ops += other.ops;
        self.written_bytes += other.written_bytes;
        self.written_pages += other.written_pages;
        self.retries += other.retries;
        self.unverified_syncs += other.unverified_syncs;
        self.reconnects += other.reconnects;
        self.signals += other.signals;
        self.forks += other.forks;
        self.switches += other.switches;
    }

    fn fields(&self) -> [(&'static str, u64); 16] {
        [
            ("rounds", self.rounds),
            ("syncs", self.syncs),
            ("pages", self.pages),
            ("bytes", self.bytes),
            ("lost", self.lost),
            ("uploaded_pages", self.uploaded_pages),
            ("uploaded_bytes", self.uploaded_bytes),
            ("ops", self.ops),
            ("written_bytes", self.written_bytes),
            ("written_pages", self.written_pages),
            ("retries", self.retries),
            ("unverified_syncs", self.unverified_syncs),
            ("reconnects", self.reconnects),
            ("signals", self.signals),
            ("forks", self.forks),
            ("switches", self.switches),
        ]
    }

    /// Parses `KEY=VALUE` words as written by [`fmt::Display`]; unknown
    /// keys are an error.
    pub fn parse<'a>(words: impl Iterator<Item = &'a str>) -> Result<Self, String> {
        let mut t = Tally::default();
        for word in words {
            let (key, value) = word.split_once('=').ok_or_else(|| format!("not KEY=VALUE: {word:?}"))?;
            let value: u64 = value.parse().map_err(|e| format!("{key}: {e}"))?;
            let slot = match key {
                "rounds" => &mut t.rounds,
                "syncs" => &mut t.syncs,
                "pages" => &mut t.pages,
                "bytes" => &mut t.bytes,
                "lost" => &mut t.lost,
                "uploaded_pages" => &mut t.uploaded_pages,
                "uploaded_bytes" => &mut t.uploaded_bytes,
                "ops" => &mut t.ops,
                "written_bytes" => &mut t.written_bytes,
                "written_pages" => &mut t.written_pages,
                "retries" => &mut t.retries,
                "unverified_syncs" => &mut t.unverified_syncs,
                "reconnects" => &mut t.reconnects,
                "signals" => &mut t.signals,
                "forks" => &mut t.forks,
                "switches" => &mut t.switches,
                other => return Err(format!("unknown key {other:?}")),
            };
            *slot = value;
        }
        Ok(t)
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.fields().iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

/// One line from a worker, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerLine {
    /// BOs created and mapped.
    Ready {
        /// The worker's pid.
        pid: u32,
        /// Daemon-wide ids of its BOs.
        bos: Vec<u64>,
    },
    /// A round finished.
    Round {
        /// Round number (from 1).
        round: u64,
        /// Its counts.
        tally: Tally,
    },
    /// A page whose GPU copy differed.
    Lost {
        /// Daemon-wide BO id.
        bo: u64,
        /// Page in the BO.
        page: u64,
        /// First differing byte in the page.
        first_byte: u64,
    },
    /// A call waited for the daemon.
    Retry(String),
    /// Clean end, with the whole tally.
    Done(Tally),
    /// The worker failed.
    Error(String),
}

impl WorkerLine {
    /// Parses one line.
    pub fn parse(line: &str) -> Result<Self, String> {
        let (head, rest) = line.split_once(' ').unwrap_or((line, ""));
        let mut words = rest.split_whitespace();
        let mut num = |what: &str| -> Result<u64, String> {
            words
                .next()
                .ok_or_else(|| format!("{head}: missing {what}"))?
                .parse::<u64>()
                .map_err(|e| format!("{head}: {what}: {e}"))
        };
        match head {
            "ready" => {
                let pid = u32::try_from(num("pid")?).map_err(|e| e.to_string())?;
                let bos = rest
                    .split_whitespace()
                    .skip(1)
                    .map(|w| w.parse::<u64>().map_err(|e| format!("ready: bo id: {e}")))
                    .collect::<Result<_, _>>()?;
                Ok(Self::Ready { pid, bos })
            }
            "round" => {
                let round = num("round")?;
                Ok(Self::Round {
                    round,
                    tally: Tally::parse(rest.split_whitespace().skip(1))?,
                })
            }
            "lost" => Ok(Self::Lost {
                bo: num("bo")?,
                page: num("page")?,
                first_byte: num("first byte")?,
            }),
            "retry" => Ok(Self::Retry(rest.to_owned())),
            "done" => Ok(Self::Done(Tally::parse(rest.split_whitespace())?)),
            "error" => Ok(Self::Error(rest.to_owned())),
            other => Err(format!("unknown worker line {other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_round_trips() {
        let t = Tally {
            rounds: 1,
            syncs: 2,
            pages: 3,
            bytes: 4,
            lost: 5,
            uploaded_pages: 6,
            uploaded_bytes: 7,
            ops: 8,
            written_bytes: 9,
            written_pages: 10,
            retries: 11,
            unverified_syncs: 12,
            reconnects: 13,
            signals: 14,
            forks: 15,
            switches: 16,
        };
        assert_eq!(WorkerLine::parse(&format!("done {t}")), Ok(WorkerLine::Done(t)));
        assert_eq!(
            WorkerLine::parse(&format!("round 9 {t}")),
            Ok(WorkerLine::Round { round: 9, tally: t })
        );
        assert_eq!(
            WorkerLine::parse("ready 42 7 8"),
            Ok(WorkerLine::Ready {
                pid: 42,
                bos: vec![7, 8]
            })
        );
        assert_eq!(
            WorkerLine::parse("lost 1 2 3"),
            Ok(WorkerLine::Lost {
                bo: 1,
                page: 2,
                first_byte: 3
            })
        );
        assert!(WorkerLine::parse("bogus").is_err());
    }
}
