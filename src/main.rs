//! Command line of the `mtls-operator` binary.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "mtls-operator", version, about = "Mutual-TLS certificate lifecycle operator for Kubernetes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (uses the in-cluster config or KUBECONFIG).
    Run(RunArgs),
    /// Print the CustomResourceDefinitions as YAML, or write one file per CRD into a directory.
    Crd {
        /// Write `mtls.io_<plural>.yaml` files into this directory instead of printing.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args)]
struct RunArgs {
    /// The operator's namespace: CA Secrets and bundle history live here.
    #[arg(long, env = "POD_NAMESPACE", default_value = "mtls-system")]
    namespace: String,
    /// Address for /healthz, /readyz and /metrics.
    #[arg(long, env = "MTLS_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Certificates issued per second at most, across all authorities.
    #[arg(long, env = "MTLS_ISSUANCE_RATE", default_value_t = 500.0)]
    issuance_rate: f64,
    /// Issuances that may happen at once before the rate applies.
    #[arg(long, env = "MTLS_ISSUANCE_BURST", default_value_t = 100)]
    issuance_burst: u32,
    /// Identities reconciled in parallel.
    #[arg(long, env = "MTLS_CONCURRENCY", default_value_t = 64)]
    concurrency: u16,
    /// Run the controllers only while holding the Lease `--lease-name` in `--namespace`, so that
    /// several replicas can run safely.
    #[arg(long, env = "MTLS_LEADER_ELECT")]
    leader_elect: bool,
    /// Name of the leader-election Lease.
    #[arg(long, env = "MTLS_LEASE_NAME", default_value = "mtls-operator")]
    lease_name: String,
    /// Exit when standard input closes (lets a test harness tie the operator to its own life).
    #[arg(long, hide = true)]
    exit_on_stdin_close: bool,
    /// Log format.
    #[arg(long, env = "MTLS_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    // Colours only on a terminal: `kubectl logs` and log collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The operator's memory is mostly many small, long-lived cache entries allocated from several
/// threads (tokio's workers, the blocking pool that signs certificates). glibc's malloc kept about
/// twice the live heap resident (an arena per thread, fragmentation): at 10,000 identities 131 MiB,
/// 86 MiB with a single arena, 58 MiB with jemalloc configured below, at the same throughput and
/// operator CPU. One arena, no thread caches, and freed pages returned within about a second:
/// the operator spends little time in the allocator, so this costs nothing measurable.
/// (Built without the default `jemalloc` feature, the operator uses glibc's malloc: that is for
/// heap profilers such as heaptrack, which only see glibc's allocations.)
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options (read at its first allocation); `_RJEM_MALLOC_CONF` can override them.
#[cfg(feature = "jemalloc")]
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8] = b"narenas:1,tcache:false,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// The C code linked in (aws-lc, which signs certificates on the blocking pool) still uses glibc's
/// malloc: one arena there too, unless `MALLOC_ARENA_MAX` says otherwise. Runs before any other
/// thread exists.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter, and no other thread is running yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

fn main() -> anyhow::Result<()> {
    limit_malloc_arenas();
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(Cli::parse()))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Crd { out_dir } => {
            for (file, yaml) in mtls_operator::crd_manifests() {
                match &out_dir {
                    Some(dir) => {
                        std::fs::create_dir_all(dir)?;
                        std::fs::write(dir.join(file), yaml)?;
                    }
                    None => print!("{yaml}"),
                }
            }
            Ok(())
        }
        Command::Run(args) => {
            init_tracing(args.log_format);
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            let config = mtls_operator::process::Config {
                namespace: args.namespace,
                listen: args.listen,
                issuance_rate: args.issuance_rate,
                issuance_burst: args.issuance_burst,
                concurrency: args.concurrency,
                exit_on_stdin_close: args.exit_on_stdin_close,
                leader_election: args.leader_elect.then_some(args.lease_name),
            };
            if let Err(e) = mtls_operator::process::run(config).await {
                tracing::error!(error = format!("{e:#}"), "operator stopped");
                std::process::exit(1);
            }
            Ok(())
        }
    }
}
