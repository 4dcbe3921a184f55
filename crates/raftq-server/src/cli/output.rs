//! How client commands write their results: text for people or one JSON object per line.

use clap::ValueEnum;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum Output {
    Text,
    Json,
}

pub(super) fn print(output: Output, value: serde_json::Value, text: String) {
    match output {
        Output::Json => out(value),
        Output::Text => out(text),
    }
}

/// Writes one line to standard output. When nobody reads it any more (`raftq peek q |
/// head -1`), stops at once and quietly, with 141 as a filter killed by SIGPIPE would.
pub(super) fn out(line: impl std::fmt::Display) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
        eprintln!("raftq: cannot write to standard output: {error}");
        std::process::exit(1);
    }
}
