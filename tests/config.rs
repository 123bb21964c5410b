//! The configuration file against the built binary: `--check`, and the
//! shipped example (`etc/hwntpd.toml`) documents every flag and parses.

mod common;

use std::path::Path;
use std::process::Output;

use common::*;

fn check(conf: &Path, extra: &[&str]) -> Output {
    hwntpd_cmd(None)
        .args(["--config", conf.to_str().unwrap(), "--check"])
        .args(extra)
        .output()
        .unwrap()
}

fn example() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/hwntpd.toml")
}

/// The example with every `# key = value` line uncommented.
fn uncommented(text: &str) -> String {
    text.lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest) if is_setting(rest) => rest,
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether `line` is `key = value` for a key made of lowercase letters,
/// digits and hyphens.
fn is_setting(line: &str) -> bool {
    line.split_once(" = ").is_some_and(|(k, _)| {
        !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    })
}

#[test]
fn the_example_documents_every_flag() {
    let text = std::fs::read_to_string(example()).unwrap();
    let documented: Vec<&str> = text
        .lines()
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .filter(|l| is_setting(l))
        .map(|l| l.split_once(" = ").unwrap().0)
        .collect();
    let keys = hwntpd::config::file::file_keys();
    assert!(keys.len() >= 20, "{keys:?}");
    let missing: Vec<_> = keys
        .iter()
        .filter(|k| !documented.contains(&k.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "etc/hwntpd.toml lacks a commented example of: {missing:?}"
    );
    let unknown: Vec<_> = documented
        .iter()
        .filter(|d| !keys.iter().any(|k| k == *d))
        .collect();
    assert!(
        unknown.is_empty(),
        "etc/hwntpd.toml documents unknown keys: {unknown:?}"
    );
}

#[test]
fn the_example_says_which_keys_change_live() {
    let text = std::fs::read_to_string(example()).unwrap();
    let mut comment = String::new();
    for line in text.lines() {
        let body = line.strip_prefix("# ").unwrap_or(line);
        if is_setting(body) {
            let key = body.split_once(" = ").unwrap().0;
            let live = hwntpd::server::live::LIVE_KEYS.contains(&key);
            let says = (comment.contains("Live."), comment.contains("Restart."));
            assert_eq!(
                says,
                (live, !live),
                "etc/hwntpd.toml: the comment of {key} must say {}",
                if live { "Live." } else { "Restart." }
            );
        } else if line.trim().is_empty() {
            comment.clear();
        } else {
            if body.trim_start().starts_with("---") {
                continue;
            }
            comment.push_str(body);
            comment.push(' ');
        }
    }
}

#[test]
fn the_example_parses_as_shipped_and_uncommented() {
    let out = check(&example(), &[]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "configuration OK\n");

    let text = std::fs::read_to_string(example()).unwrap();
    let all = uncommented(&text);
    assert!(all.lines().filter(|l| is_setting(l)).count() >= 20);
    let dir = tempdir("config-example");
    let p = dir.join("all.toml");
    std::fs::write(&p, &all).unwrap();
    let out = check(&p, &[]);
    assert!(
        out.status.success(),
        "every example value must be valid: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "configuration OK\n");
}

#[test]
fn check_reports_each_error_with_line_and_key_and_exits_1() {
    let dir = tempdir("config-bad");
    let p = dir.join("bad.toml");
    std::fs::write(
        &p,
        "reference = \"local\"\nstratum = 0\nlisten = [\"127.0.0.1\"]\nno-such-flag = 1\n",
    )
    .unwrap();
    let out = check(&p, &[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "bad.toml:2: key \"stratum\"",
        "bad.toml:3: key \"listen\"",
        "bad.toml:4: key \"no-such-flag\": unknown key",
    ] {
        assert!(err.contains(want), "{want:?} not in:\n{err}");
    }
    assert_eq!(err.lines().count(), 3, "one line per error:\n{err}");

    // Values valid one by one but not together.
    std::fs::write(&p, "stratum = 2\nrefid = \"GPS\"\n").unwrap();
    let out = check(&p, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--refid \"GPS\" at stratum 2"));
    // ... and the command line overrides the file.
    let out = check(&p, &["--refid", "10.0.0.1"]);
    assert!(out.status.success(), "{out:?}");
}
