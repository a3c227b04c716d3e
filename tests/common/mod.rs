//! Helpers for end-to-end tests: run the real `quiver` binary with bounded waits.

#![allow(dead_code)] // Each test file uses a different part.

pub mod corpus;
pub mod python;
pub mod scenarios;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest any one command may take before the test fails (debug builds on a busy 2-core box).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// The binary with an environment that does not leak the developer's settings.
pub fn quiver() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quiver"));
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(|n| n.starts_with("QUIVER_")) {
            cmd.env_remove(&name);
        }
    }
    cmd.env_remove("RUST_LOG");
    cmd
}

/// What a finished command did.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Panics with the output unless the command succeeded.
    #[track_caller]
    pub fn ok(self) -> Self {
        assert!(self.status.success(), "command failed: {self:#?}");
        self
    }

    /// Panics unless the command failed; returns its standard error.
    #[track_caller]
    pub fn failed(self) -> String {
        assert!(
            !self.status.success(),
            "command should have failed: {self:#?}"
        );
        assert!(
            self.stdout.is_empty(),
            "a failed command printed results: {self:#?}"
        );
        self.stderr
    }

    /// Panics unless the command failed; returns its standard error (it may have printed the
    /// results of statements before the one that failed).
    #[track_caller]
    pub fn failed_with_output(self) -> String {
        assert!(
            !self.status.success(),
            "command should have failed: {self:#?}"
        );
        self.stderr
    }

    pub fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }
}

/// Reads everything from `from` on a thread of its own (so that a full pipe never blocks the
/// child that writes it).
pub fn drain(mut from: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = from.read_to_end(&mut buf);
        buf
    })
}

/// Waits for `child` to exit; after `timeout`, kills it and returns `None`.
pub fn wait_until(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            Err(e) => panic!("waiting for process {}: {e}", child.id()),
        }
    }
}

/// Waits for `child` to exit, killing it (and failing the test) after `timeout`.
#[track_caller]
pub fn wait_bounded(child: &mut Child, timeout: Duration) -> ExitStatus {
    let id = child.id();
    wait_until(child, timeout)
        .unwrap_or_else(|| panic!("process {id} did not exit within {timeout:?}"))
}

/// Runs `cmd` with `stdin` as its input; kills it and fails the test (with what it printed)
/// after `timeout`.
#[track_caller]
pub fn run_bounded(mut cmd: Command, stdin: &[u8], timeout: Duration) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let mut input = child.stdin.take().expect("stdin is piped");
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        // The command may exit without reading everything (on an error); that is not our failure.
        let _ = input.write_all(&data);
    });
    let out = drain(child.stdout.take().expect("stdout is piped"));
    let err = drain(child.stderr.take().expect("stderr is piped"));
    let status = wait_until(&mut child, timeout);
    let _ = writer.join();
    let stdout = String::from_utf8_lossy(&out.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
    let Some(status) = status else {
        panic!(
            "{what} did not finish within {timeout:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
        );
    };
    Output {
        status,
        stdout,
        stderr,
    }
}

/// Runs `quiver ARGS` with `stdin` as its input and waits (bounded) for it to finish.
#[track_caller]
pub fn run(args: &[&str], stdin: &[u8]) -> Output {
    run_with_env(args, stdin, &[])
}

/// Like [`run`], with extra environment variables.
#[track_caller]
pub fn run_with_env(args: &[&str], stdin: &[u8], envs: &[(&str, &str)]) -> Output {
    let mut cmd = quiver();
    cmd.args(args).envs(envs.iter().copied());
    run_bounded(cmd, stdin, COMMAND_TIMEOUT)
}

/// A place the `quiver` commands `topics`, `produce` and `consume` work against: a data
/// directory ([`DataDir`]) or a running server ([`Running`]). The scenarios in [`scenarios`]
/// take any `Cli`, so that each runs against every backend.
///
/// An implementation gives only [`Cli::target`]; the provided methods run the real binary with
/// those two arguments appended, each run bounded by [`COMMAND_TIMEOUT`]. Nothing is shared
/// between runs but the backend's state (the directory, the server).
pub trait Cli {
    /// The flag and value that point a command here (`--data-dir DIR`,
    /// `--bootstrap-server HOST:PORT`).
    fn target(&self) -> [&str; 2];

    /// `quiver ARGS` pointed here, not yet started.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = quiver();
        cmd.args(args).args(self.target());
        cmd
    }

    /// Runs `quiver ARGS` pointed here, with `stdin` as its input, and waits (bounded).
    #[track_caller]
    fn run(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut all = args.to_vec();
        all.extend(self.target());
        run(&all, stdin)
    }

    /// All records of a topic as printed by `consume --from-beginning --timeout-ms 0` with
    /// `extra` flags.
    #[track_caller]
    fn consume_all(&self, topic: &str, extra: &[&str]) -> Vec<String> {
        let mut args = vec!["consume", topic, "--from-beginning", "--timeout-ms", "0"];
        args.extend(extra);
        self.run(&args, b"")
            .ok()
            .lines()
            .into_iter()
            .map(str::to_owned)
            .collect()
    }
}

/// A data directory in a fresh temporary directory; the data directory itself is not created.
pub struct DataDir {
    tmp: tempfile::TempDir,
    path: PathBuf,
}

impl DataDir {
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().expect("temp dir");
        let path = tmp.path().join("data");
        DataDir { tmp, path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn tmp(&self) -> &Path {
        self.tmp.path()
    }

    pub fn arg(&self) -> &str {
        self.path.to_str().expect("temp paths are UTF-8")
    }
}

impl Cli for DataDir {
    fn target(&self) -> [&str; 2] {
        ["--data-dir", self.arg()]
    }
}

/// A running `quiver server`.
pub struct Server {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: Option<JoinHandle<Vec<u8>>>,
    /// The ready line.
    pub ready: String,
}

impl Server {
    /// Starts `quiver server ARGS` and waits (bounded) for its ready line.
    #[track_caller]
    pub fn start(args: &[&str], envs: &[(&str, &str)]) -> Server {
        // Tests run in parallel: each server gets a free loopback port unless the test picks one.
        let listeners: &[&str] = if args.contains(&"--listeners") {
            &[]
        } else {
            &["--listeners", "PLAINTEXT://127.0.0.1:0"]
        };
        let http: &[&str] = if args.contains(&"--http-port") {
            &[]
        } else {
            &["--http-port", "0", "--http-host", "127.0.0.1"]
        };
        let mut child = quiver()
            .arg("server")
            .args(args)
            .args(listeners)
            .args(http)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn quiver server");
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout is piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stderr = Some(drain(child.stderr.take().expect("stderr is piped")));
        let mut server = Server {
            child,
            stdout: rx,
            stderr,
            ready: String::new(),
        };
        match server.stdout.recv_timeout(COMMAND_TIMEOUT) {
            Ok(line) if line.starts_with("quiver server ready") => server.ready = line,
            other => {
                let _ = server.child.kill();
                let status = server.child.wait();
                panic!(
                    "no ready line from the server: got {other:?}, exit {status:?}, stderr:\n{}",
                    server.take_stderr()
                );
            }
        }
        server
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`TERM`, `KILL`) with the system's `kill`.
    #[track_caller]
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {} failed", self.pid());
    }

    /// Waits (bounded) for the server to exit; returns its status, the rest of its standard
    /// output, and its standard error.
    #[track_caller]
    pub fn wait(mut self) -> Output {
        let status = wait_bounded(&mut self.child, COMMAND_TIMEOUT);
        let mut stdout = String::new();
        while let Ok(line) = self.stdout.recv_timeout(Duration::from_secs(5)) {
            stdout.push_str(&line);
            stdout.push('\n');
        }
        let stderr = self.take_stderr();
        Output {
            status,
            stdout,
            stderr,
        }
    }

    fn take_stderr(&mut self) -> String {
        let bytes = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A `quiver server` on a fresh data directory with a free loopback port, for commands that
/// take `--bootstrap-server` and for Kafka clients.
pub struct Running {
    server: Option<Server>,
    data: DataDir,
    bootstrap: String,
}

impl Running {
    /// Starts `quiver server` with extra environment variables and waits for it to be ready.
    #[track_caller]
    pub fn start(envs: &[(&str, &str)]) -> Running {
        let data = DataDir::new();
        let server = Server::start(&["--data-dir", data.arg()], envs);
        let bootstrap = bootstrap_of(&server.ready);
        Running {
            server: Some(server),
            data,
            bootstrap,
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    pub fn port(&self) -> u16 {
        self.bootstrap
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse().ok())
            .unwrap_or_else(|| panic!("no port in {}", self.bootstrap))
    }

    /// The server's data directory.
    pub fn data(&self) -> &DataDir {
        &self.data
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("the server is running")
    }

    /// True while the server process has not exited.
    pub fn is_running(&self) -> bool {
        Command::new("kill")
            .args(["-0", &self.server().pid().to_string()])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Stops the server with SIGTERM, so that the data directory can be opened in-process;
    /// fails the test unless it exits successfully. Returns what it printed.
    #[track_caller]
    pub fn stop(&mut self) -> Output {
        let server = self.server.take().expect("the server is running");
        server.signal("TERM");
        server.wait().ok()
    }

    /// Stops the server (as [`Running::stop`] does, returning what it printed) and starts
    /// another on the same data directory; the new server has a new port.
    #[track_caller]
    pub fn restart(&mut self, envs: &[(&str, &str)]) -> Output {
        let stopped = self.stop();
        let server = Server::start(&["--data-dir", self.data.arg()], envs);
        self.bootstrap = bootstrap_of(&server.ready);
        self.server = Some(server);
        stopped
    }
}

impl Cli for Running {
    fn target(&self) -> [&str; 2] {
        ["--bootstrap-server", &self.bootstrap]
    }
}

/// `127.0.0.1:PORT` of the HTTP API from the ready line (`…, SQL on http://ADDR, data in …`).
#[track_caller]
pub fn sql_address(ready: &str) -> String {
    let rest = ready
        .split_once("SQL on http://")
        .unwrap_or_else(|| panic!("no SQL address in: {ready}"))
        .1;
    rest.split(',').next().expect("an address").to_owned()
}

/// An HTTP/1.0 request (the response ends when the connection closes): status and body.
pub fn http(address: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(address).expect("HTTP exchange");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("HTTP exchange");
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("HTTP exchange");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("HTTP exchange");
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP exchange");
    let status = head
        .split(' ')
        .nth(1)
        .expect("HTTP exchange")
        .parse()
        .expect("HTTP exchange");
    (status, body.to_owned())
}

/// `127.0.0.1:PORT` from the ready line `quiver server ready: Kafka on 127.0.0.1:PORT (...`.
#[track_caller]
pub fn bootstrap_of(ready: &str) -> String {
    let rest = ready
        .strip_prefix("quiver server ready: Kafka on ")
        .unwrap_or_else(|| panic!("unexpected ready line: {ready}"));
    rest.split([' ', ','])
        .next()
        .unwrap_or_else(|| panic!("no address in: {ready}"))
        .to_owned()
}
