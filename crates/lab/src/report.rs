//! What the lab prints: progress lines (`[1/7] building the LANs ... done (42 ms)`), the
//! results table (pod, node, eth0 address, lhnet1 address, the storage IP Longhorn reads from
//! network-status, reachability) and the verdict line, which is always the last line and starts
//! with `PASS` or `FAIL`.

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
    /// Pod (its namespace name, also its Kubernetes name in `longhorn-system`).
    pub pod: String,
    /// Node namespace.
    pub node: String,
    /// The cluster-network address on `eth0`, or why there is none.
    pub eth0: String,
    /// The storage address on `lhnet1`, or `-`.
    pub lhnet1: String,
    /// The storage IP Longhorn reads from network-status, and whether it is `lhnet1`'s.
    pub longhorn: String,
    /// What the pings over the storage network proved.
    pub reachability: String,
}

const HEADERS: [&str; 6] = [
    "POD",
    "NODE",
    "ETH0 (CLUSTER)",
    "LHNET1 (STORAGE)",
    "LONGHORN IP",
    "REACHABILITY",
];

/// Render rows as an aligned, two-space separated table with a header line. The last column
/// is not padded (no trailing spaces).
pub fn render_table(rows: &[Row]) -> String {
    let cells: Vec<[&str; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.pod.as_str(),
                r.node.as_str(),
                r.eth0.as_str(),
                r.lhnet1.as_str(),
                r.longhorn.as_str(),
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

    fn row(pod: &str, eth0: &str, addr: &str, reach: &str) -> Row {
        Row {
            pod: pod.into(),
            node: "nalab-n1".into(),
            eth0: eth0.into(),
            lhnet1: addr.into(),
            longhorn: format!("{} ok", addr.split('/').next().unwrap_or_default()),
            reachability: reach.into(),
        }
    }

    #[test]
    fn the_table_is_aligned_with_a_header_and_no_trailing_spaces() {
        let t = render_table(&[
            row(
                "nalab-n1-p1",
                "10.42.0.1/16",
                "192.168.4.1/24",
                "4/4 ok (1472B DF)",
            ),
            row(
                "nalab-n1-p2",
                "10.42.0.2/16",
                "192.168.4.10/24",
                "4/4 ok (1472B DF), same node 1/1 ok",
            ),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[0],
            "POD          NODE      ETH0 (CLUSTER)  LHNET1 (STORAGE)  LONGHORN IP      REACHABILITY"
        );
        assert_eq!(
            lines[1],
            "nalab-n1-p1  nalab-n1  10.42.0.1/16    192.168.4.1/24    192.168.4.1 ok   4/4 ok (1472B DF)"
        );
        assert_eq!(
            lines[2],
            "nalab-n1-p2  nalab-n1  10.42.0.2/16    192.168.4.10/24   192.168.4.10 ok  4/4 ok (1472B DF), same node 1/1 ok"
        );
        assert!(lines.iter().all(|l| !l.ends_with(' ')));
        // Every column starts at the same offset in every line.
        let col = lines[0].find("LHNET1").expect("header");
        assert!(lines[1..].iter().all(|l| l[col..].starts_with("192.168.4.")));
    }

    #[test]
    fn an_empty_table_is_just_the_header() {
        assert_eq!(
            render_table(&[]),
            "POD  NODE  ETH0 (CLUSTER)  LHNET1 (STORAGE)  LONGHORN IP  REACHABILITY\n"
        );
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
