//! What the lab prints: progress lines (`[1/6] building the LAN ... done (42 ms)`), the
//! results table (pod, node, interface, address, reachability) and the verdict line, which is
//! always the last line and starts with `PASS` or `FAIL`.

use std::io::Write;
use std::time::{Duration, Instant};

/// One progress step in flight: the label is printed at once, the outcome when it ends. A
/// step dropped without an outcome (an interrupt, an error) ends its line with `stopped`.
#[derive(Debug)]
pub struct Step {
    started: Instant,
    finished: bool,
}

/// Print `[n/total] what ... ` (no newline yet) and start the clock.
pub fn step(n: usize, total: usize, what: &str) -> Step {
    print!("[{n}/{total}] {what} ... ");
    let _ = std::io::stdout().flush();
    Step {
        started: Instant::now(),
        finished: false,
    }
}

/// `42 ms`, `1.3 s`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

impl Step {
    /// Finish the line with `done (12 ms)`, or `done, <note> (12 ms)`.
    pub fn done(mut self, note: &str) {
        self.finished = true;
        let took = format_duration(self.started.elapsed());
        if note.is_empty() {
            println!("done ({took})");
        } else {
            println!("done, {note} ({took})");
        }
    }

    /// Finish the line with `FAILED, <why> (12 ms)`.
    pub fn failed(mut self, why: &str) {
        self.finished = true;
        println!("FAILED, {why} ({})", format_duration(self.started.elapsed()));
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        if !self.finished {
            println!("stopped ({})", format_duration(self.started.elapsed()));
        }
    }
}

/// One line of the results table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Row {
    /// Pod (its namespace name).
    pub pod: String,
    /// Node namespace.
    pub node: String,
    /// Interface in the pod, with its master: `net1@storage0`.
    pub interface: String,
    /// Address with prefix, or why there is none.
    pub address: String,
    /// What the pings proved.
    pub reachability: String,
}

const HEADERS: [&str; 5] = ["POD", "NODE", "INTERFACE", "ADDRESS", "REACHABILITY"];

/// Render rows as an aligned, two-space separated table with a header line. The last column
/// is not padded (no trailing spaces).
pub fn render_table(rows: &[Row]) -> String {
    let cells: Vec<[&str; 5]> = rows
        .iter()
        .map(|r| {
            [
                r.pod.as_str(),
                r.node.as_str(),
                r.interface.as_str(),
                r.address.as_str(),
                r.reachability.as_str(),
            ]
        })
        .collect();
    let mut widths = HEADERS.map(|h| h.chars().count());
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for line in std::iter::once(&HEADERS).chain(cells.iter()) {
        let mut text = String::new();
        for (i, cell) in line.iter().enumerate() {
            if i + 1 == line.len() {
                text.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                text.push_str(cell);
                text.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

/// The verdict line: `PASS: <summary>` or `FAIL: <n> problem(s); <first problem>`.
pub fn verdict(problems: &[String], summary: &str) -> String {
    match problems {
        [] => format!("PASS: {summary}"),
        [only] => format!("FAIL: 1 problem: {only}"),
        [first, rest @ ..] => format!("FAIL: {} problems (listed above), first: {first}", rest.len() + 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pod: &str, addr: &str, reach: &str) -> Row {
        Row {
            pod: pod.into(),
            node: "nalab-n1".into(),
            interface: "net1@storage0".into(),
            address: addr.into(),
            reachability: reach.into(),
        }
    }

    #[test]
    fn the_table_is_aligned_with_a_header_and_no_trailing_spaces() {
        let t = render_table(&[
            row("nalab-n1-p1", "192.168.4.1/24", "4/4 ok (1472B DF)"),
            row(
                "nalab-n1-p2",
                "192.168.4.10/24",
                "4/4 ok (1472B DF), same node 1/1 ok",
            ),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[0],
            "POD          NODE      INTERFACE      ADDRESS          REACHABILITY"
        );
        assert_eq!(
            lines[1],
            "nalab-n1-p1  nalab-n1  net1@storage0  192.168.4.1/24   4/4 ok (1472B DF)"
        );
        assert_eq!(
            lines[2],
            "nalab-n1-p2  nalab-n1  net1@storage0  192.168.4.10/24  4/4 ok (1472B DF), same node 1/1 ok"
        );
        assert!(lines.iter().all(|l| !l.ends_with(' ')));
        // Every column starts at the same offset in every line.
        let col = lines[0].find("ADDRESS").expect("header");
        assert!(lines[1..].iter().all(|l| l[col..].starts_with("192.168.4.")));
    }

    #[test]
    fn an_empty_table_is_just_the_header() {
        assert_eq!(render_table(&[]), "POD  NODE  INTERFACE  ADDRESS  REACHABILITY\n");
    }

    #[test]
    fn verdicts_start_with_pass_or_fail() {
        assert_eq!(verdict(&[], "6 pods ok"), "PASS: 6 pods ok");
        assert_eq!(verdict(&["x".into()], "ignored"), "FAIL: 1 problem: x");
        assert_eq!(
            verdict(&["x".into(), "y".into()], "ignored"),
            "FAIL: 2 problems (listed above), first: x"
        );
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(format_duration(Duration::from_millis(42)), "42 ms");
        assert_eq!(format_duration(Duration::from_millis(1340)), "1.3 s");
    }
}
