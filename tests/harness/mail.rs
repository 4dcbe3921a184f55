//! Real mail peers for the mail bridge's tests: a Postfix instance of its own (Debian's
//! package, configured in a temporary directory, listening on a loopback port: see
//! `scripts/peers/postfix`; needs root, as Postfix's master does), a capturing mail server
//! behind it (Debian's aiosmtpd writing a maildir: `scripts/peers/mailsink`), and the
//! bridge as a process.
//!
//! Postfix relays mail for the bridge's domain to the bridge and everything else to the
//! maildir server; it answers 550 for `bounce@example.org` and 451 for
//! `defer@example.org` (its own access rules), so the bridge meets a real relay's refusals.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::free_port;

/// The recipient Postfix refuses for good, and the one it always asks to try later.
pub const BOUNCE: &str = "bounce@example.org";
pub const DEFER: &str = "defer@example.org";

/// A Postfix instance of the test's own.
pub struct Postfix {
    /// Its SMTP port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Postfix {
    /// Starts Postfix (`scripts/peers/postfix`): mail for `domain` goes to the bridge at
    /// 127.0.0.1:`bridge_port`, other mail to the capturing server at
    /// 127.0.0.1:`sink_port`. With `tls` (certificate, key, CA), it offers STARTTLS and
    /// requires TLS towards the bridge.
    pub fn start(
        domain: &str,
        bridge_port: u16,
        sink_port: u16,
        tls: Option<[&Path; 3]>,
    ) -> Postfix {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "the mail tests start Postfix, whose master process must run as root"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let mut command = peer_script("postfix");
        command
            .arg("start")
            .env("RAFTQ_POSTFIX_DIR", dir.path().join("postfix"))
            .env("RAFTQ_POSTFIX_PORT", port.to_string())
            .env("RAFTQ_MAIL_DOMAIN", domain)
            .env("RAFTQ_MAIL_BRIDGE", format!("127.0.0.1:{bridge_port}"))
            .env("RAFTQ_MAIL_SINK", format!("127.0.0.1:{sink_port}"));
        if let Some([cert, key, ca]) = tls {
            command.env(
                "RAFTQ_POSTFIX_TLS",
                format!("{} {} {}", cert.display(), key.display(), ca.display()),
            );
        }
        run(&mut command);
        Postfix { port, dir }
    }

    fn etc(&self) -> PathBuf {
        self.dir.path().join("postfix/etc")
    }

    /// Submits `raw` with Postfix's own `sendmail` (envelope from `from`, to `to`).
    pub fn sendmail(&self, from: &str, to: &[&str], raw: &[u8]) {
        sendmail(&self.etc(), from, to, raw);
    }

    /// The configuration directory (`sendmail -C`, `postqueue -c`).
    pub fn config_dir(&self) -> PathBuf {
        self.etc()
    }

    /// The mails Postfix still holds (queued or deferred), one JSON object each.
    pub fn queued(&self) -> Vec<serde_json::Value> {
        let output = Command::new("postqueue")
            .arg("-c")
            .arg(self.etc())
            .arg("-j")
            .output()
            .expect("run postqueue");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// Asks Postfix to try its deferred mail now.
    pub fn flush(&self) {
        let _ = Command::new("postqueue")
            .arg("-c")
            .arg(self.etc())
            .arg("-f")
            .status();
    }

    /// Postfix's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postfix/maillog")).unwrap_or_default()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = peer_script("postfix")
            .arg("stop")
            .env("RAFTQ_POSTFIX_DIR", self.dir.path().join("postfix"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Submits `raw` with the `sendmail` of the Postfix configured in `config_dir`.
pub fn sendmail(config_dir: &Path, from: &str, to: &[&str], raw: &[u8]) {
    use std::io::Write;
    let mut child = Command::new("sendmail")
        .arg("-C")
        .arg(config_dir)
        .args(["-i", "-f", from, "--"])
        .args(to)
        .stdin(Stdio::piped())
        .spawn()
        .expect("run sendmail");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(raw)
        .expect("write the mail");
    assert!(child.wait().expect("sendmail").success(), "sendmail failed");
}

/// One of the project's `scripts/peers/` scripts.
fn peer_script(name: &str) -> Command {
    Command::new(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../scripts/peers")
            .join(name),
    )
}

/// Runs a peer script to success, or fails the test with what it said.
fn run(command: &mut Command) {
    let output = command.output().expect("run a peer script");
    assert!(
        output.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Debian's aiosmtpd taking every mail into a maildir (`scripts/peers/mailsink`).
pub struct MailSink {
    pub port: u16,
    dir: tempfile::TempDir,
}

impl MailSink {
    pub fn start() -> MailSink {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        run(peer_script("mailsink")
            .arg("start")
            .env("RAFTQ_MAILSINK_DIR", dir.path().join("sink"))
            .env("RAFTQ_MAIL_SINK", format!("127.0.0.1:{port}")));
        MailSink { port, dir }
    }

    /// Whether it takes connections yet.
    pub fn is_listening(&self) -> bool {
        std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
    }

    /// Every mail delivered so far, as raw bytes.
    pub fn mails(&self) -> Vec<Vec<u8>> {
        let maildir = self.dir.path().join("sink/maildir");
        let mut mails = Vec::new();
        for sub in ["new", "cur"] {
            let Ok(entries) = std::fs::read_dir(maildir.join(sub)) else {
                continue;
            };
            for entry in entries.flatten() {
                if let Ok(bytes) = std::fs::read(entry.path()) {
                    mails.push(bytes);
                }
            }
        }
        mails
    }
}

impl Drop for MailSink {
    fn drop(&mut self) {
        let _ = peer_script("mailsink")
            .arg("stop")
            .env("RAFTQ_MAILSINK_DIR", self.dir.path().join("sink"))
            .status();
    }
}

/// `raftq bridge mail` as a process, reaching the cluster with TLS and the admin token.
pub struct BridgeProcess {
    child: Option<Child>,
    config: PathBuf,
    nodes: Vec<String>,
    /// The token it authenticates with (default: the tests' admin token).
    token: Option<String>,
    _dir: tempfile::TempDir,
}

impl BridgeProcess {
    /// Starts the bridge with the configuration `toml` against `nodes`, with `token`
    /// (a principal's) or the admin token.
    pub fn start(toml: &str, nodes: &[String], token: Option<&str>) -> BridgeProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("mail.toml");
        std::fs::write(&config, toml).expect("write the bridge's configuration");
        let mut bridge = BridgeProcess {
            child: None,
            config,
            nodes: nodes.to_vec(),
            token: token.map(str::to_string),
            _dir: dir,
        };
        bridge.restart();
        bridge
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// What it logged (all its runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.config.with_file_name("bridge.log")
    }

    /// Starts it (again, after [`BridgeProcess::kill`]).
    pub fn restart(&mut self) {
        self.kill();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("the bridge's log file");
        let mut command = crate::cli();
        if let Some(token) = &self.token {
            command.env("RAFTQ_TOKEN", token);
        }
        let child = command
            .args(["bridge", "mail", "--config"])
            .arg(&self.config)
            .arg("--cluster")
            .arg(self.nodes.join(","))
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().expect("the log file"))
            .stderr(log)
            .spawn()
            .expect("start raftq bridge mail");
        self.child = Some(child);
    }

    /// Kills it with -9.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for BridgeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
