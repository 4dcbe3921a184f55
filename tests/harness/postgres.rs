//! A real PostgreSQL server for the tests: Debian's `postgres`, initialised with `initdb`
//! in a temporary directory and listening on a loopback port, run as the `postgres` user
//! when the tests run as root (PostgreSQL refuses to run as root). `scripts/setup`
//! installs the server when it is missing.

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_port, wait_until};

/// A running PostgreSQL server, stopped (immediate shutdown) and removed on drop.
pub struct Postgres {
    child: Child,
    dir: tempfile::TempDir,
    pub port: u16,
}

/// The directory with `initdb` and `postgres`: the newest under /usr/lib/postgresql.
fn bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed (/usr/lib/postgresql): run scripts/setup")
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("no PostgreSQL server under /usr/lib/postgresql: run scripts/setup")
        .1
}

/// The user and group the server runs as: `postgres` when this process is root, else
/// this process's own.
fn server_user() -> Option<(u32, u32)> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let user = nix::unistd::User::from_name("postgres")
        .expect("reading the user database")
        .expect("no user postgres: install Debian's postgresql package (scripts/setup)");
    Some((user.uid.as_raw(), user.gid.as_raw()))
}

fn as_server_user(command: &mut Command, user: Option<(u32, u32)>) -> &mut Command {
    if let Some((uid, gid)) = user {
        command.uid(uid).gid(gid);
    }
    command
}

impl Postgres {
    /// Initialises a database cluster and starts the server; returns once it accepts
    /// connections.
    pub async fn start() -> Postgres {
        Postgres::start_inner(None).await
    }

    /// As [`Postgres::start`], serving TLS with `certificate` and taking TCP connections
    /// only over TLS (`hostssl` in pg_hba.conf).
    pub async fn start_with_tls(certificate: &raftq_tls::generate::Issued) -> Postgres {
        Postgres::start_inner(Some(certificate)).await
    }

    async fn start_inner(tls: Option<&raftq_tls::generate::Issued>) -> Postgres {
        let bin = bin_dir();
        let user = server_user();
        let dir = tempfile::tempdir().expect("temp dir");
        // The server's user must reach and own its directory.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown");
        }
        let data = dir.path().join("data");
        let initdb = as_server_user(&mut Command::new(bin.join("initdb")), user)
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .stdout(Stdio::null())
            .output()
            .expect("run initdb");
        assert!(
            initdb.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&initdb.stderr)
        );
        let mut settings: Vec<String> = Vec::new();
        if let Some(certificate) = tls {
            let (cert, key) = certificate
                .write(dir.path(), "server")
                .expect("server certificate");
            for file in [&cert, &key] {
                if let Some((uid, gid)) = user {
                    std::os::unix::fs::chown(file, Some(uid), Some(gid)).expect("chown");
                }
            }
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
            )
            .expect("pg_hba.conf");
            settings.extend([
                "ssl=on".to_string(),
                format!("ssl_cert_file={}", cert.display()),
                format!("ssl_key_file={}", key.display()),
            ]);
        }
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("postgres.log")).expect("log file");
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path().join("postgres.log"), Some(uid), Some(gid))
                .expect("chown");
        }
        let child = as_server_user(&mut Command::new(bin.join("postgres")), user)
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .arg("-k")
            .arg(dir.path())
            // Durable as in production: the tests kill processes, not the machine, but the
            // figures should be a real server's.
            .args(["-c", "fsync=on", "-c", "max_connections=200"])
            .args(settings.iter().flat_map(|setting| ["-c", setting.as_str()]))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        let server = Postgres { child, dir, port };
        // Ready once it takes a connection, or refuses plaintext by its pg_hba.conf (not
        // while it is starting up).
        wait_until(
            "PostgreSQL accepts connections",
            Duration::from_secs(60),
            || async move {
                let answered =
                    tokio_postgres::connect(&server_url(port), tokio_postgres::NoTls).await;
                match answered {
                    Ok(_) => Some(()),
                    Err(error)
                        if error.code()
                            == Some(&tokio_postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION) =>
                    {
                        Some(())
                    }
                    Err(_) => None,
                }
            },
        )
        .await;
        server
    }

    /// The connection string of the `postgres` database.
    pub fn url(&self) -> String {
        server_url(self.port)
    }

    /// A connection (its connection task spawned on the current runtime).
    pub async fn connect(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .expect("connect to PostgreSQL");
        tokio::spawn(connection);
        client
    }

    /// The server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.dir.path().join("postgres.log"))
    }
}

fn server_url(port: u16) -> String {
    format!("host=127.0.0.1 port={port} user=postgres dbname=postgres")
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGQUIT: immediate shutdown; the backends end with the postmaster.
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGQUIT);
        let _ = self.child.wait();
    }
}

/// A `raftq pg-relay` process (with the tests' CA and admin token) and its metrics port.
pub struct RelayProcess {
    child: Option<Child>,
    /// Its `/metrics` and `/healthz`.
    pub http: String,
    command: Vec<std::ffi::OsString>,
    /// The file its connection string is read from, when it is.
    _url_file: Option<tempfile::NamedTempFile>,
}

impl RelayProcess {
    /// Starts a relay of the outbox at `database_url` forwarding to `nodes`, given the
    /// connection string on its command line, or (`url_in_file`) in a file.
    pub fn start(database_url: &str, nodes: &[String], url_in_file: bool) -> RelayProcess {
        let http = format!("127.0.0.1:{}", free_port());
        let mut command: Vec<std::ffi::OsString> = vec!["pg-relay".into()];
        let url_file = url_in_file.then(|| {
            let file = tempfile::NamedTempFile::new().expect("temp file");
            std::fs::write(file.path(), format!("{database_url}\n")).expect("write");
            command.push("--database-url-file".into());
            command.push(file.path().into());
            file
        });
        if url_file.is_none() {
            command.extend(["--database-url".into(), database_url.into()]);
        }
        command.extend(["--cluster".into(), nodes.join(",").into()]);
        command.extend(["--batch-messages".into(), "20".into()]);
        command.extend(["--http-listen".into(), http.clone().into()]);
        let mut relay = RelayProcess {
            child: None,
            http,
            command,
            _url_file: url_file,
        };
        relay.restart();
        relay
    }

    /// Starts it (again, after [`RelayProcess::kill`]).
    pub fn restart(&mut self) {
        self.kill();
        let child = crate::cli()
            .args(&self.command)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start raftq pg-relay");
        self.child = Some(child);
    }

    /// Kills it with -9.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether it reports itself the active relay (None while its port does not answer).
    pub async fn active(&self) -> Option<bool> {
        tokio::net::TcpStream::connect(&self.http).await.ok()?;
        let (status, metrics) = crate::http_get(&self.http, "/metrics").await;
        (status == 200).then(|| crate::metric_value(&metrics, "raftq_pg_relay_active") == 1.0)
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
