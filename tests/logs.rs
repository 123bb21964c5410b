//! Log output: no ANSI escapes unless standard error is a terminal; no
//! timestamps when standard error is the journal's stream (JOURNAL_STREAM).

mod common;

use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};

use common::*;

/// Run the server on a free loopback port until it answers, with stderr to a
/// file and `env` set; returns the log.
fn run_logging_to_file(
    name: &str,
    env: impl Fn(&std::path::Path) -> Vec<(String, String)>,
) -> String {
    let port = free_port();
    let dir = tempdir(name);
    let log_path = dir.join("log");
    let log = std::fs::File::create(&log_path).unwrap();
    let addr = format!("127.0.0.1:{port}");
    let child = hwntpd_cmd(None)
        .args(["--listen", &addr, "--reference", "local", "--workers", "1"])
        .envs(env(&log_path))
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut server = Server {
        child: Some(child),
        addr: addr.parse().unwrap(),
        dir,
    };
    server.wait_ready();
    assert!(server.stop().success());
    server.log()
}

fn starts_with_timestamp(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() > 20 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-' && b[10] == b'T'
}

#[test]
fn a_log_file_gets_no_ansi_escapes_and_keeps_timestamps() {
    let log = run_logging_to_file("logs-file", |_| Vec::new());
    assert!(log.contains("serving NTP"), "{log}");
    assert!(
        !log.contains('\x1b'),
        "ANSI escapes in a log file:\n{log:?}"
    );
    assert!(log.lines().all(starts_with_timestamp), "{log}");
}

#[test]
fn the_journal_stream_gets_no_timestamps() {
    let log = run_logging_to_file("logs-journal", |p| {
        let m = std::fs::metadata(p).unwrap();
        vec![("JOURNAL_STREAM".into(), format!("{}:{}", m.dev(), m.ino()))]
    });
    assert!(log.contains("serving NTP"), "{log}");
    assert!(!log.contains('\x1b'), "{log:?}");
    assert!(
        !log.lines().any(starts_with_timestamp),
        "timestamps on the journal's stream:\n{log}"
    );
    // JOURNAL_STREAM inherited from a service but naming another file: the
    // file gets timestamps.
    let log = run_logging_to_file("logs-journal-other", |_| {
        vec![("JOURNAL_STREAM".into(), "1:2".into())]
    });
    assert!(log.lines().all(starts_with_timestamp), "{log}");
}

#[test]
fn a_terminal_gets_colours() {
    if skip_unless(
        have("script") && have("timeout"),
        "needs script(1) and timeout(1) (util-linux, coreutils)",
    ) {
        return;
    }
    let port = free_port();
    let cmd = format!(
        "timeout -s INT 2 {} --listen 127.0.0.1:{port} --reference local --workers 1",
        env!("CARGO_BIN_EXE_hwntpd")
    );
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("serving NTP"), "{text:?}");
    assert!(text.contains("\x1b["), "no colour on a terminal: {text:?}");
}
