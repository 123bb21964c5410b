//! `hwntpd-mangen`: print the hwntpd(8) manual page (roff), generated from the
//! same clap definitions as `hwntpd --help`, plus the sections `--help` has no
//! room for (configuration file, signals, files).
//!
//! `cargo run --release --bin hwntpd-mangen > hwntpd.8`, or `scripts/man.sh`.

use std::io::Write;

use clap::CommandFactory;
use hwntpd::server::live::LIVE_KEYS;

const EXTRA: &str = r#".SH "CONFIGURATION FILE"
\fB\-\-config\fR \fIPATH\fR reads a TOML file whose keys are the long option names
without the leading dashes, for example \fBlisten = ["0.0.0.0:123"]\fR,
\fBreference = "phc"\fR, \fBstratum = 1\fR. Every option has a key. Options
given on the command line override the file (a repeatable option replaces
the whole list). Unknown keys and bad values are errors naming the line and
the key. \fBhwntpd \-\-config\fR \fIPATH\fR \fB\-\-check\fR checks a file
without serving. The example \fIetc/hwntpd.toml\fR in the source documents
every key.
.SH SIGNALS
.TP
\fBSIGHUP\fR
Re-read the configuration file. LIVE change at once, without
restarting a worker or dropping a request. A change to any other option is
logged as needing a restart and the running value is kept. A file with any
error is rejected whole and the running configuration stays.
.TP
\fBSIGINT\fR, \fBSIGTERM\fR
Stop: in-flight replies are sent and the final statistics are logged and
written.
.SH LOGGING
Logs go to standard error, with colours only when it is a terminal (and
\fBNO_COLOR\fR is unset), and without timestamps when it is the systemd
journal's stream (\fBJOURNAL_STREAM\fR), which stamps every line itself.
.SH FILES
.TP
\fI/etc/hwntpd/hwntpd.toml\fR
The configuration file, by convention (give it with \fB\-\-config\fR).
.TP
\fI/dev/ptp*\fR
PTP hardware clocks of timestamping NICs.
.SH "SEE ALSO"
\fBchronyd\fR(8), \fBptp4l\fR(8), \fBphc2sys\fR(8)
"#;

fn main() -> std::io::Result<()> {
    let cmd = hwntpd::config::Args::command();
    let man = clap_mangen::Man::new(cmd).section("8");
    let mut out = Vec::new();
    man.render(&mut out)?;
    let live: Vec<String> = LIVE_KEYS
        .iter()
        .map(|k| format!("\\fB\\-\\-{}\\fR", k.replace('-', "\\-")))
        .collect();
    let live = match live.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        None => "no option".into(),
    };
    out.extend_from_slice(EXTRA.replace("LIVE", &live).as_bytes());
    std::io::stdout().write_all(&out)
}
