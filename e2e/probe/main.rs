//! `mtls-probe`: a small mutual-TLS workload for the end-to-end tests on a real node, run in pods
//! (image `localhost/mtls-probe`, built by `e2e/image.sh probe`). It does what a well-behaved
//! application does with the files the operator writes: it reads its certificate, key and trust
//! bundle from whole-volume mounts, reloads them when kubelet swaps them (the `..data` symlink),
//! and checks the peer's SPIFFE ID on every handshake. Everything it does is a JSON line on stdout
//! (its pod log), which the tests read:
//!
//! - `{"event":"loaded",...}` when the files it uses changed (leaf serial, the bundle's CAs);
//! - `{"event":"report","ok":N,"failed":M}` every `--report-every`, counts since start;
//! - `{"event":"failure","error":...}` for the first failures (then every 100th).
//!
//! `serve` accepts handshakes and answers `ok <client SPIFFE ID>`; `call` handshakes with a server
//! over and over; `watch` only reports when a mounted directory changes, with the delay since
//! the time written into its `sent-at` file (to measure kubelet's propagation delay).

use std::{
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use clap::{Parser, Subcommand};
use mtls_operator::core::pki;
use rustls::{
    ClientConfig, ClientConnection, ServerConfig, ServerConnection, StreamOwned,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
    server::WebPkiClientVerifier,
};
use serde_json::json;

#[derive(Parser)]
#[command(name = "mtls-probe", version, about = "mutual-TLS test workload: serve, call or watch mounted certificates")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct Files {
    /// The identity Secret's volume: tls.crt, tls.key (and ca.crt).
    #[arg(long, default_value = "/etc/mtls")]
    identity: PathBuf,
    /// The CAs to trust: a PEM file (the bundle ConfigMap's ca.crt, or the Secret's).
    #[arg(long, default_value = "/etc/mtls-bundle/ca.crt")]
    bundle: PathBuf,
    /// How often to look for new files, in milliseconds.
    #[arg(long, default_value_t = 100)]
    poll_ms: u64,
    /// Seconds between two report lines.
    #[arg(long, default_value_t = 1)]
    report_every: u64,
}

#[derive(Subcommand)]
enum Command {
    /// Accept mutual-TLS connections from the allowed SPIFFE IDs.
    Serve {
        #[arg(long, default_value = "0.0.0.0:8443")]
        listen: String,
        /// A SPIFFE ID the server accepts (repeat for several); any verified client if none.
        #[arg(long)]
        allow: Vec<String>,
        #[command(flatten)]
        files: Files,
    },
    /// Handshake with a server again and again.
    Call {
        /// host:port of the server.
        #[arg(long)]
        to: String,
        /// The name to verify the server's certificate against.
        #[arg(long)]
        server_name: String,
        /// The SPIFFE ID the server must present.
        #[arg(long)]
        expect: String,
        /// Milliseconds between two handshakes.
        #[arg(long, default_value_t = 100)]
        interval_ms: u64,
        #[command(flatten)]
        files: Files,
    },
    /// Report every change of the files in a mounted directory.
    Watch {
        dir: PathBuf,
        #[arg(long, default_value_t = 50)]
        poll_ms: u64,
    },
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}

fn emit(mut line: serde_json::Value) {
    line["ts"] = json!(now());
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The directory a projected volume's files are read from right now: the target of its `..data`
/// link (kubelet swaps that link atomically, so files read there belong together), or the
/// directory itself outside a projected volume. Returns (directory, version).
fn snapshot(dir: &Path) -> (PathBuf, String) {
    match std::fs::read_link(dir.join("..data")) {
        Ok(t) => (dir.join(&t), t.display().to_string()),
        Err(_) => (dir.to_path_buf(), format!("{:?}", std::fs::metadata(dir).and_then(|m| m.modified()).ok())),
    }
}

/// The bundle file's directory and name.
fn split(file: &Path) -> (&Path, &std::ffi::OsStr) {
    (file.parent().unwrap_or(Path::new("/")), file.file_name().unwrap_or_default())
}

fn versions(files: &Files) -> String {
    format!("{}|{}", snapshot(&files.identity).1, snapshot(split(&files.bundle).0).1)
}

/// The files as one consistent set, and what a report says of them.
struct Loaded {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<rustls::RootCertStore>,
    version: String,
    describe: serde_json::Value,
}

fn load(files: &Files) -> Result<Loaded, String> {
    let (identity, v1) = snapshot(&files.identity);
    let (bundle_dir, bundle_file) = split(&files.bundle);
    let (bundle_dir, v2) = snapshot(bundle_dir);
    let version = format!("{v1}|{v2}");
    let read = |p: PathBuf| std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()));
    let crt = read(identity.join("tls.crt"))?;
    let key = read(identity.join("tls.key"))?;
    let bundle = read(bundle_dir.join(bundle_file))?;
    let chain =
        CertificateDer::pem_slice_iter(&crt).collect::<Result<Vec<_>, _>>().map_err(|e| format!("tls.crt: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(&key).map_err(|e| format!("tls.key: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    let mut cas = vec![];
    for c in CertificateDer::pem_slice_iter(&bundle) {
        let c = c.map_err(|e| format!("bundle: {e}"))?;
        cas.push(pki::fingerprint(&c)[..16].to_string());
        roots.add(c).map_err(|e| format!("bundle: {e}"))?;
    }
    let leaf = chain.first().ok_or("tls.crt holds no certificate")?;
    let facts = pki::facts_of(leaf).map_err(|e| e.to_string())?;
    let describe = json!({"leaf_serial": facts.serial, "leaf_not_after": facts.not_after.to_string(), "bundle": cas});
    Ok(Loaded { chain, key, roots: Arc::new(roots), version, describe })
}

/// The newest configuration built from the files, rebuilt by a poller when they change.
struct Current<T> {
    config: RwLock<Option<Arc<T>>>,
}

impl<T: Send + Sync + 'static> Current<T> {
    fn start(files: Files, build: impl Fn(&Loaded) -> Result<T, String> + Send + 'static) -> Arc<Self> {
        let current = Arc::new(Current { config: RwLock::new(None) });
        let c = current.clone();
        std::thread::spawn(move || {
            let mut seen = String::new();
            loop {
                if versions(&files) != seen {
                    match load(&files).and_then(|l| build(&l).map(|cfg| (l, cfg))) {
                        Ok((l, cfg)) => {
                            *c.config.write().unwrap() = Some(Arc::new(cfg));
                            let mut line = l.describe;
                            line["event"] = json!("loaded");
                            emit(line);
                            seen = l.version;
                        }
                        // A half-written set (never with kubelet's atomic swap) or missing files:
                        // keep the last good configuration, try again at the next poll.
                        Err(e) => emit(json!({"event": "load-error", "error": e})),
                    }
                }
                std::thread::sleep(Duration::from_millis(files.poll_ms));
            }
        });
        current
    }

    fn get(&self) -> Option<Arc<T>> {
        self.config.read().unwrap().clone()
    }
}

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    failed: AtomicU64,
}

impl Counts {
    fn report_every(self: &Arc<Self>, secs: u64) {
        let c = self.clone();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_secs(secs.max(1)));
                emit(
                    json!({"event": "report", "ok": c.ok.load(Ordering::Relaxed), "failed": c.failed.load(Ordering::Relaxed)}),
                );
            }
        });
    }

    fn record(&self, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                let n = self.failed.fetch_add(1, Ordering::Relaxed) + 1;
                if n <= 20 || n.is_multiple_of(100) {
                    emit(json!({"event": "failure", "n": n, "error": e}));
                }
            }
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn spiffe_ids(cert: &CertificateDer<'_>) -> Vec<String> {
    pki::inspect_leaf(&pki::der_to_pem(cert), "").map(|f| f.uris).unwrap_or_default()
}

fn server_config(l: &Loaded) -> Result<ServerConfig, String> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(l.roots.clone(), provider()).build().map_err(|e| e.to_string())?;
    ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(l.chain.clone(), l.key.clone_key())
        .map_err(|e| e.to_string())
}

fn client_config(l: &Loaded) -> Result<ClientConfig, String> {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(l.roots.clone())
        .with_client_auth_cert(l.chain.clone(), l.key.clone_key())
        .map_err(|e| e.to_string())
}

const TIMEOUT: Duration = Duration::from_secs(5);

fn answer(config: Arc<ServerConfig>, tcp: TcpStream, allow: &[String]) -> Result<(), String> {
    let _ = tcp.set_read_timeout(Some(TIMEOUT));
    let _ = tcp.set_write_timeout(Some(TIMEOUT));
    let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let conn = ServerConnection::new(config).map_err(|e| e.to_string())?;
    let mut tls = StreamOwned::new(conn, tcp);
    let mut line = String::new();
    BufReader::new(&mut tls).read_line(&mut line).map_err(|e| format!("from {peer}: {e}"))?;
    let client = tls.conn.peer_certificates().and_then(|c| c.first()).map(spiffe_ids).unwrap_or_default();
    if !allow.is_empty() && !client.iter().any(|id| allow.contains(id)) {
        return Err(format!("from {peer}: client {client:?} is not allowed"));
    }
    tls.write_all(format!("ok {}\n", client.join(",")).as_bytes()).map_err(|e| e.to_string())?;
    tls.conn.send_close_notify();
    let _ = tls.flush();
    Ok(())
}

fn serve(listen: &str, allow: Vec<String>, files: Files) -> Result<(), String> {
    let current = Current::start(files.clone(), server_config);
    let counts = Arc::new(Counts::default());
    counts.report_every(files.report_every);
    let listener = TcpListener::bind(listen).map_err(|e| format!("listen on {listen}: {e}"))?;
    emit(json!({"event": "listening", "on": listen}));
    let allow = Arc::new(allow);
    for tcp in listener.incoming() {
        let Ok(tcp) = tcp else { continue };
        let Some(config) = current.get() else {
            // Not serving before the files are there: the client sees a refused handshake.
            drop(tcp);
            continue;
        };
        let (counts, allow) = (counts.clone(), allow.clone());
        std::thread::spawn(move || counts.record(answer(config, tcp, &allow)));
    }
    Ok(())
}

fn call_once(config: Arc<ClientConfig>, to: &str, server_name: &str, expect: &str) -> Result<(), String> {
    let name = ServerName::try_from(server_name.to_string()).map_err(|e| e.to_string())?;
    let addr = std::net::ToSocketAddrs::to_socket_addrs(to)
        .map_err(|e| format!("{to}: {e}"))?
        .next()
        .ok_or_else(|| format!("{to}: no address"))?;
    let tcp = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("connect {to}: {e}"))?;
    let _ = tcp.set_read_timeout(Some(TIMEOUT));
    let _ = tcp.set_write_timeout(Some(TIMEOUT));
    let conn = ClientConnection::new(config, name).map_err(|e| e.to_string())?;
    let mut tls = StreamOwned::new(conn, tcp);
    tls.write_all(b"hello\n").map_err(|e| format!("handshake with {to}: {e}"))?;
    let mut line = String::new();
    BufReader::new(&mut tls).read_line(&mut line).map_err(|e| format!("answer from {to}: {e}"))?;
    if !line.starts_with("ok ") {
        return Err(format!("{to} answered {line:?}"));
    }
    let server = tls.conn.peer_certificates().and_then(|c| c.first()).map(spiffe_ids).unwrap_or_default();
    if !server.iter().any(|id| id == expect) {
        return Err(format!("{to} presented {server:?}, expected {expect}"));
    }
    Ok(())
}

fn call(to: &str, server_name: &str, expect: &str, interval_ms: u64, files: Files) -> Result<(), String> {
    let current = Current::start(files.clone(), client_config);
    let counts = Arc::new(Counts::default());
    counts.report_every(files.report_every);
    loop {
        if let Some(config) = current.get() {
            counts.record(call_once(config, to, server_name, expect));
        }
        std::thread::sleep(Duration::from_millis(interval_ms));
    }
}

/// Reports each new version of `dir` (a projected volume), with the delay since the time in its
/// `sent-at` file (seconds since the epoch, written by whoever changed the object).
fn watch(dir: &Path, poll_ms: u64) -> Result<(), String> {
    let mut seen = String::new();
    loop {
        let (now_dir, version) = snapshot(dir);
        if version != seen {
            let sent = std::fs::read_to_string(now_dir.join("sent-at")).ok().and_then(|s| s.trim().parse::<f64>().ok());
            let delay = sent.map(|s| ((now() - s) * 1000.0).round() / 1000.0);
            emit(json!({"event": "changed", "version": version, "sent_at": sent, "delay_s": delay}));
            seen = version;
        }
        std::thread::sleep(Duration::from_millis(poll_ms));
    }
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { listen, allow, files } => serve(&listen, allow, files),
        Command::Call { to, server_name, expect, interval_ms, files } => {
            call(&to, &server_name, &expect, interval_ms, files)
        }
        Command::Watch { dir, poll_ms } => watch(&dir, poll_ms),
    };
    if let Err(e) = result {
        emit(json!({"event": "fatal", "error": e}));
        std::process::exit(1);
    }
}
