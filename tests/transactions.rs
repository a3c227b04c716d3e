//! Kafka transactions end to end: real clients (confluent-kafka's librdkafka and kafka-python,
//! through `tests/python/transactions.py`) against the `quiver` binary on loopback.
//!
//! What holds: read_committed consumers see exactly the committed records, in order, and
//! read_uncommitted ones everything written; offsets sent in a transaction apply only if it
//! commits; a second producer with the same transactional id fences the first; a transaction
//! abandoned by a dead producer is aborted after its timeout (across a broker restart too) so
//! that readers move on; and a consume-transform-produce application killed with SIGKILL again
//! and again, with the broker killed once in the middle of a transaction, writes each result
//! exactly once.
//!
//! The Python clients come from the venv `./scripts/test` makes (`QUIVER_PYTHON`).

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{DataDir, Running, Server, bootstrap_of, drain, python, run_bounded};

/// Longest one run of the script may take (a debug server on a busy 2-core machine).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);
/// Longest the consume-transform-produce application may go without the progress a step waits
/// for (a first commit, an open transaction, the end).
const APP_STEP_TIMEOUT: Duration = Duration::from_secs(90);

/// Server settings for every test here: groups rebalance at once (Kafka waits 3 s for more
/// members), and timed-out transactions are looked for every 500 ms (Kafka: every 10 s).
const ENVS: &[(&str, &str)] = &[
    ("QUIVER_GROUP_INITIAL_REBALANCE_DELAY_MS", "0"),
    (
        "QUIVER_TRANSACTION_ABORT_TIMED_OUT_TRANSACTION_CLEANUP_INTERVAL_MS",
        "500",
    ),
];

/// Runs `transactions.py ARGS`; returns its standard output, failing the test unless it succeeds.
#[track_caller]
fn py(args: &[&str]) -> String {
    python::run("transactions.py", args, SCRIPT_TIMEOUT)
}

/// Stops a server with SIGTERM and checks that it stopped cleanly and without a panic.
#[track_caller]
fn stop_cleanly(mut b: Running) {
    let out = b.stop();
    assert_eq!(out.stdout, "quiver server stopped\n", "{out:#?}");
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
}

#[test]
fn confluent_transactions_across_topics_are_seen_by_read_committed_only_when_committed() {
    let b = Running::start(ENVS);
    let out = py(&["confluent", b.bootstrap()]);
    assert!(out.contains("confluent transactions: ok"), "{out}");
    stop_cleanly(b);
}

#[test]
fn kafka_python_transactional_producer_commits_aborts_and_is_fenced() {
    let b = Running::start(ENVS);
    let out = py(&["kafka-python", b.bootstrap()]);
    assert!(out.contains("kafka-python transactions: ok"), "{out}");
    stop_cleanly(b);
}

#[test]
fn a_second_producer_with_the_same_transactional_id_fences_the_first() {
    let b = Running::start(ENVS);
    let out = py(&["fencing", b.bootstrap()]);
    assert!(out.contains("fencing: ok"), "{out}");
    stop_cleanly(b);
}

/// Runs `transactions.py abandon`: a producer begins a transaction with
/// transaction.timeout.ms=2000, sends, and dies with SIGKILL.
#[track_caller]
fn abandon_a_transaction(b: &Running) {
    let ran = run_bounded(
        python::command("transactions.py", &["abandon", b.bootstrap()]),
        b"",
        SCRIPT_TIMEOUT,
    );
    assert_eq!(
        ran.status.signal(),
        Some(9),
        "the producer should have killed itself with its transaction open: {ran:#?}"
    );
    assert!(ran.stdout.contains("transaction open"), "{ran:#?}");
}

#[test]
fn an_abandoned_transaction_is_aborted_after_its_timeout_and_readers_move_on() {
    let b = Running::start(ENVS);
    abandon_a_transaction(&b);
    let out = py(&["after-abandon", b.bootstrap()]);
    assert!(out.contains("abandoned transaction: ok"), "{out}");
    stop_cleanly(b);
}

#[test]
fn an_abandoned_transaction_is_aborted_after_its_timeout_across_a_broker_restart() {
    let mut b = Running::start(ENVS);
    abandon_a_transaction(&b);
    let out = b.restart(ENVS);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    let out = py(&["after-abandon", b.bootstrap()]);
    assert!(out.contains("abandoned transaction: ok"), "{out}");
    stop_cleanly(b);
}

// ---------------------------------------------------------------------------------------------
// Consume-transform-produce, exactly once through kills
// ---------------------------------------------------------------------------------------------

/// Input records of the consume-transform-produce test.
const CTP_RECORDS: usize = 2000;
/// Times the application is killed with SIGKILL before it is let finish.
const APP_KILLS: usize = 5;
/// After this many application kills, the broker is killed with SIGKILL while the application
/// has a transaction open, and restarted on the same data directory and port.
const BROKER_KILL_AFTER: usize = 2;
/// Longest the application runs past its first commit in a life before it is killed.
const APP_KILL_DELAY_MAX_MS: u64 = 300;
/// Times the application may exit on its own with an error (a fatal client error after the
/// broker restart is a crash like a kill; more than this is a loop).
const APP_CRASHES_MAX: usize = 5;

/// A broker on a fixed port that can be killed and started again where it was.
struct Broker {
    data: DataDir,
    port: u16,
    server: Option<Server>,
}

impl Broker {
    #[track_caller]
    fn start() -> Broker {
        let data = DataDir::new();
        let server = Server::start(&["--data-dir", data.arg()], ENVS);
        let bootstrap = bootstrap_of(&server.ready);
        let port = bootstrap
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {bootstrap}"));
        Broker {
            data,
            port,
            server: Some(server),
        }
    }

    fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGKILL, then a new server on the same data directory and port.
    #[track_caller]
    fn kill_and_restart(&mut self) {
        let server = self.server.take().expect("the broker is running");
        server.signal("KILL");
        let out = server.wait();
        assert_eq!(out.status.signal(), Some(9), "{out:#?}");
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
        let listener = format!("PLAINTEXT://127.0.0.1:{}", self.port);
        let server = Server::start(
            &["--data-dir", self.data.arg(), "--listeners", &listener],
            ENVS,
        );
        self.server = Some(server);
    }

    /// SIGTERM; checks the server stopped cleanly and never panicked.
    #[track_caller]
    fn stop(mut self) {
        let server = self.server.take().expect("the broker is running");
        server.signal("TERM");
        let out = server.wait().ok();
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    }
}

/// A pseudo-random sequence (xorshift64) from a seed the test prints, so that a failing run can
/// be told apart from another (`TXN_TEST_SEED=N` repeats one).
struct Rng(u64);

impl Rng {
    fn from_env_or_clock() -> Rng {
        let seed = std::env::var("TXN_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("TXN_TEST_SEED={seed}");
        Rng(seed.max(1))
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// How a wait for a line of the application ended, when it did not see the line.
#[derive(Debug)]
enum AppEnded {
    Exited(ExitStatus),
    TimedOut,
}

/// One life of the consume-transform-produce application (`transactions.py ctp-app`).
struct App {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Option<JoinHandle<Vec<u8>>>,
    life: usize,
}

impl App {
    #[track_caller]
    fn start(bootstrap: &str, life: usize) -> App {
        let mut child = python::command("transactions.py", &["ctp-app", bootstrap, "ctp-txn"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the application");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stderr = Some(drain(child.stderr.take().expect("stderr is piped")));
        App {
            child,
            lines,
            stderr,
            life,
        }
    }

    /// Waits (bounded) for a line starting with `prefix`; every line read goes to `transcript`.
    fn wait_for(
        &mut self,
        prefix: &str,
        timeout: Duration,
        transcript: &mut Vec<String>,
    ) -> Result<String, AppEnded> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.lines.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => {
                    transcript.push(format!("[life {}] {line}", self.life));
                    if line.starts_with(prefix) {
                        return Ok(line);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = common::wait_bounded(&mut self.child, Duration::from_secs(10));
                    return Err(AppEnded::Exited(status));
                }
            }
            if Instant::now() > deadline {
                return Err(AppEnded::TimedOut);
            }
        }
    }

    /// SIGKILL; what it printed before dying goes to `transcript`.
    fn kill(mut self, transcript: &mut Vec<String>) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            transcript.push(format!("[life {}] {line}", self.life));
        }
        transcript.push(format!("[life {}] killed", self.life));
    }

    /// What the application printed on standard error; kills it first if it still runs.
    fn stderr(&mut self) -> String {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let bytes = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The last lines of a transcript, for a failure message.
fn tail(transcript: &[String]) -> String {
    transcript[transcript.len().saturating_sub(60)..].join("\n")
}

#[test]
fn consume_transform_produce_is_exactly_once_through_app_and_broker_kills() {
    let mut rng = Rng::from_env_or_clock();
    let mut broker = Broker::start();
    let records = CTP_RECORDS.to_string();
    py(&["ctp-input", &broker.bootstrap(), &records]);

    let mut transcript = Vec::new();
    let (mut kills, mut crashes, mut broker_killed) = (0, 0, false);
    let mut life = 0;
    loop {
        life += 1;
        let mut app = App::start(&broker.bootstrap(), life);
        if kills == APP_KILLS {
            // Let it finish.
            match app.wait_for("done", APP_STEP_TIMEOUT, &mut transcript) {
                Ok(_) => {
                    let status = common::wait_bounded(&mut app.child, APP_STEP_TIMEOUT);
                    assert!(status.success(), "{status}\n{}", tail(&transcript));
                    break;
                }
                Err(AppEnded::Exited(status)) if crashes < APP_CRASHES_MAX => {
                    crashes += 1;
                    eprintln!("application exited ({status}):\n{}", app.stderr());
                    continue;
                }
                Err(e) => panic!(
                    "the application did not finish: {e:?}\n{}\n--- stderr\n{}",
                    tail(&transcript),
                    app.stderr()
                ),
            }
        }

        let committed = app.wait_for("committed ", APP_STEP_TIMEOUT, &mut transcript);
        let progressed = match committed {
            Ok(_) if kills == BROKER_KILL_AFTER && !broker_killed => {
                // The broker dies with a transaction open (its records flushed, not committed).
                let open = app.wait_for("open ", APP_STEP_TIMEOUT, &mut transcript);
                assert!(open.is_ok(), "{open:?}\n{}", tail(&transcript));
                broker.kill_and_restart();
                broker_killed = true;
                transcript.push("broker killed and restarted".to_owned());
                app.wait_for("committed ", APP_STEP_TIMEOUT, &mut transcript)
            }
            other => other,
        };
        match progressed {
            Ok(_) => {
                std::thread::sleep(Duration::from_millis(rng.below(APP_KILL_DELAY_MAX_MS)));
                app.kill(&mut transcript);
                kills += 1;
            }
            Err(AppEnded::Exited(status)) if status.success() => panic!(
                "the application finished after {kills} of {APP_KILLS} kills; give it more \
                 input or smaller batches\n{}",
                tail(&transcript)
            ),
            Err(AppEnded::Exited(status)) if crashes < APP_CRASHES_MAX => {
                crashes += 1;
                eprintln!("application exited ({status}):\n{}", app.stderr());
            }
            Err(e) => panic!(
                "the application made no progress: {e:?}\n{}\n--- stderr\n{}",
                tail(&transcript),
                app.stderr()
            ),
        }
    }
    assert!(broker_killed);
    eprintln!("{kills} application kills, {crashes} crashes, broker killed once");

    let out = py(&["ctp-verify", &broker.bootstrap(), &records]);
    assert!(
        out.contains(&format!("ctp-verify: {CTP_RECORDS} results exactly once")),
        "{out}"
    );
    eprintln!("{out}");
    broker.stop();
}
