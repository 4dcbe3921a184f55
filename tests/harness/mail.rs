//! Real mail peers for the mail bridge's tests: a Postfix instance of its own (Debian's
//! package, configured in a temporary directory, listening on a loopback port, started
//! and stopped with `postfix -c`; needs root, as Postfix's master does), a capturing mail
//! server behind it (Debian's aiosmtpd writing a maildir), and the bridge as a process.
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
    /// Starts Postfix: mail for `domain` goes to the bridge at 127.0.0.1:`bridge_port`,
    /// other mail to the capturing server at 127.0.0.1:`sink_port`.
    pub fn start(domain: &str, bridge_port: u16, sink_port: u16) -> Postfix {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "the mail tests start Postfix, whose master process must run as root"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        for sub in ["etc", "spool", "data"] {
            std::fs::create_dir_all(root.join(sub)).expect("postfix dirs");
        }
        // Postfix checks that its directories are not writable by others.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let postfix_user = nix::unistd::User::from_name("postfix")
            .expect("users")
            .expect("a postfix user (scripts/setup installs postfix)");
        nix::unistd::chown(&root.join("data"), Some(postfix_user.uid), None).expect("chown");
        let port = free_port();
        let d = root.display();
        let main_cf = format!(
            "compatibility_level = 3.6
queue_directory = {d}/spool
data_directory = {d}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.test
mydomain = postfix.test
myorigin = postfix.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains = {domain}
transport_maps = inline:{{ {domain}=smtp:[127.0.0.1]:{bridge_port} }}
relayhost = [127.0.0.1]:{sink_port}
smtp_tls_security_level = none
smtpd_tls_security_level = none
alias_maps =
alias_database =
local_recipient_maps =
maillog_file = {d}/maillog
maillog_file_prefixes = {d}
smtpd_recipient_restrictions = check_recipient_access inline:{{ {{{BOUNCE} = 550 5.1.1 no such user here}}, {{{DEFER} = 451 4.3.0 mailbox busy, try later}} }}, permit_mynetworks, reject_unauth_destination
minimal_backoff_time = 1s
maximal_backoff_time = 2s
queue_run_delay = 1s
smtp_connect_timeout = 5s
"
        );
        std::fs::write(root.join("etc/main.cf"), main_cf).expect("main.cf");
        let master_cf = format!(
            "127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"
        );
        std::fs::write(root.join("etc/master.cf"), master_cf).expect("master.cf");
        let postfix = Postfix { port, dir };
        postfix.control("start");
        postfix
    }

    fn etc(&self) -> PathBuf {
        self.dir.path().join("etc")
    }

    fn control(&self, verb: &str) {
        let output = Command::new("postfix")
            .arg("-c")
            .arg(self.etc())
            .arg(verb)
            .output()
            .expect("run postfix");
        assert!(
            output.status.success(),
            "postfix {verb}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Submits `raw` with Postfix's own `sendmail` (envelope from `from`, to `to`).
    pub fn sendmail(&self, from: &str, to: &[&str], raw: &[u8]) {
        use std::io::Write;
        let mut child = Command::new("sendmail")
            .arg("-C")
            .arg(self.etc())
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
        std::fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("postfix")
            .arg("-c")
            .arg(self.etc())
            .arg("abort")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Debian's aiosmtpd taking every mail into a maildir.
pub struct MailSink {
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl MailSink {
    pub fn start() -> MailSink {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        // Debian's python3 (a python3 earlier on PATH may not see Debian's modules).
        let child = Command::new("/usr/bin/python3")
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(dir.path().join("maildir"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start aiosmtpd (scripts/setup installs python3-aiosmtpd)");
        MailSink { port, child, dir }
    }

    /// Whether it takes connections yet.
    pub fn is_listening(&self) -> bool {
        std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
    }

    /// Every mail delivered so far, as raw bytes.
    pub fn mails(&self) -> Vec<Vec<u8>> {
        let maildir = self.dir.path().join("maildir");
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
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `raftq bridge mail` as a process, reaching the cluster with TLS and the admin token.
pub struct BridgeProcess {
    child: Option<Child>,
    config: PathBuf,
    nodes: Vec<String>,
    _dir: tempfile::TempDir,
}

impl BridgeProcess {
    /// Starts the bridge with the configuration `toml` against `nodes`.
    pub fn start(toml: &str, nodes: &[String]) -> BridgeProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("mail.toml");
        std::fs::write(&config, toml).expect("write the bridge's configuration");
        let mut bridge = BridgeProcess {
            child: None,
            config,
            nodes: nodes.to_vec(),
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
        let child = crate::cli()
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
